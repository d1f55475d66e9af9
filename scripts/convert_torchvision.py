"""Convert torchvision ResNet weights into safetensors that atelier loads as its backbone.

    python scripts/convert_torchvision.py resnet50-weights.pth backbone.safetensors
    atelier train --arch resnet50 --backbone-weights backbone.safetensors ...

The input is a state_dict (for example torchvision's ImageNet weights, as
`torch.save(model.state_dict(), path)` writes it, or the downloaded .pth file)
or a pickled whole model. Parameter names stay torchvision's; atelier maps them
under its own `cnn.` prefix and ignores `fc.*`. `num_batches_tracked` counters
are dropped (atelier's batch norm does not keep them).
"""

import sys

import torch
from safetensors.torch import save_file


def convert(source: str, target: str) -> int:
    loaded = torch.load(source, map_location="cpu", weights_only=False)
    state = loaded.state_dict() if hasattr(loaded, "state_dict") else loaded
    tensors = {
        name: tensor.detach().contiguous().float()
        for name, tensor in state.items()
        if not name.endswith("num_batches_tracked")
    }
    save_file(tensors, target)
    return len(tensors)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} WEIGHTS.pth OUT.safetensors")
    count = convert(sys.argv[1], sys.argv[2])
    print(f"wrote {count} tensors to {sys.argv[2]}")
