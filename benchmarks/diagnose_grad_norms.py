"""Where do the large gradient norms of the memory models come from? A CPU diagnostic on a small model.

Trains a small model (default: MAC, 2 blocks, dim 128, 2 heads × 64, memory depth 2 × expansion 4, chunk 16,
segment 128; AdamW 0.9/0.95, wd 0.1, clip 1.0, lr 2e-3 after a short warm-up, as the trainer does) on rows of
the bundled sample corpus (bytes) and logs, per step, the loss, the global gradient norm before clipping and
the norm of every parameter group. Every ``--trace-every`` steps, at every step whose norm jumps, and at the
last step it also prints, per memory layer, from the inputs that layer saw in that step:

* ``|k| before l2-norm``, ``|v|``, the gates θ, η, α (min/median/max), and ``key cos in chunk``: the mean
  cosine between two keys of one chunk (near 1: the chunk writes one key 16 times, eq. 16 sums the steps);
* per chunk, at the chunk-start weights where the chunk's inner gradients are taken (eq. 16):
  ``preLN std`` (min over tokens) — the std of the last memory layer's output before M's LayerNorm, whose
  backward divides by it; ``step ratio`` ρ = θ‖∇_W ℓ‖² / ‖M(k) − v‖² (max over tokens) — the size of one
  token's inner step in function space along its error (1 ≈ the delta rule with θ = 1, > 2: that token's
  step overshoots); the inner loss; ‖W_l‖;
* ``chain growth`` per chunk: how much the map (W, S)_c → (W, S)_{c+1} stretches a tangent (forward-mode
  derivatives of a random tangent, renormalised each chunk, so it approaches the largest growth rate).
  Backpropagation multiplies the outer gradient by the transposes of these maps, chunk after chunk: the
  product over the sequence (printed as log10) is how much the chunk chain can amplify it;
* ``dL/d(memory input) per call``: the gradient norm at the input of each call of the layer (MAC: one call
  per segment), last call on the right — growth towards the left is the explosion through the recurrence.

Options to test a cause: ``--dtype float64`` (same numbers in fp32 and fp64: structural, not rounding);
``--init old`` (the initialisation before the fix: M_0's last layer at std 1/sqrt(fan-in), forget-gate bias
−4), or ``--forget-bias`` / ``--last-std`` alone; ``--max-lr`` (θ_max); ``--cut-chain`` (stop the outer
gradient through the inner gradients' dependence on the chunk-start weights: a diagnostic, not a fix).

    uv run python benchmarks/diagnose_grad_norms.py                       # ~2 minutes on one core
    uv run python benchmarks/diagnose_grad_norms.py --init old            # the behaviour before the fix
    uv run python benchmarks/diagnose_grad_norms.py --init old --cut-chain
    uv run python benchmarks/diagnose_grad_norms.py --variant lmm --seq-len 2048 --batch 1 --steps 8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import lzma
import math
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import titans.ops.memory_mlp as memory_mlp
import titans.ops.recurrence as recurrence
from titans.layers.neural_memory import NeuralMemory
from titans.models import TitansLM, preset
from titans.ops.memory_mlp import gelu, inner_grad_factors, inner_loss
from titans.ops.recurrence import RecurrentState, memory_recurrence_chunked
from titans.sample_data import sample_corpus_path
from titans.training.trainer import parameter_groups

GROUPS = [
    ("memory.k-conv", r"memory\.convs\.1\."),
    ("memory.q-conv", r"memory\.convs\.0\."),
    ("memory.v-conv", r"memory\.convs\.2\."),
    ("memory.W_K", r"memory\.to_keys\."),
    ("memory.W_Q", r"memory\.to_queries\."),
    ("memory.W_V", r"memory\.to_values\."),
    ("memory.gates", r"memory\.to_(lr|momentum|forget)\."),
    ("memory.M_0", r"memory\.initial_weights\."),
    ("memory.out", r"memory\.(output_norm|to_output_gate|to_out)\."),
    ("mac.gate_norm", r"gate_norm\."),
    ("attention", r"\.attn\."),
    ("persistent", r"persistent_tokens"),
    ("mlp", r"\.mlp(_norm)?\."),
    ("norms", r"norm\."),
    ("embed/head", r"^(embed|lm_head)\."),
]

OLD_FORGET_BIAS = -4.0  # the forget-gate bias before the fix: α = sigmoid(−4) ≈ 0.018 per token


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other"


def corpus_bytes(path: str | None) -> Tensor:
    """The train split of a JSONL corpus (.gz/.xz; default: the bundled sample) as one byte tensor."""
    path = path or str(sample_corpus_path())
    opener: Any = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        books = [json.loads(line) for line in f]
    text = "\n\n".join(b["text"] for b in books if b.get("split", "train") == "train").encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def batch(data: Tensor, rows: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    starts = torch.randint(0, len(data) - length - 1, (rows,), generator=generator)
    window = torch.stack([data[s : s + length + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


def learning_rate(step: int, peak: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """The trainer's schedule: linear warm-up, then a cosine down to ``peak × min_ratio``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * min(1.0, progress))))


