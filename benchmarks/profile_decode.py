"""Where a decoding step's time goes on a GPU: one variant's per-token latency after a short context with each
attention backend choice, then the PyTorch profiler's table of a few steps.

    PYTHONPATH=src python3 benchmarks/profile_decode.py --variant mac
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from titans import TitansLM
from titans.models import preset

CHOICES = {
    "default": None,
    "no cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "math": [SDPBackend.MATH],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="mac")
    p.add_argument("--preset", default="small")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    model = TitansLM(preset(args.preset, args.variant, check_inputs=False)).cuda().eval()
    token = torch.randint(0, 256, (1, 1), device="cuda")

    def run(steps: int, state):  # type: ignore[no-untyped-def]
        for _ in range(steps):
            state = model(token, state=state, last_logits_only=True).state
        return state

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        state = model(torch.randint(0, 256, (1, args.context), device="cuda"), last_logits_only=True).state
        for name, backends in CHOICES.items():
            with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                state = run(3, state)
                torch.cuda.synchronize()
                start = time.perf_counter()
                state = run(args.steps, state)
                torch.cuda.synchronize()
            print(f"{args.variant} {name}: {(time.perf_counter() - start) / args.steps * 1e3:.2f} ms/token", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(5, state)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
