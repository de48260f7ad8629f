"""Where one whole-model training step's time goes on a GPU: the step's wall time, then the PyTorch profiler's
tables by GPU time and by host time (launch counts included).

    PYTHONPATH=src python3 benchmarks/profile_train_step.py --variant mac
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from titans import TitansLM
from titans.models import preset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="mac")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=2048)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    model = TitansLM(preset(args.preset, args.variant, check_inputs=False)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (args.batch, args.length + 1), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        assert loss is not None
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    print(f"{args.variant} step {(time.perf_counter() - start) * 1e3:.1f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
