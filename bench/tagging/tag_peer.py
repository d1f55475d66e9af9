"""Peer (a): the bulk-tagging script a user would write instead of
atelier. pyarrow reads the catalogue, a DataLoader with workers decodes with
PIL and transforms with torchvision (Resize + CenterCrop + ToTensor +
Normalize, the operation atelier's pipeline performs), torchvision's ResNet-50
with atelier's heads runs in eval mode under inference_mode, and the
predictions (label, probability, top-3) go to Parquet. It loads the same
checkpoint atelier tags with (safetensors, torchvision parameter names).

python bench/tagging/tag_peer.py --catalog DIR --checkpoint DIR --out FILE [--batch-size 32 --threads 2 --workers 1]
"""
import argparse
import io
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class Images(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.open(io.BytesIO(self.images[i])).convert("RGB"))


class Pool(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.cnn = torchvision.models.resnet50()
        self.cnn.fc = torch.nn.Identity()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(2048, n) for name, n in heads.items()})

    def forward(self, x):
        features = self.cnn(x)
        return {name: head(features) for name, head in self.heads.items()}


def load_model(checkpoint):
    """atelier's safetensors checkpoint as a torchvision model: (model, labels, manifest)."""
    manifest = json.load(open(os.path.join(checkpoint, "manifest.json")))
    labels = {name: m["classes"] for name, m in manifest["model"]["labels"].items()}
    weights = load_file(os.path.join(checkpoint, manifest["weights"]))
    model = Pool({name: len(l) for name, l in labels.items()})
    state = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("num_batches_tracked" in k for k in missing), (missing, unexpected)
    return model.eval(), labels, manifest


def make_transform(manifest):
    size = manifest["image_size"]
    norm = manifest["normalization"]
    return transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(norm["mean"], norm["std"]),
    ])


def predictions(model, labels, x, columns):
    """Appends label, probability and top-3 per head for batch `x` to `columns`."""
    for name, logits in model(x).items():
        probs = logits.float().softmax(1)
        top_p, top_i = probs.topk(3, 1)
        cols = columns.setdefault(name, ([], [], [], []))
        for p, i in zip(top_p.tolist(), top_i.tolist()):
            cols[0].append(labels[name][i[0]])
            cols[1].append(p[0])
            cols[2].append([labels[name][j] for j in i])
            cols[3].append(p)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last (CUDA)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    model, labels, manifest = load_model(args.checkpoint)
    cuda = args.device.startswith("cuda")
    memory_format = torch.channels_last if args.bf16 else torch.contiguous_format
    model = model.to(args.device, memory_format=memory_format)
    table = pq.read_table(args.catalog, columns=["item_id", "image"])
    loader = DataLoader(Images(table.column("image").to_pylist(), make_transform(manifest)),
                        batch_size=args.batch_size, num_workers=args.workers, pin_memory=cuda)
    columns = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and args.bf16):
        for x in loader:
            x = x.to(args.device, non_blocking=True).to(memory_format=memory_format)
            predictions(model, labels, x, columns)
    out = {"item_id": table.column("item_id")}
    for name, (label, prob, top3, top3_prob) in columns.items():
        out[name] = pa.array(label)
        out[f"{name}_prob"] = pa.array(prob, pa.float32())
        out[f"{name}_top3"] = pa.array(top3)
        out[f"{name}_top3_prob"] = pa.array(top3_prob, pa.list_(pa.float32()))
    pq.write_table(pa.table(out), args.out)
    seconds = time.perf_counter() - started
    print(json.dumps({"items": table.num_rows, "seconds": seconds, "images_per_s": table.num_rows / seconds}))


if __name__ == "__main__":
    main()
