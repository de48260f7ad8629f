"""Where the time of one NeuralMemory forward + backward goes: the top GPU kernels by total time.

python benchmarks/profile_memory.py --chunk 16 --impl auto
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--impl", default="auto")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_memory needs a CUDA GPU", file=sys.stderr)
        return 2
    from titans import NeuralMemory

    mem = NeuralMemory(
        args.dim, heads=args.heads, depth=2, expansion=4, chunk_size=args.chunk, impl=args.impl, check_inputs=False
    ).cuda()
    x = torch.randn(args.batch, args.length, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = mem(x)
        y.float().sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
