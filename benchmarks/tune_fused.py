"""Sweep the fused kernels' launch parameters at one shape: warps and hidden block per direction.

    python benchmarks/tune_fused.py --chunk 16 --configs 4x64/4x32 8x64/8x32 16x64/16x32
    python benchmarks/tune_fused.py --compile-only --configs 8x64/8x32      # fill Triton's disk cache only

A config is ``FWD/BWD[/SPLIT]``, each of FWD and BWD ``WARPSxBLOCK_E[xSTAGES]``: the forward kernel (also the
backward's recompute) and the backward kernel, passed through ``TITANS_FUSED_{WARPS,BLOCK_E,STAGES}_{FWD,BWD}``;
SPLIT programs share each (batch, head) (``TITANS_FUSED_SPLIT``, default 1). Per config: the
median forward + backward of the issue-6 layer (CUDA events), the time of each kernel from one profiled step,
and each compiled kernel's registers and spills (ptxas). Compiling takes long; run ``--compile-only`` for every
config in parallel processes first, then time them one after another from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from bench_memory import ours
from timing import median_ms
from torch.profiler import ProfilerActivity, profile

KERNELS = ("memory_forward_kernel", "memory_backward_kernel", "linear_memory_forward_kernel")


def set_config(spec: str) -> None:
    """``FWD/BWD[/SPLIT]``: SPLIT programs per (batch, head) in the depth-2 kernels (default 1)."""
    parts = spec.split("/")
    os.environ["TITANS_FUSED_SPLIT"] = parts[2] if len(parts) == 3 else "1"
    for direction, part in zip(("FWD", "BWD"), parts[:2], strict=True):
        warps, block_e, *stages = part.split("x")
        os.environ[f"TITANS_FUSED_WARPS_{direction}"] = warps
        os.environ[f"TITANS_FUSED_BLOCK_E_{direction}"] = block_e
        os.environ[f"TITANS_FUSED_STAGES_{direction}"] = stages[0] if stages else "1"


def compiled_kernels() -> dict[str, dict]:
    """Registers and spills of every compiled fused kernel in this process (Triton's in-memory cache)."""
    from titans.ops import fused_kernels

    found: dict[str, dict] = {}
    for name in dir(fused_kernels):
        fn = getattr(fused_kernels, name)
        for caches in getattr(fn, "device_caches", {}).values():
            if not isinstance(caches, tuple) or not isinstance(caches[0], dict):
                continue  # a Triton whose cache layout this script does not know
            for key, kernel in caches[0].items():
                meta = kernel.metadata
                found[f"{name} {key}"] = {
                    "kernel": name,
                    "num_warps": getattr(meta, "num_warps", None),
                    "n_regs": getattr(kernel, "n_regs", None),
                    "n_spills": getattr(kernel, "n_spills", None),
                    "shared": getattr(meta, "shared", None),
                }
    return found


def kernel_ms(step) -> dict[str, float]:
    """GPU time per Triton kernel name over one profiled step."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        for name in KERNELS:
            if event.key.startswith(name):
                totals[name] = totals.get(name, 0.0) + event.device_time_total / 1e3
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="FWD/BWD launch configs, e.g. 8x64/8x32")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--decay-target", default="initial", choices=["initial", "zero"])
    p.add_argument("--precision", default="", help="force the products' precision (tf32, ieee) in both kernels")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile-only", action="store_true", help="run one step per config (fills the cache)")
    p.add_argument("--json", default="", help="append the rows to this JSON-lines file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_fused needs a CUDA GPU", file=sys.stderr)
        return 2
    tokens = args.batch * args.length
    if args.precision:
        os.environ["TITANS_FUSED_PRECISION"] = args.precision
    for spec in args.configs:
        set_config(spec)
        before = set(compiled_kernels())
        row: dict = {"config": spec, "chunk": args.chunk, "depth": args.depth, "decay_target": args.decay_target}
        row["precision"] = args.precision or "default"
        try:
            step = ours(
                "fused", args.dim, args.heads, args.chunk, args.batch, args.length, False,
                depth=args.depth, decay_target=args.decay_target,
            )  # fmt: skip
            step()
            if not args.compile_only:
                row["ms"] = median_ms(step, repeat=args.repeat)
                row["tokens_per_s"] = tokens / row["ms"] * 1e3
                row["kernel_ms"] = kernel_ms(step)
        except Exception as error:  # a config that does not fit is a result, not a crash
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        after = compiled_kernels()
        row["kernels"] = [after[k] for k in after if k not in before] or list(after.values())
        print(json.dumps(row), flush=True)
        if args.json and not args.compile_only:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
