"""The model-only peer: torchvision's ResNet-50 with atelier's heads
(the same checkpoint as bench/tagging/tag_peer.py) on one random batch, no data
pipeline, as PyTorch runs it plain (eager, NCHW), with channels_last, and
tuned with torch.jit.optimize_for_inference (batch norms folded, oneDNN).
Prints one JSON line per variant.

python bench/tagging/forward_peer.py --checkpoint DIR [--batch-size 32 --iters 8 --threads 2 --device cpu|cuda:0]
(on CUDA: eager, channels_last, and bf16 autocast + channels_last, under inference_mode and
under no_grad, instead of the TorchScript variant)
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tag_peer import load_model  # noqa: E402


def images_per_s(model, x, iters, bf16=False, grad_off=torch.inference_mode):
    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        # Wait for the device, as a tagger does when it reads results back.
        (out[0] if isinstance(out, tuple) else next(iter(out.values())))[0, 0].item()

    with grad_off():
        run()
        start = time.perf_counter()
        for _ in range(iters):
            run()
        return x.shape[0] * iters / (time.perf_counter() - start)


class Tuple(torch.nn.Module):
    """The heads' outputs as a tuple, which a TorchScript trace can hold."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(self.model(x).values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _, manifest = load_model(args.checkpoint)
    size = manifest["image_size"]
    model = model.to(args.device)
    x = torch.randn(args.batch_size, 3, size, size, device=args.device)
    results = {"eager": images_per_s(model, x, args.iters)}
    last = model.to(memory_format=torch.channels_last)
    x_last = x.to(memory_format=torch.channels_last)
    results["channels_last"] = images_per_s(last, x_last, args.iters)
    if args.device.startswith("cuda"):
        results["bf16_channels_last"] = images_per_s(last, x_last, args.iters, bf16=True)
        # atelier runs under no_grad (tch binds no InferenceMode guard): this
        # says what the guard would be worth on a GPU. On the 2-core CPU the
        # two were 1.001x apart (BENCHMARKS.md).
        results["bf16_channels_last_no_grad"] = images_per_s(
            last, x_last, args.iters, bf16=True, grad_off=torch.no_grad
        )
    else:
        with torch.inference_mode():
            tuned = torch.jit.optimize_for_inference(torch.jit.trace(Tuple(model).eval(), x))
        results["optimize_for_inference"] = images_per_s(tuned, x, args.iters)
    for name, rate in results.items():
        print(json.dumps({"variant": name, "batch": args.batch_size, "images_per_s": round(rate, 3)}))


if __name__ == "__main__":
    main()