def reinitialise(model: nn.Module, forget_bias: float | None, last_std: float | str | None) -> None:
    """Override the memories' forget-gate bias and/or the std of M_0's last layer (``"fan-in"``: 1/sqrt(d_in))."""
    with torch.no_grad():
        for memory in model.modules():
            if not isinstance(memory, NeuralMemory):
                continue
            if forget_bias is not None and memory.to_forget is not None:
                memory.to_forget.bias.fill_(forget_bias)
            if last_std is not None and memory.depth > 1:
                last = memory.initial_weights[-1]
                last.normal_(std=last.shape[-2] ** -0.5 if last_std == "fan-in" else float(last_std))


class EmulatedTF32(TorchDispatchMode):
    """Rounds both operands of every fp32 matrix product (forward and backward) to TF32 — 10 explicit mantissa
    bits, round to nearest — as the GPU's tf32 tensor cores do: the CPU twin of the fused kernels' tf32 products."""

    PRODUCTS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default})

    @staticmethod
    def round(t: Tensor) -> Tensor:
        if t.dtype != torch.float32:
            return t
        bits = t.contiguous().view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in self.PRODUCTS:
            args = tuple(self.round(a) if isinstance(a, Tensor) else a for a in args)
        return func(*args, **(kwargs or {}))


def cut_chain() -> None:
    """Stop the outer gradient through the inner gradients' dependence on the chunk-start weights (the
    second-order path of the chunk chain); the forward is unchanged."""
    original = recurrence.inner_grad_factors

    def detached(weights: Sequence[Tensor], keys: Tensor, values: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return original([w.detach() for w in weights], keys, values)

    recurrence.inner_grad_factors = detached


# ------------------------------------------------------------------------------------------------ recording


class MemoryRecorder:
    """Per NeuralMemory: the inputs of its write calls in one forward pass (MAC: one call per segment) and the
    gradient norm that reaches each of them in the backward pass."""

    def __init__(self, model: nn.Module):
        self.inputs: dict[str, list[Tensor]] = defaultdict(list)
        self.grad_norms: dict[str, list[float]] = defaultdict(list)
        self.memories = {name: m for name, m in model.named_modules() if isinstance(m, NeuralMemory)}
        for name, memory in self.memories.items():
            memory.register_forward_pre_hook(functools.partial(self._record, name))

    def _record(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        self.inputs[name].append(x.detach())
        norms = self.grad_norms[name]
        index = len(norms)
        norms.append(float("nan"))
        if x.requires_grad:
            x.register_hook(functools.partial(self._store_norm, norms, index))

    @staticmethod
    def _store_norm(norms: list[float], index: int, grad: Tensor) -> None:
        norms[index] = grad.norm().item()

    def clear(self) -> None:
        self.inputs.clear()
        self.grad_norms.clear()

    def sequence(self, name: str) -> Tensor:
        """The whole sequence the memory wrote, from its initial state: MAG/MAL/LMM first write the persistent
        tokens P (batch 1), so the result is [P ‖ x]."""
        calls = self.inputs[name]
        rows = max(c.shape[0] for c in calls)
        return torch.cat([c.expand(rows, -1, -1) for c in calls], dim=1)


# ------------------------------------------------------------------------------------------------ memory trace


def _stats(t: Tensor) -> str:
    t = t.flatten().double()
    return f"{t.min().item():.3g}/{t.median().item():.3g}/{t.max().item():.3g}"


def memory_inputs(memory: NeuralMemory, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...], Tensor]:
    """What the recurrence sees for an input x (B, T, dim), as in ``NeuralMemory.forward``: q, k, v (B, H, T, d),
    the gates (θ, log η, log(1 − α), each (B, H, T) or None) and the keys before their ℓ2 norm."""
    inner = torch.float64 if x.dtype == torch.float64 else torch.float32
    raw = [memory._heads(memory._project(x, i, None)[0].to(inner)) for i in range(3)]
    q, k = F.normalize(raw[0], dim=-1), F.normalize(raw[1], dim=-1)
    return q, k, raw[2], memory._gates(x, inner), raw[1]


def _chunk_step(
    depth: int, chunk: int, inputs: list[Tensor], gates: list[Tensor | None], *tensors: Tensor
) -> tuple[Tensor, ...]:
    """One chunk of the recurrence as a function of the state (W_1..W_L, S_1..S_L) it starts from."""
    weights, surprise = tuple(tensors[:depth]), tuple(tensors[depth:])
    _, new = memory_recurrence_chunked(*inputs, *gates, RecurrentState(weights, surprise, weights, 0), chunk)
    assert new.momentum is not None
    return (*new.weights, *new.momentum)


def _tangent_norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([t.pow(2).sum(dim=(-1, -2)) for t in tensors]).sum(0).sqrt()


def chain_growth(memory: NeuralMemory, x: Tensor, seed: int = 0) -> Tensor:
    """Per chunk, the factor by which the chunk map (W, S)_c → (W, S)_{c+1} stretches a tangent (forward-mode
    derivatives of a random tangent, renormalised every chunk): (B, H, chunks)."""
    q, k, v, gates, _ = memory_inputs(memory, x)
    depth, chunk = memory.depth, memory.chunk_size
    state = memory.initial_state(x.shape[0], x.device, q.dtype).recurrent
    assert state.momentum is not None, "chain_growth expects a memory with momentum"
    generator = torch.Generator().manual_seed(seed)
    tangent = [
        torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) for w in (*state.weights, *state.momentum)
    ]
    growth = []
    for start in range(0, x.shape[1], chunk):
        piece = slice(start, start + chunk)
        step = functools.partial(
            _chunk_step,
            depth,
            chunk,
            [t[:, :, piece] for t in (q, k, v)],
            [g if g is None else g[:, :, piece] for g in gates],
        )
        size = _tangent_norm(tangent)[..., None, None]
        primal = tuple(t.contiguous() for t in (*state.weights, *state.momentum))
        out, pushed = torch.func.jvp(step, primal, tuple(t / size for t in tangent))[:2]
        tangent = list(pushed)
        growth.append(_tangent_norm(tangent))
        state = RecurrentState(tuple(out[:depth]), tuple(out[depth:]), tuple(out[:depth]), 0)
    return torch.stack(growth, dim=-1)


