"""The peer of atelier's CPU ring: torch.distributed's gloo all-reduce on
loopback, one process per rank, the same sizes, data and table as
collective/examples/allreduce.rs.

python bench/collective/allreduce_gloo.py WORLD SIZES_MB ITERS
"""
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, sizes, iters, port, results):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    for mb in sizes:
        n = mb * (1 << 20) // 4
        index = torch.arange(n, dtype=torch.int64) % 1000
        source = (index + rank).to(torch.float32)
        expected = (world * index + world * (world - 1) // 2).to(torch.float32)
        times, exact = [], True
        for _ in range(iters):
            data = source.clone()
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(data)
            times.append(time.perf_counter() - started)
            exact &= bool(torch.equal(data, expected))
        times.sort()
        results.put((rank, mb, times[len(times) // 2], exact))
    dist.destroy_process_group()


def main():
    world = int(sys.argv[1])
    sizes = [int(s) for s in sys.argv[2].split(",")]
    iters = int(sys.argv[3])
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=rank_main, args=(r, world, sizes, iters, port, results))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    rows = {}
    for _ in range(world * len(sizes)):
        rank, mb, seconds, exact = results.get()
        worst, ok = rows.get(mb, (0.0, True))
        rows[mb] = (max(worst, seconds), ok and exact)
    for p in procs:
        p.join()
    print(f"backend gloo world {world} iters {iters}")
    print(f"{'MB':>8} {'ms':>10} {'algbw GB/s':>10} {'busbw GB/s':>10} {'exact':>6}")
    for mb in sizes:
        seconds, exact = rows[mb]
        algbw = mb * (1 << 20) / seconds / 1e9
        busbw = algbw * 2 * (world - 1) / world
        print(f"{mb:>8} {seconds * 1e3:>10.2f} {algbw:>10.3f} {busbw:>10.3f} {'yes' if exact else 'NO':>6}")


if __name__ == "__main__":
    main()
