"""Time the neural memory layer (forward + backward) against the anchors of TITANS.md section 6.

    python benchmarks/bench_memory.py                      # the issue's shape, chunk 16 and 64
    python benchmarks/bench_memory.py --lengths 2048 8192 32768 131072 --batch-tokens 16384

Times with CUDA events after warm-up; reports medians, tokens/s and peak GiB per configuration. Each row runs
on fresh random bf16 inputs under autocast; the memory state is fp32. Optional anchors are timed when
installed: titans-pytorch's NeuralMemory, flash-linear-attention's chunk_ttt_linear, and SDPA attention.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import median_ms


def measure(name: str, build: Callable[[], Callable[[], object]], tokens: int, repeat: int) -> dict:
    """Build a step (CUDA-graph capture included, so its memory pool counts toward the peak), then time it."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        ms = median_ms(build(), repeat=repeat)
    except torch.OutOfMemoryError:
        return {"name": name, "ms": float("nan"), "tokens_per_s": 0.0, "peak_gib": float("nan"), "note": "OOM"}
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"name": name, "ms": ms, "tokens_per_s": tokens / ms * 1e3, "peak_gib": peak}


class _OutputOnly(torch.nn.Module):
    """The layer's output without its state, for ``torch.cuda.make_graphed_callables``."""

    def __init__(self, mem: torch.nn.Module):
        super().__init__()
        self.mem = mem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.mem(x)[0]


def ours(
    impl: str,
    dim: int,
    heads: int,
    chunk: int,
    batch: int,
    length: int,
    compile_step: bool,
    graph: bool = False,
    checkpoint_chunks: int = 0,
    depth: int = 2,
    decay_target: str = "initial",
):
    from titans import NeuralMemory

    mem = NeuralMemory(
        dim,
        heads=heads,
        depth=depth,
        expansion=4,
        chunk_size=chunk,
        impl=impl,  # type: ignore[arg-type]
        check_inputs=False,
        compile_chunk_step=compile_step,
        checkpoint_chunks=checkpoint_chunks,
        decay_target=decay_target,  # type: ignore[arg-type]
    ).cuda()
    x = torch.randn(batch, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    if graph:  # capture forward and backward once, replay: no per-kernel CPU launch cost
        graphed = torch.cuda.make_graphed_callables(_OutputOnly(mem), (x,))

        def graphed_step():
            graphed(x).float().sum().backward()

        return graphed_step

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = mem(x)
        y.float().sum().backward()

    return step


def titans_pytorch(dim: int, heads: int, chunk: int, batch: int, length: int):
    from titans_pytorch import NeuralMemory as TPMemory  # type: ignore[import-not-found]

    mem = TPMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim // heads).cuda()
    x = torch.randn(batch, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = mem(x)
        y.float().sum().backward()

    return step


def sdpa(dim: int, heads: int, batch: int, length: int):
    q, k, v = (
        torch.randn(batch, heads, length, dim // heads, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )

    def step():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).float().sum().backward()

    return step


def fla_ttt_linear(dim: int, heads: int, chunk: int, batch: int, length: int):
    """flash-linear-attention's TTT-linear (a linear memory, no momentum): (B, T, H, d) inputs, as in fla 0.6;
    older releases took ``head_first``."""
    import inspect

    from fla.ops.ttt import chunk_ttt_linear  # type: ignore[import-not-found]

    d = dim // heads
    q, k, v = (
        torch.randn(batch, length, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    w = torch.ones(heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.zeros(heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    eta = torch.full((batch, length, heads, 1), 0.1, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    layout = {"head_first": False} if "head_first" in inspect.signature(chunk_ttt_linear).parameters else {}

    def step():
        out = chunk_ttt_linear(q, k, v, w, b, eta=eta, chunk_size=chunk, **layout)
        out[0].float().sum().backward()  # (o, final state[, …]) depending on the release

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048])
    p.add_argument("--batch-tokens", type=int, default=0, help="if set, batch = batch_tokens // length")
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--depth", type=int, default=2, help="memory depth (1: the linear memory)")
    p.add_argument("--impls", nargs="+", default=["chunked"])
    p.add_argument(
        "--decay-targets", nargs="+", default=["initial"], choices=["initial", "zero"], help="forget towards M_0 or 0"
    )
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd chunk step")
    p.add_argument("--checkpoint-chunks", type=int, default=0, help="keep the state every G chunks for backward")
    p.add_argument("--graph", action="store_true", help="also time CUDA-graph replays of forward + backward")
    p.add_argument("--anchors", action="store_true", help="time the external anchors when installed")
    p.add_argument(
        "--splits", nargs="+", default=["auto"], help="fused kernels: programs per (batch, head), or auto (the default)"
    )
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default="", help="write the rows to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_memory needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for length in args.lengths:
        batch = max(1, args.batch_tokens // length) if args.batch_tokens else args.batch
        tokens = batch * length
        shape = f"B={batch} T={length}"
        for chunk in args.chunks:
            for impl in args.impls:
                variants = [(False, False)] + [(True, False)] * args.compile + [(False, True)] * args.graph
                variants += [(True, True)] * (args.compile and args.graph)
                splits = args.splits if impl in ("fused", "auto") else ["auto"]
                for (compiled, graph), target, split in itertools.product(variants, args.decay_targets, splits):
                    os.environ["TITANS_FUSED_SPLIT"] = "" if split == "auto" else split
                    tag = "+compile" * compiled + "+graph" * graph + f" split {split}" * (impl != "chunked")
                    name = f"titans {impl}{tag} depth {args.depth} chunk {chunk} to {target}, {shape}"
                    build = functools.partial(
                        ours, impl, args.dim, args.heads, chunk, batch, length, compiled, graph, args.checkpoint_chunks,
                        args.depth, target,
                    )  # fmt: skip
                    rows.append(measure(name, build, tokens, args.repeat))
                    print(rows[-1], flush=True)
            if args.anchors:
                for label, factory in (("titans-pytorch", titans_pytorch), ("fla chunk_ttt_linear", fla_ttt_linear)):
                    try:
                        build = functools.partial(factory, args.dim, args.heads, chunk, batch, length)
                        rows.append(measure(f"{label} chunk {chunk}, {shape}", build, tokens, args.repeat))
                    except ImportError:
                        continue
                    except Exception as error:  # an anchor's API drifted: report it, keep the other rows
                        print(f"{label} chunk {chunk}: {type(error).__name__}: {error}", file=sys.stderr)
                        continue
                    print(rows[-1], flush=True)
        rows.append(
            measure(
                f"SDPA causal attention op, {shape}",
                functools.partial(sdpa, args.dim, args.heads, batch, length),
                tokens,
                args.repeat,
            )
        )
    print(f"\n{'configuration':<58}{'ms':>10}{'tokens/s':>14}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['name']:<58}{r['ms']:>10.2f}{r['tokens_per_s']:>14,.0f}{r['peak_gib']:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
