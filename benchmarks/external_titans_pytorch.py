"""titans-pytorch's MAC (``MemoryAsContextTransformer``) trained on our data with our budget: the external baseline
of the README's language-modelling table.

    pip install titans-pytorch==0.5.5
    python benchmarks/external_titans_pytorch.py --config configs/small.yaml --json titans_pytorch_mac.json

The same bytes, rows, steps, batch, seed, AdamW groups (weight decay on matrices but the embedding), warm-up +
cosine schedule, gradient clipping and bf16 autocast as ``titans train --config configs/small.yaml``, and the
same held-out rows as its final evaluation (each row read with a fresh memory). The model is sized to our
``small`` MAC: dim 384, 6 blocks of 6 heads × 64, segments of 128, memory chunks of 16, a memory of 6 heads × 64
in every block (titans-pytorch's default, one head as wide as the model, ran out of an H100's 80 GB even at 8 rows
of 1024), 16 persistent and 16 long-term memory tokens, titans-pytorch's defaults otherwise, and the feed-forward
width chosen to match our parameter count. ``--memory-layers 2 4`` puts the memory where TITANS.md's speed anchor
has it; ``--micro-batch`` splits the batch (gradient accumulation). Not measured: the loss by position (it needs a
state carried across calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn
from tqdm import tqdm

from titans.data import IGNORE_INDEX, TrainBatches, iter_eval_batches
from titans.models import TitansLM, count_parameters
from titans.training import load_run_config
from titans.training.corpus import packed_rows, tokenized_split
from titans.training.evaluate import heldout_loss, summed_token_loss
from titans.training.precision import autocast
from titans.training.trainer import learning_rate, load_training_data


class LogitsOnly(nn.Module):
    """titans-pytorch's model returns logits; our evaluation reads ``model(input_ids).logits``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.inner(input_ids))


def build_mac(ff_mult: float, config, memory_layers: tuple[int, ...] | None) -> nn.Module:  # type: ignore[no-untyped-def]
    from titans_pytorch import MemoryAsContextTransformer

    m = config.model
    return MemoryAsContextTransformer(
        num_tokens=m.vocab_size, dim=m.dim, depth=m.depth, heads=m.heads, dim_head=m.dim // m.heads,
        segment_len=m.segment_len, neural_memory_segment_len=m.chunk_size, num_persist_mem_tokens=m.persistent_tokens,
        num_longterm_mem_tokens=16, ff_mult=ff_mult, neural_memory_layers=memory_layers,
        neural_memory_kwargs=dict(heads=m.heads, dim_head=m.dim // m.heads),
    )  # fmt: skip


def matched_mac(config, memory_layers: tuple[int, ...] | None) -> tuple[nn.Module, float]:  # type: ignore[no-untyped-def]
    """The MemoryAsContextTransformer whose parameter count is closest to our model of ``config``."""
    target = count_parameters(TitansLM(config.model))
    mults = (1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6)
    counts = {mult: sum(p.numel() for p in build_mac(mult, config, memory_layers).parameters()) for mult in mults}
    best = min(counts, key=lambda mult: abs(counts[mult] - target))
    return build_mac(best, config, memory_layers), best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/small.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config override")
    p.add_argument("--memory-layers", type=int, nargs="*", help="1-based blocks with a memory (default: every block)")
    p.add_argument("--micro-batch", type=int, default=0, help="rows per forward pass (gradient accumulation); 0: all")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    memory_layers = tuple(args.memory_layers) if args.memory_layers else None
    config = load_run_config(args.config, args.set)
    train_cfg, device = config.train, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_rows, valid_rows = load_training_data(config)
    torch.manual_seed(train_cfg.seed)
    model, ff_mult = matched_mac(config, memory_layers)
    for param in model.parameters():  # its per-head memory weights are expanded views (stride 0): no optimizer can
        if 0 in param.stride():  # update them in place, so each head gets its own copy (its per-head intent)
            param.data = param.data.clone()
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("token_emb")]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.startswith("token_emb"))]
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps)
    batches = TrainBatches(train_rows, train_cfg.batch_size, train_cfg.seed)
    accumulation = train_cfg.batch_size // args.micro_batch if args.micro_batch else 1
    print(f"titans-pytorch MAC, {params:,} parameters (ff_mult {ff_mult}), {train_cfg.steps} steps on {device}")
    losses, step_s = [], []
    started = time.time()
    for step in tqdm(range(train_cfg.steps), desc="training", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_cfg)
        batch = batches.batch(step)
        input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
        t0 = time.time()
        tokens, loss = (labels != IGNORE_INDEX).sum(), torch.zeros((), device=device)
        for index in range(accumulation):
            rows = slice(index, None, accumulation)
            with autocast(train_cfg.precision, device):
                logits = model(input_ids[rows])
            micro_loss = summed_token_loss(logits, labels[rows]) / tokens
            micro_loss.backward()
            loss += micro_loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        step_s.append(time.time() - t0)
    train_time = time.time() - started
    model.eval()
    evaluated = {}
    test_rows = packed_rows(tokenized_split(config, "test"), config.data.seq_len)
    for split, rows in (("valid", valid_rows), ("test", test_rows)):
        eval_batches = iter_eval_batches(rows, config.eval.batch_size, config.eval.max_batches)
        total = heldout_loss(LogitsOnly(model), eval_batches, device, train_cfg.precision)
        evaluated[split] = {"bits_per_byte": total.bits, "loss": total.loss, "tokens": total.tokens}
        print(f"{split}: {total.bits:.4f} bits per byte ({total.tokens:,} tokens)")
    tokens_per_step = train_cfg.batch_size * config.data.seq_len
    result = {
        "model": "titans-pytorch MemoryAsContextTransformer",
        "titans_pytorch": _version("titans-pytorch"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "config": args.config, "overrides": args.set, "parameters": params, "ff_mult": ff_mult,
        "memory_layers": memory_layers or "every block", "micro_batch": args.micro_batch or train_cfg.batch_size,
        "steps": train_cfg.steps, "training_tokens": train_cfg.steps * tokens_per_step,
        "tokens_per_s": tokens_per_step / statistics.median(step_s[1:] or step_s), "train_time_s": train_time,
        "train_loss": losses, **evaluated,
    }  # fmt: skip
    print(f"{result['tokens_per_s']:,.0f} tokens/s (median step), {train_time:.0f} s training")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
