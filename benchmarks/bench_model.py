"""Whole-model benchmarks: training-step throughput of each variant at equal size, and per-token decoding
latency after a short and a very long context (it must stay flat: bounded caches, fixed-size memory).

    python benchmarks/bench_model.py                                   # GPU: small preset, B 8 × T 2048
    python benchmarks/bench_model.py --cuda-graph --decode-variants    # forward + backward as one CUDA graph
    python benchmarks/bench_model.py --device cpu --preset tiny --batch 2 --length 64 --contexts 64 256

Reports median ms (CUDA events on a GPU), tokens/s and peak GiB; bf16 autocast on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch
from timing import median_ms

from titans import TitansLM
from titans.models import preset
from titans.models.summary import count_parameters
from titans.training.cuda_graph import CudaGraphedPass


def _autocast(device: str, cache: bool = True) -> contextlib.AbstractContextManager:
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)


def train_step(variant: str, args: argparse.Namespace) -> dict:
    """One AdamW training step (forward, backward, update) on random bytes; with ``--cuda-graph`` the forward and
    backward pass is replayed as one CUDA graph (``train.cuda_graph``), the update stays eager."""
    model = TitansLM(preset(args.preset, variant, check_inputs=False)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length + 1), device=args.device)

    def forward_backward(ids: torch.Tensor) -> torch.Tensor:
        with _autocast(args.device, cache=not args.cuda_graph):
            loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        assert loss is not None
        loss.backward()
        return loss.detach()

    run = CudaGraphedPass(model, forward_backward) if args.cuda_graph else forward_backward

    def step() -> None:
        run(ids)
        optimizer.step()
        optimizer.zero_grad(set_to_none=not args.cuda_graph)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, args.device, warmup=2, repeat=args.repeat)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    tokens = args.batch * args.length
    return {"variant": variant, "params": count_parameters(model), "ms": ms, "tokens_per_s": tokens / ms * 1e3,
            "peak_gib": peak, "cuda_graph": args.cuda_graph}  # fmt: skip


@torch.no_grad()
def decode_latency(variant: str, context: int, args: argparse.Namespace) -> dict:
    """Read ``context`` tokens (in pieces, carrying the state), then time single-token steps."""
    model = TitansLM(preset(args.preset, variant, check_inputs=False)).to(args.device).eval()
    state = None
    with _autocast(args.device):
        for start in range(0, context, args.piece):
            piece = torch.randint(0, 256, (1, min(args.piece, context - start)), device=args.device)
            state = model(piece, state=state, last_logits_only=True).state
    token = torch.randint(0, 256, (1, 1), device=args.device)
    holder = {"state": state}

    def step() -> None:
        with _autocast(args.device):
            holder["state"] = model(token, state=holder["state"], last_logits_only=True).state

    return {"variant": variant, "context": context, "ms_per_token": median_ms(step, args.device, 3, args.repeat)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="small")
    p.add_argument(
        "--variants", nargs="*", default=["transformer", "swa", "mac", "mag", "mal", "lmm"], help="none: decoding only"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 1 << 20])
    p.add_argument("--decode-variants", nargs="*", default=["mac", "swa"], help="none: training steps only")
    p.add_argument("--piece", type=int, default=4096, help="prefill piece length when reading the context")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cuda-graph", action="store_true", help="training steps: forward + backward as one CUDA graph")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    graphed = "  forward + backward as a CUDA graph" if args.cuda_graph else ""
    print(f"device: {name}  torch {torch.__version__}  preset {args.preset}  B={args.batch} T={args.length}{graphed}")
    print(f"\n{'variant':<12}{'params':>12}{'step ms':>10}{'tokens/s':>12}{'peak GiB':>10}{'vs transformer':>22}")
    train = []
    for variant in args.variants:  # each row as soon as it is measured: a long run shows its progress
        r = train_step(variant, args)
        train.append(r)
        base = next((t for t in train if t["variant"] == "transformer"), None)
        ratio = ""
        if base is not None:
            ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.1%} speed"
            ratio += f", {r['peak_gib'] / base['peak_gib']:.2f}x memory" if args.device.startswith("cuda") else ""
        row = f"{variant:<12}{r['params']:>12,}{r['ms']:>10.1f}{r['tokens_per_s']:>12,.0f}{r['peak_gib']:>10.2f}"
        print(f"{row}  {ratio}", flush=True)
    print(f"\n{'variant':<12}{'context':>10}{'ms/token':>10}")
    decode = []
    for variant in args.decode_variants:
        for context in args.contexts:
            decode.append(decode_latency(variant, context, args))
            print(f"{variant:<12}{context:>10,}{decode[-1]['ms_per_token']:>10.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "train": train, "decode": decode}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
