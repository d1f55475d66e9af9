"""Peer (c): peer (a) as Ray Data runs it. read_parquet, a
map_batches task that decodes and transforms with PIL and torchvision (the
same transform as peer (a)), a map_batches actor holding torchvision's
ResNet-50 with atelier's heads (the same checkpoint) under inference_mode,
and write_parquet. One logical CPU decodes while the other runs the model,
as a DataLoader with one worker does in peer (a).

python bench/tagging/tag_ray.py --catalog DIR --checkpoint DIR --out DIR [--batch-size 32 --threads 2]
"""
import argparse
import io
import json
import os
import sys
import time

import numpy as np
import ray
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tag_peer import load_model, make_transform, predictions  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    started = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    transform = make_transform(manifest)

    def decode(batch):
        images = [transform(Image.open(io.BytesIO(b)).convert("RGB")).numpy() for b in batch["image"]]
        return {"item_id": batch["item_id"], "x": np.stack(images)}

    class Predict:
        def __init__(self):
            torch.set_num_threads(args.threads)
            self.model, self.labels, _ = load_model(args.checkpoint)

        def __call__(self, batch):
            columns = {}
            with torch.inference_mode():
                predictions(self.model, self.labels, torch.from_numpy(batch["x"]), columns)
            out = {"item_id": batch["item_id"]}
            for name, (label, prob, top3, top3_prob) in columns.items():
                out[name] = np.array(label)
                out[f"{name}_prob"] = np.array(prob, np.float32)
                out[f"{name}_top3"] = np.array(top3)
                out[f"{name}_top3_prob"] = np.array(top3_prob, np.float32)
            return out

    ds = ray.data.read_parquet(args.catalog, columns=["item_id", "image"])
    ds = ds.map_batches(decode, batch_size=args.batch_size, batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(Predict, batch_size=args.batch_size, batch_format="numpy",
                        concurrency=1, num_cpus=1)
    ds.write_parquet(args.out)
    items = sum(1 for _ in ray.data.read_parquet(args.out, columns=["item_id"]).iter_rows())
    seconds = time.perf_counter() - started
    print(json.dumps({"items": items, "seconds": seconds, "images_per_s": items / seconds}))


if __name__ == "__main__":
    main()