@torch.no_grad()
def trace_memory(memory: NeuralMemory, x: Tensor) -> dict[str, Any]:
    """The memory's inner statistics on the sequence x (B, T, dim) written from its initial state."""
    q, k, v, gates, k_raw = memory_inputs(memory, x)
    lr, log_momentum, log_retain = gates
    state = memory.initial_state(x.shape[0], x.device, q.dtype).recurrent
    chunk = memory.chunk_size
    pre_ln_std, ratios, losses, weight_norms, cosines = [], [], [], [], []
    for start in range(0, x.shape[1], chunk):
        piece = slice(start, start + chunk)
        weights, keys, values = state.weights, k[:, :, piece], v[:, :, piece]
        weight_norms.append([w.flatten(-2).norm(dim=-1).mean().item() for w in weights])
        inputs, deltas = inner_grad_factors(weights, keys, values)
        h = keys
        for layer, w in enumerate(weights):
            h = h @ w
            if layer < len(weights) - 1:
                h = gelu(h)
        pre_ln_std.append(h.std(dim=-1, unbiased=False))
        err2 = 2 * inner_loss(weights, keys, values)  # ‖M(k) − v‖² per token
        grad2 = sum(a.pow(2).sum(-1) * d.pow(2).sum(-1) for a, d in zip(inputs, deltas))  # Σ_l ‖a_lᵀ δ_l‖²
        ratios.append(lr[:, :, piece] * grad2 / err2)
        losses.append(err2.mean().item() / 2)
        n = keys.shape[2]
        if n > 1:
            gram = keys @ keys.transpose(-1, -2)
            cosines.append(((gram.sum((-1, -2)) - n) / (n * (n - 1))).flatten())
        chunk_gates = [None if g is None else g[:, :, piece] for g in gates]
        _, state = memory_recurrence_chunked(q[:, :, piece], keys, values, *chunk_gates, state, chunk)
    std = torch.stack(pre_ln_std, dim=2).amin(dim=(0, 1, 3))
    ratio = torch.stack(ratios, dim=2).amax(dim=(0, 1, 3))
    out: dict[str, Any] = {
        "|k| before l2-norm": _stats(k_raw.norm(dim=-1)),
        "|v|": _stats(v.norm(dim=-1)),
        "theta": _stats(lr),
        "eta": "-" if log_momentum is None else _stats(log_momentum.exp()),
        "alpha": "-" if log_retain is None else _stats(-torch.expm1(log_retain)),
        "key cos in chunk": "-" if not cosines else _stats(torch.cat(cosines)),
        "preLN std, min per chunk": [f"{s:.2g}" for s in std.tolist()],
        "step ratio, max per chunk": [f"{s:.2g}" for s in ratio.tolist()],
        "inner loss per chunk": [f"{s:.3g}" for s in losses],
        "|W_l| per chunk": [[f"{n:.3g}" for n in layer] for layer in zip(*weight_norms)],
    }
    if memory.momentum:
        with torch.enable_grad():
            growth = chain_growth(memory, x)
        out["chain growth per chunk (median)"] = [
            f"{s:.2g}" for s in growth.flatten(0, 1).median(dim=0).values.tolist()
        ]
        out["chain growth, log10 of the product"] = _stats(growth.log10().sum(dim=-1))
    return out


