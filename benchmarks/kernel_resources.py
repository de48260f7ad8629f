"""Shared memory of the fused kernels, compiled for a GPU architecture on a machine without one.

    python benchmarks/kernel_resources.py --chunk 64 --block-e 16 --warps 4 --precision tf32 --anchor --backward

Triton compiles for a target without a device (ptxas ships with it), so a kernel's shared-memory need can be
checked before a GPU session: a launch whose need exceeds the device's limit (232,448 bytes on an H100) fails
with ``OutOfResources``. The numbers depend on the Triton version: compare with the one the GPU runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNELS = Path(__file__).resolve().parents[1] / "src" / "titans" / "ops" / "fused_kernels.py"


def load_kernels():
    """titans.ops.fused_kernels without importing titans (and torch)."""
    spec = importlib.util.spec_from_file_location("fused_kernels", KERNELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def signature(fn, constexprs: dict) -> dict[str, str]:
    """Pointers are the arguments named ``*_ptr`` (fp32; the split programs' counters ``sync_ptr`` int32), every
    other non-constexpr argument an int32."""

    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        return ("*i32" if name == "sync_ptr" else "*fp32") if name.endswith("_ptr") else "i32"

    return {n: kind(n) for n in inspect.signature(fn.fn).parameters}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunk", type=int, default=16, help="rows per chunk (BLOCK_N: the next power of two >= 16)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--block-e", type=int, default=32)
    p.add_argument("--warps", type=int, default=8)
    p.add_argument("--precision", default="tf32", choices=["tf32", "ieee"])
    p.add_argument("--anchor", action="store_true", help="forgetting towards M_0")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--split", type=int, default=1, help="programs per (batch, head), each with hidden / split columns")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    args = p.parse_args(argv)
    kernels = load_kernels()
    constexprs = {
        "D": args.head_dim,
        "E": args.hidden,
        "BLOCK_N": max(16, 1 << (args.chunk - 1).bit_length()),
        "BLOCK_E": args.block_e,
        "PREC": args.precision,
        "ANCHOR": args.anchor,
        "SPLIT": args.split,
    }
    fn = kernels.memory_backward_kernel if args.backward else kernels.memory_forward_kernel
    if not args.backward:
        constexprs["WRITE_Y"] = True
    source = ASTSource(fn, signature(fn, constexprs), constexprs=constexprs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", args.arch, 32), options={"num_warps": args.warps, "num_stages": 1}
    )
    print(f"triton {triton.__version__}, sm_{args.arch}, {vars(args)}: shared memory {compiled.metadata.shared} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
