"""Scorers for the offline benchmarks; every ``score_*`` returns a JSON-ready dict for ``report.json``.

Matching rules (decided here, tested in ``tests/test_tasks_scoring.py``):

* **Needle position**: exact position match; accuracy overall, by length and by relative-position bin
  (``position / length`` in 0-20%, 20-40%, ..., 80-100%; the last bin includes 100%).
* **S-NIAH**: the gold value must appear in the stripped output as a whole token: case-insensitive, not
  glued to a letter or digit on either side (nor to a hyphen for uuids). So ``"1234567."`` and
  ``"is 1234567 and"`` count, but ``"123456"`` (6 of 7 digits), ``"12345678"``, ``"123 4567"``,
  ``"1,234,567"`` and a different uuid do not.
* **BABILong**: the output's first sentence (up to the first ``.``, ``!``, ``?`` followed by whitespace or
  the end, or the first newline) must contain the answer as whole words, case-insensitively. Words are
  runs of letters/digits, so there is no stemming: ``"bathrooms"`` does **not** match ``"bathroom"``
  (bAbI answers come from a closed vocabulary; a plural is a different answer). Optionally (``labels``),
  the first sentence must not also name another possible answer that is not in the question, so hedging
  ("the bathroom or the kitchen") does not count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

NEEDLE_POSITION_BIN_EDGES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Relative-position bins of the needle task: [0, 20%), [20%, 40%), ..., [80%, 100%]."""

_WORD = re.compile(r"[a-z0-9]+")
_FIRST_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _as_int_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, possibly on an accelerator
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(np.int64)


def _accuracy_entry(correct: np.ndarray) -> dict[str, Any]:
    count = int(correct.size)
    return {
        "accuracy": float(correct.mean()) if count else None,
        "num_correct": int(correct.sum()),
        "num_samples": count,
    }


def _grouped(keys: Sequence[Any], correct: np.ndarray, sort_key: Callable[[Any], Any] = str) -> dict[str, Any]:
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return {str(key): _accuracy_entry(correct[groups[key]]) for key in sorted(groups, key=sort_key)}


def position_bin_label(lower: float, upper: float) -> str:
    """E.g. ``"0-20%"``."""
    return f"{round(lower * 100)}-{round(upper * 100)}%"


def score_needle_predictions(predictions: Any, targets: Any, lengths: Any) -> dict[str, Any]:
    """Accuracy of predicted needle positions, overall, by length and by relative-position bin.

    Args:
        predictions: predicted positions, shape (N,) (list, numpy array or torch tensor).
        targets: true needle positions, shape (N,).
        lengths: true (unpadded) sequence lengths, shape (N,).

    Returns:
        ``{"accuracy", "num_correct", "num_samples", "by_length": {"64": {...}, ...},
        "by_position_bin": {"0-20%": {...}, ..., "80-100%": {...}}}``; every group entry has
        ``accuracy`` (``None`` for an empty bin), ``num_correct`` and ``num_samples``.
    """
    predicted = _as_int_array(predictions, "predictions")
    target = _as_int_array(targets, "targets")
    length = _as_int_array(lengths, "lengths")
    if not predicted.shape == target.shape == length.shape:
        raise ValueError(
            f"predictions, targets and lengths must have the same length, got {predicted.shape}, "
            f"{target.shape}, {length.shape}"
        )
    if np.any(length <= 0) or np.any(target < 0) or np.any(target >= length):
        raise ValueError("every target must satisfy 0 <= target < length (with length > 0)")
    correct = predicted == target
    relative = target / length
    edges = NEEDLE_POSITION_BIN_EDGES
    bins = np.clip(np.searchsorted(edges, relative, side="right") - 1, 0, len(edges) - 2)
    by_bin = {
        position_bin_label(edges[i], edges[i + 1]): _accuracy_entry(correct[bins == i]) for i in range(len(edges) - 1)
    }
    return {
        **_accuracy_entry(correct),
        "by_length": _grouped(length.tolist(), correct, sort_key=int),
        "by_position_bin": by_bin,
    }


# ------------------------------------------------------------------------------------------------ S-NIAH


def sniah_output_is_correct(output: str, answer: str) -> bool:
    """Whether the gold ``answer`` appears in ``output`` as a whole token (see the module docstring)."""
    gold = answer.strip()
    if not gold:
        raise ValueError("the gold answer is empty")
    glue = "0-9A-Za-z" + ("-" if "-" in gold else "")
    pattern = rf"(?<![{glue}]){re.escape(gold)}(?![{glue}])"
    return re.search(pattern, output.strip(), flags=re.IGNORECASE) is not None


