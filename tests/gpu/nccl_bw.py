#!/usr/bin/env python3
"""nccl_bw.py — the all-reduce ceiling between this machine's GPUs, for tests/gpu/tp.sh.

One process per GPU (torch.multiprocessing, PyTorch's NCCL over the same links kiln's NCCL uses),
bf16 sum all-reduces of each size, timed with CUDA events over many iterations after a warm-up.
Prints one line per (GPUs, size): time per all-reduce in microseconds and the bus bandwidth in GB/s
(nccl-tests' definition: bytes x 2 (n - 1) / n / time). The 256 MiB row is the bandwidth. The small
rows are launched one by one from Python, so they measure that loop (about 50 us) more than NCCL:
kiln's decode replays its all-reduces from CUDA graphs, and kiln bench's decode figures carry their
real cost. (Timing them from a captured torch CUDA graph hung on the H200 machines: not pursued.)
NCCL_NVLS_ENABLE=0 is forced (the shared machines keep NVLink multicast off).

  nccl_bw.py --gpus N      (every power of two from 2 to N)
"""
import argparse
import os
import sys

os.environ["NCCL_NVLS_ENABLE"] = "0"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

SIZES = [8 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]


def worker(rank, n, port, q):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=n, device_id=torch.device("cuda", rank))
    for size in SIZES:
        x = torch.ones(size // 2, dtype=torch.bfloat16, device="cuda")
        iters = 200 if size <= (1 << 20) else 20
        for _ in range(10):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            dist.all_reduce(x)
        b.record()
        torch.cuda.synchronize()
        us = a.elapsed_time(b) * 1000 / iters
        if rank == 0:
            bus = size * 2 * (n - 1) / n / (us * 1e-6) / 1e9
            q.put(f"{n} GPUs  all-reduce {size:>10,d} B  {us:9.1f} us  bus {bus:7.1f} GB/s")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    n = 2
    port = 29500
    while n <= a.gpus:
        q = ctx.Queue()
        mp.spawn(worker, args=(n, port, q), nprocs=n, join=True)
        while not q.empty():
            print(q.get(), flush=True)
        n *= 2
        port += 1
    if a.gpus < 2:
        print("one GPU: no all-reduce to measure", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
