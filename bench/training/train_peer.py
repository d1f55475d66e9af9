"""Peer for the training comparison: the plain PyTorch script a user would write.

torchvision ResNet-18 from random init, one head per attribute (colour, brand,
category: the same pool model atelier trains), SGD with momentum and a
one-cycle schedule, RandomResizedCrop + flip for training and a centre crop for
validation, on the same Parquet catalogue and the same validation split
(FNV-1a hash of item_id, as atelier). Prints per-epoch validation accuracy and a
final JSON line. With --world-size N it is the DDP script instead: N processes
(gloo on CPU, NCCL on cuda:rank), a DistributedSampler, DistributedDataParallel,
and images/s per rank.
"""

import argparse
import io
import json
import os
import socket
import time
from collections import Counter

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ATTRIBUTES = ["color", "brand", "category"]
IGNORE = -100


def fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def in_validation(item_id: str, fraction: float) -> bool:
    return (fnv1a(item_id) % 10_000) < fraction * 10_000


class Items(Dataset):
    def __init__(self, rows, maps, transform):
        self.rows, self.maps, self.transform = rows, maps, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        targets = [
            IGNORE if row[a] is None else self.maps[a].get(row[a], 0) for a in ATTRIBUTES
        ]
        return self.transform(image), torch.tensor(targets)


class Pool(torch.nn.Module):
    def __init__(self, arch, sizes):
        super().__init__()
        self.cnn = getattr(torchvision.models, arch)()
        width = self.cnn.fc.in_features
        self.cnn.fc = torch.nn.Identity()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in sizes)

    def forward(self, x):
        features = self.cnn(x)
        return [head(features) for head in self.heads]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--crop-scale", type=float, default=0.6,
                        help="smallest area share of RandomResizedCrop (atelier's --crop-scale)")
    parser.add_argument("--framing", choices=["center-crop", "squash"], default="center-crop",
                        help="atelier's --framing: squash resizes the whole photo to the square first")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast bf16 on --device")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--world-size", type=int, default=1, help="DDP ranks (processes)")
    args = parser.parse_args()
    if args.world_size == 1:
        run(0, args, None)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(args, port), nprocs=args.world_size)


def run(rank, args, port):
    world = args.world_size
    if world > 1:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        if args.device.startswith("cuda"):
            args.device = f"cuda:{rank}"

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    table = pq.read_table(args.catalog, columns=["item_id", "image"] + ATTRIBUTES)
    rows = table.to_pylist()
    train_rows = [r for r in rows if not in_validation(r["item_id"], args.val_fraction)]
    val_rows = [r for r in rows if in_validation(r["item_id"], args.val_fraction)]
    maps = {}
    for a in ATTRIBUTES:
        counts = Counter(r[a] for r in train_rows if r[a] is not None)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        maps[a] = {label: i + 1 for i, (label, _) in enumerate(ordered)}  # 0 = unknown
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # Squash: the whole photo resized to a square, crops drawn from that.
    square = args.image_size * 2
    squash = [transforms.Resize((square, square))] if args.framing == "squash" else []
    train_tf = transforms.Compose(squash + [
        transforms.RandomResizedCrop(args.image_size, scale=(args.crop_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    val_tf = transforms.Compose(
        ([transforms.Resize((args.image_size, args.image_size))] if args.framing == "squash"
         else [transforms.Resize(args.image_size), transforms.CenterCrop(args.image_size)])
        + [transforms.ToTensor(), normalize])
    pin = args.device.startswith("cuda")
    train_items = Items(train_rows, maps, train_tf)
    sampler = (torch.utils.data.distributed.DistributedSampler(train_items, world, rank, seed=args.seed)
               if world > 1 else None)
    train = DataLoader(train_items, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=args.workers, pin_memory=pin, persistent_workers=True)
    val = DataLoader(Items(val_rows, maps, val_tf), batch_size=128, num_workers=args.workers, pin_memory=pin)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = Pool(args.arch, [len(maps[a]) + 1 for a in ATTRIBUTES]).to(device, memory_format=memory_format)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if pin else None)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(train))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    started = time.perf_counter()
    images = 0
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for x, y in train:
            x = x.to(device, non_blocking=True).to(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            optimizer.zero_grad()
            with autocast():
                outputs = model(x)
            loss = sum(loss_fn(o.float(), y[:, i]) for i, o in enumerate(outputs) if (y[:, i] != IGNORE).any())
            loss.backward()
            optimizer.step()
            schedule.step()
            images += len(x)
        model.eval()
        correct, counted = [0] * 3, [0] * 3
        with torch.no_grad():
            for x, y in val:
                x, y = x.to(device).to(memory_format=memory_format), y.to(device)
                with autocast():
                    outputs = model(x)
                for i, o in enumerate(outputs):
                    mask = y[:, i] != IGNORE
                    correct[i] += int((o.argmax(1)[mask] == y[:, i][mask]).sum())
                    counted[i] += int(mask.sum())
        accuracy = {a: correct[i] / max(counted[i], 1) for i, a in enumerate(ATTRIBUTES)}
        print(f"epoch {epoch + 1}: " + ", ".join(f"{a} {v:.4f}" for a, v in accuracy.items()), flush=True)
    if pin:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if rank == 0:
        print(json.dumps({"seconds": seconds, "images_per_s": images / seconds, "ranks": world,
                          "accuracy": accuracy}))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