class _SNIAHLike(Protocol):
    task: str
    target_length: int
    depth_percent: float
    answer: str


def score_sniah(samples: Sequence[_SNIAHLike], outputs: Sequence[str]) -> dict[str, Any]:
    """Accuracy of generated ``outputs`` (one per sample, the continuation only) on S-NIAH samples.

    Returns ``{"accuracy", "num_correct", "num_samples", "by_task", "by_length", "by_depth",
    "by_task_and_length": {task: {length: {...}}}}``.
    """
    if len(samples) != len(outputs):
        raise ValueError(f"{len(samples)} samples but {len(outputs)} outputs")
    correct = np.array(
        [sniah_output_is_correct(output, sample.answer) for sample, output in zip(samples, outputs)],
        dtype=bool,
    )
    return _summary(
        correct,
        tasks=[s.task for s in samples],
        lengths=[s.target_length for s in samples],
        extra={"by_depth": _grouped([round(s.depth_percent, 2) for s in samples], correct, sort_key=float)},
    )


def _summary(
    correct: np.ndarray, tasks: Sequence[str], lengths: Sequence[int], extra: Mapping[str, Any]
) -> dict[str, Any]:
    by_task_and_length: dict[str, Any] = {}
    for task in sorted(set(tasks)):
        indices = [i for i, t in enumerate(tasks) if t == task]
        by_task_and_length[task] = _grouped([lengths[i] for i in indices], correct[indices], sort_key=int)
    return {
        **_accuracy_entry(correct),
        "by_task": _grouped(list(tasks), correct),
        "by_length": _grouped(list(lengths), correct, sort_key=int),
        **extra,
        "by_task_and_length": by_task_and_length,
    }


# ---------------------------------------------------------------------------------------------- BABILong


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end (``. ! ?`` before whitespace or the end) or newline, stripped."""
    stripped = text.strip()
    match = _FIRST_SENTENCE_END.search(stripped)
    return (stripped[: match.start()] if match else stripped).strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _contains_word_sequence(words: Sequence[str], phrase: Sequence[str]) -> bool:
    width = len(phrase)
    return width > 0 and any(list(words[i : i + width]) == list(phrase) for i in range(len(words) - width + 1))


def babilong_output_is_correct(
    output: str, answer: str, labels: Iterable[str] | None = None, question: str | None = None
) -> bool:
    """Whether ``output``'s first sentence gives ``answer`` (see the module docstring).

    Args:
        output: the generated continuation.
        answer: the gold answer; comma-separated answers (bAbI list tasks) need every part present.
        labels: optional set of all possible answers of the task (e.g. from
            :func:`titans.tasks.babi.babi_answer_labels`); if given, naming another label in the first
            sentence makes the output wrong, except labels that occur in ``question``.
        question: the question (only used with ``labels``).
    """
    parts = [_words(part) for part in answer.split(",") if _words(part)]
    if not parts:
        raise ValueError(f"the gold answer {answer!r} has no words")
    words = _words(first_sentence(output))
    if not all(_contains_word_sequence(words, part) for part in parts):
        return False
    if labels is None:
        return True
    gold_words = {word for part in parts for word in part}
    question_words = set(_words(question or ""))
    for label in labels:
        label_words = _words(label)
        if not label_words or set(label_words) <= gold_words or set(label_words) <= question_words:
            continue
        if _contains_word_sequence(words, label_words):
            return False
    return True


class _BabilongLike(Protocol):
    task: str
    target_length: int
    answer: str
    question: str


def score_babilong(
    samples: Sequence[_BabilongLike],
    outputs: Sequence[str],
    labels_by_task: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Any]:
    """Accuracy of generated ``outputs`` on BABILong samples.

    Args:
        samples: the samples.
        outputs: one generated continuation per sample.
        labels_by_task: optional ``{"qa1": labels, ...}`` to reject outputs naming another answer too.

    Returns ``{"accuracy", "num_correct", "num_samples", "by_task", "by_length",
    "by_task_and_length"}``.
    """
    if len(samples) != len(outputs):
        raise ValueError(f"{len(samples)} samples but {len(outputs)} outputs")
    label_sets = {task: list(labels) for task, labels in (labels_by_task or {}).items()}
    correct = np.array(
        [
            babilong_output_is_correct(output, sample.answer, label_sets.get(sample.task), sample.question)
            for sample, output in zip(samples, outputs)
        ],
        dtype=bool,
    )
    return _summary(correct, [s.task for s in samples], [s.target_length for s in samples], extra={})