def print_trace(recorder: MemoryRecorder, every_chunk: int) -> None:
    for name, memory in recorder.memories.items():
        if name not in recorder.inputs:
            continue
        x = recorder.sequence(name).to(memory.to_keys.weight.dtype)  # autocast: the layer saw bf16
        print(f"    [{name}] input rms {x.pow(2).mean().sqrt().item():.3g}, {x.shape[1]} tokens")
        for key, value in trace_memory(memory, x).items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                for layer, norms in enumerate(value):
                    print(f"      {key} (layer {layer}): {' '.join(norms[::every_chunk])}")
            elif isinstance(value, list):
                print(f"      {key}: {' '.join(value[::every_chunk])}")
            else:
                print(f"      {key}: {value}")
        grads = recorder.grad_norms.get(name, [])
        print(f"      dL/d(memory input) per call: {' '.join(f'{g:.2g}' for g in grads)}")


# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="mac", choices=["mac", "mag", "mal", "lmm"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp-hidden", type=int, default=320)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-lr", type=float, default=None, help="θ_max (default: the preset's)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--init", choices=["current", "old"], default="current", help="old: before the fix")
    p.add_argument("--forget-bias", type=float, default=None, help="override the forget-gate bias")
    p.add_argument("--last-std", default=None, help="override the std of M_0's last layer (a number or fan-in)")
    p.add_argument("--cut-chain", action="store_true", help="no outer gradient through the chunk chain's 2nd order")
    p.add_argument("--trace-every", type=int, default=10, help="memory trace every N steps (0: never)")
    p.add_argument("--trace-chunks", type=int, default=4, help="print every N-th chunk of per-chunk lists")
    p.add_argument("--top", type=int, default=4, help="largest single-parameter gradient norms to print")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--config",
        default=None,
        help="a training YAML: the trainer's model, data, batches, optimizer, schedule "
        "(the shape, --data, --lr, --dtype and --model options are then ignored: use --set)",
    )
    p.add_argument("--model", dest="model_options", action="append", default=[], help="model field=value (no --config)")
    p.add_argument("--ln-eps", type=float, default=None, help="the memory LayerNorm's ε (chunked path only)")
    p.add_argument("--emulate-tf32", action="store_true", help="round every fp32 matrix product's inputs to TF32")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="with --config: key=value overrides")
    p.add_argument("--data", default=None, help="a JSONL corpus (.xz/.gz) instead of the bundled sample")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast around the forward (as the trainer on CUDA)")
    p.add_argument("--impl", default=None, help="the memory's impl (auto/fused/chunked/reference)")
    p.add_argument("--schedule-steps", type=int, default=None, help="length of the cosine schedule (default --steps)")
    p.add_argument("--trace-at", type=int, nargs="*", default=[], help="also trace the memory at these steps")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_from_args(args: argparse.Namespace) -> tuple[nn.Module, torch.optim.Optimizer, Any, Any]:
    """Model, optimizer, batch(step) and lr(step) from the command-line shape and the bundled sample (or --data)."""
    overrides: dict[str, Any] = dict(
        depth=args.depth, dim=args.dim, heads=args.heads, mlp_hidden=args.mlp_hidden, check_inputs=False
    )
    if args.max_lr is not None:
        overrides["max_lr"] = args.max_lr
    for option in args.model_options:
        key, _, value = option.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.impl is not None:
        overrides["impl"] = args.impl
    if args.cut_chain:
        overrides["impl"] = "chunked"
    config = preset("small", args.variant, **overrides)
    model = TitansLM(config).to(device=torch.device(args.device), dtype=getattr(torch, args.dtype))
    forget_bias, last_std = (OLD_FORGET_BIAS, "fan-in") if args.init == "old" else (None, None)
    reinitialise(model, args.forget_bias if args.forget_bias is not None else forget_bias, args.last_std or last_std)
    print(
        f"{config.variant.upper()}: {config.depth} blocks, dim {config.dim}, {config.heads} heads, memory depth "
        f"{config.memory_depth} x{config.memory_expansion}, chunk {config.chunk_size}, segment {config.segment_len}, "
        f"θ_max {config.max_lr}; init {args.init}; rows {args.batch} x {args.seq_len} bytes; lr {args.lr}; "
        f"{args.dtype}{'; chunk chain cut' if args.cut_chain else ''}"
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95))
    data = corpus_bytes(args.data)
    generator = torch.Generator().manual_seed(args.seed)
    schedule = args.schedule_steps or args.steps
    return (
        model,
        optimizer,
        lambda step: batch(data, args.batch, args.seq_len, generator),
        lambda step: learning_rate(step, args.lr, args.warmup, schedule),
    )


