"""Compares the newest weights of two atelier checkpoints (local folders).

Used by bench/gpu/ddp.sh to check, on a GPU machine, that a gang trained through
NCCL holds the weights of one process trained on the global batch. Needs only
torch: the safetensors file is read by hand (8-byte header length, a JSON
header, raw little-endian data), since the device's Python may lack the
safetensors package.

    python3 bench/training/compare_weights.py REFERENCE OTHER [--prefix heads.] [--tolerance 1e-4]

Prints the step of each, the largest absolute difference per tensor and over
all of them, and exits 1 when the steps or tensor names differ or the largest
difference is above the tolerance.
"""

import argparse
import json
import os
import struct
import sys

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
}


def newest_weights(checkpoint: str) -> tuple[int, dict[str, torch.Tensor]]:
    with open(os.path.join(checkpoint, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(checkpoint, manifest["weights"]), "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = 8 + length
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        raw = bytearray(data[body + start : body + end])
        dtype = DTYPES[spec["dtype"]]
        tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(spec["shape"])
    return manifest["step"], tensors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("other")
    parser.add_argument("--prefix", default="", help="compare only tensors whose names start with it")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    reference_step, reference = newest_weights(args.reference)
    other_step, other = newest_weights(args.other)
    print(f"steps: reference {reference_step}, other {other_step}")
    names = sorted(n for n in reference if n.startswith(args.prefix))
    other_names = sorted(n for n in other if n.startswith(args.prefix))
    if reference_step != other_step or names != other_names or not names:
        print(f"not comparable: {len(names)} and {len(other_names)} tensors under {args.prefix!r}")
        return 1
    largest = 0.0
    for name in names:
        diff = (reference[name].double() - other[name].double()).abs().max().item()
        largest = max(largest, diff)
        print(f"  {name}: max |difference| {diff:.3g}")
    verdict = "equal" if largest <= args.tolerance else "DIFFERENT"
    print(f"{verdict}: largest |difference| {largest:.3g} over {len(names)} tensors (tolerance {args.tolerance:g})")
    return 0 if largest <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
