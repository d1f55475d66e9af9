"""Peer for the image-pipeline benchmark: what a user would write in Python.

Reads the same Parquet catalogue with pyarrow, decodes with PIL and applies
torchvision's Resize + CenterCrop + ToTensor + Normalize (the same operation as
atelier's centre-crop transform), stacking batches of tensors. Prints one line:
`images_per_s=<float> items=<int> seconds=<float>`.
"""

import argparse
import glob
import io
import os
import time

import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision import transforms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transform = transforms.Compose(
        [
            transforms.Resize(args.image_size),
            transforms.CenterCrop(args.image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    files = sorted(glob.glob(os.path.join(args.catalog, "*.parquet")))
    started = time.perf_counter()
    items = 0
    checksum = 0.0
    batch = []
    for path in files:
        parquet = pq.ParquetFile(path)
        for record_batch in parquet.iter_batches(batch_size=256, columns=["item_id", "image"]):
            for data in record_batch.column("image").to_pylist():
                image = Image.open(io.BytesIO(data)).convert("RGB")
                batch.append(transform(image))
                if len(batch) == args.batch_size:
                    checksum += float(torch.stack(batch)[0, 0, 0, 0])
                    items += len(batch)
                    batch = []
    if batch:
        checksum += float(torch.stack(batch)[0, 0, 0, 0])
        items += len(batch)
    seconds = time.perf_counter() - started
    print(f"images_per_s={items / seconds:.2f} items={items} seconds={seconds:.3f} checksum={checksum:.3f}")


if __name__ == "__main__":
    main()