def build_from_config(args: argparse.Namespace) -> tuple[nn.Module, torch.optim.Optimizer, Any, Any]:
    """The trainer's own model, optimizer, batches and schedule for a training YAML (one process)."""
    from titans.training.config import load_run_config
    from titans.training.trainer import TrainBatches, build_optimizer, load_training_data
    from titans.training.trainer import learning_rate as trainer_lr

    config = load_run_config(args.config, args.overrides)
    if args.cut_chain:
        config.model.impl = "chunked"
    torch.manual_seed(config.train.seed)
    model = TitansLM(config.model).to(torch.device(args.device))
    train_rows, _ = load_training_data(config)
    batches = TrainBatches(train_rows, config.train.batch_size, config.train.seed)
    print(f"{config.model.variant.upper()} from {args.config} {' '.join(args.overrides)}: {config.model}")
    return (
        model,
        build_optimizer(model, config.train),
        lambda step: (lambda b: (b.input_ids, b.labels))(batches.batch(step)),
        lambda step: trainer_lr(step, config.train),
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.cut_chain:
        cut_chain()
    if args.ln_eps is not None:  # read at call time by memory_mlp.layer_norm / layer_norm_backward
        memory_mlp.LAYER_NORM_EPS = args.ln_eps
    model, optimizer, next_batch, lr_at = (build_from_config if args.config else build_from_args)(args)
    device = torch.device(args.device)
    recorder = MemoryRecorder(model)
    params = dict(model.named_parameters())
    history: list[float] = []
    jumps = 0
    started = time.perf_counter()
    for step in range(args.steps):
        recorder.clear()
        inputs, labels = (t.to(device) for t in next_batch(step))
        products = EmulatedTF32() if args.emulate_tf32 else contextlib.nullcontext()
        with products, torch.autocast(device.type, torch.bfloat16, enabled=args.autocast):
            loss = model(inputs, labels=labels).loss
            assert loss is not None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        per_param = {n: p.grad.double().norm().item() for n, p in params.items() if p.grad is not None}
        groups: dict[str, float] = defaultdict(float)
        for n, g in per_param.items():
            groups[group_of(n)] += g * g
        total = math.sqrt(sum(groups.values()))
        history.append(total)
        ordered = sorted(groups.items(), key=lambda kv: -kv[1])
        print(
            f"step {step:3d} loss {loss.item():.4f} |g| {total:9.4g}  "
            + " ".join(f"{k}={math.sqrt(v):.3g}" for k, v in ordered[:6]),
            flush=True,
        )
        if args.top:
            top = sorted(per_param.items(), key=lambda kv: -kv[1])[: args.top]
            print("         top: " + ", ".join(f"{n} {g:.3g}" for n, g in top))
        jumped = step > 0 and total > 3 * min(history[:-1][-5:]) and jumps < 3  # trace the first 3 jumps
        jumps += jumped
        periodic = args.trace_every and (step % args.trace_every == 0 or step == args.steps - 1)
        if periodic or jumped or step in args.trace_at:
            print(f"  memory trace at step {step}{' (gradient norm jumped)' if jumped else ''}:")
            print_trace(recorder, args.trace_chunks)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        if torch.isfinite(norm):
            optimizer.step()
    finite = [h for h in history if math.isfinite(h)]
    median = sorted(finite)[len(finite) // 2] if finite else float("nan")
    print(
        f"done in {time.perf_counter() - started:.0f}s; |g| max {max(history):.4g} (step "
        f"{history.index(max(history))}), median {median:.4g}, last {history[-1]:.4g}, loss {loss.item():.4f}"
    )


if __name__ == "__main__":
    main()
