"""Train the memory of a :class:`~titans.hf.augmented.MemoryAugmentedLM` by distillation from a teacher (KL
divergence between temperature-softened distributions), optionally mixed with the LM loss.

The teacher reads each row whole (a long-context model); the student reads it segment by segment, so what it
needs from earlier segments must come through its memory. Both must share the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.hf.augmented import MemoryAugmentedLM


@dataclass
class DistillConfig:
    """The distillation loop: ``alpha`` weighs the LM loss, ``1 − alpha`` the KL term (scaled by T²)."""

    steps: int = 100
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 1e-3
    temperature: float = 2.0
    alpha: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10

    def validate(self) -> DistillConfig:
        for name in ("steps", "batch_size", "seq_len", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DistillConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("DistillConfig.temperature and DistillConfig.lr must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"DistillConfig.alpha must be in [0, 1]; got {self.alpha}")
        return self


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over positions (B, T, vocab)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (they must share the vocabulary)"
        )
    student = F.log_softmax(student_logits.float() / temperature, dim=-1).flatten(0, 1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1).flatten(0, 1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def teacher_logits(teacher: nn.Module, input_ids: Tensor) -> Tensor:
    """The teacher's logits (B, T, vocab) of whole rows, without gradients."""
    with torch.no_grad():
        out = teacher(input_ids=input_ids) if hasattr(teacher, "config") else teacher(input_ids)
    return out.logits


def token_rows(documents: Iterable[list[int]], seq_len: int, max_rows: int | None = None) -> Tensor:
    """Concatenate tokenised documents and cut them into rows of ``seq_len`` tokens (the tail is dropped)."""
    buffer: list[int] = []
    rows: list[list[int]] = []
    for ids in documents:
        buffer.extend(ids)
        while len(buffer) >= seq_len and (max_rows is None or len(rows) < max_rows):
            rows.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
        if max_rows is not None and len(rows) >= max_rows:
            break
    if not rows:
        raise ValueError(f"the data holds fewer than seq_len={seq_len} tokens: nothing to train on")
    return torch.tensor(rows, dtype=torch.long)


def _batches(rows: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        order = torch.randperm(rows.shape[0], generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield rows[order[start : start + batch_size]]
        if len(order) < batch_size:
            yield rows[order]


def distill(
    student: MemoryAugmentedLM,
    teacher: nn.Module,
    rows: Tensor,
    config: DistillConfig,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> list[float]:
    """Train ``student``'s trainable parameters on ``rows`` (N, T) for ``config.steps`` steps; the losses."""
    config.validate()
    generator = torch.Generator().manual_seed(config.seed)
    params = student.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    device = next(student.parameters()).device
    teacher.eval()
    losses: list[float] = []
    batches = _batches(rows, config.batch_size, generator)
    student.train()
    for step in range(config.steps):
        ids = next(batches).to(device)
        target = teacher_logits(teacher, ids)
        out = student(ids, labels=ids if config.alpha > 0 else None)
        kl = distillation_loss(out.logits, target, config.temperature)
        loss = (1 - config.alpha) * kl + (config.alpha * out.loss if out.loss is not None else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % config.log_every == 0 or step == config.steps - 1):
            log(step, {"loss": losses[-1], "kl": float(kl.detach())})
    student.eval()
    return losses


def read_rows(data: str | Path, encode: Callable[[str], list[int]], seq_len: int, max_rows: int | None) -> Tensor:
    """Rows of ``seq_len`` tokens from a corpus (JSONL, text file, folder of .txt; every split)."""
    from titans.data.readers import iter_labelled_documents

    documents = (encode(text) for _, text in iter_labelled_documents(Path(data)))
    return token_rows(documents, seq_len, max_rows)


__all__ = ["DistillConfig", "distill", "distillation_loss", "read_rows", "teacher_logits", "token_rows"]
