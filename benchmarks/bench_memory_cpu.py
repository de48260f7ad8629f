"""CPU throughput of the memory layer (issue 2's figure): dim 256, 4 heads × 64, T 2048, fp32.

uv run python benchmarks/bench_memory_cpu.py [--chunks 16 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from titans import NeuralMemory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, args.length, 256)
    print(f"torch {torch.__version__}, {args.threads} threads, dim 256, 4 heads x 64, T {args.length}, fp32")
    for chunk in args.chunks:
        mem = NeuralMemory(256, heads=4, chunk_size=chunk)
        for label, grad in (("forward", False), ("forward+backward", True)):
            times = []
            for _ in range(args.repeat + 1):
                start = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    y, _ = mem(x)
                    if grad:
                        y.square().sum().backward()
                times.append(time.perf_counter() - start)
            median = statistics.median(times[1:])
            print(f"chunk {chunk:>3} {label:<17} {median * 1e3:8.1f} ms  {args.length / median:10,.0f} tokens/s")


if __name__ == "__main__":
    main()
