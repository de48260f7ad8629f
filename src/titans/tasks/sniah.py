"""RULER single-needle-in-a-haystack tasks S-NIAH-1/2/3 (TITANS.md section 5).

=========  ===================================  =====================  =========================
task       haystack                             value                  paper's column
=========  ===================================  =====================  =========================
s_niah_1   the noise sentences, repeated        7-digit number         PK (passkey in noise)
s_niah_2   Paul Graham essays (RULER's json)    7-digit number         N (number in essays)
s_niah_3   Paul Graham essays (RULER's json)    uuid4 string           W (uuid in essays)
=========  ===================================  =====================  =========================

A prompt is::

    Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz
    you about the numbers afterwards.            <- RULER's instruction line (``include_instruction``)
    <haystack with the needle inserted at a sentence boundary>
    What is the special magic number for <key> mentioned in the provided text? The special magic number for
    <key> mentioned in the provided text is

and the expected continuation is ``" <value>"``. The needle is
``"One of the special magic numbers for <key> is: <value>."``; ``<key>`` is a random adjective-noun pair.

Sizing is in the tokenizer's own tokens: ``len(prompt_ids) + len(answer_ids) <= target_length``, and the
haystack fills the rest (whole sentences, then a last sentence cut at a word boundary, like RULER's
word-level truncation). The needle goes at the sentence boundary whose token offset inside the haystack is
nearest to ``depth_percent`` of the haystack. Essays start at the beginning of the corpus for every sample
(as in RULER) and wrap around when a length needs more than the whole corpus.
"""

from __future__ import annotations

import functools
import json
import lzma
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from titans.tasks.data_files import PAUL_GRAHAM_NIAH_ARCHIVE, PAUL_GRAHAM_RULER_JSON, find_data_file
from titans.tasks.text_utils import (
    CycledUnits,
    PromptRecord,
    count_tokens,
    default_tokenizer,
    longest_fitting_word_prefix,
    split_into_sentence_units,
)
from titans.tokenizer import Tokenizer

NOISE_SENTENCES: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
"""S-NIAH-1's haystack: these five sentences, repeated."""

RULER_DEPTHS: tuple[float, ...] = tuple(float(d) for d in np.linspace(0.0, 100.0, 40))
"""The 40 needle depths (percent of the haystack), 0 to 100 evenly spaced."""

NEEDLE_TEMPLATE = "One of the special magic {plural} for {key} is: {value}."
QUERY_TEMPLATE = (
    "What is the special magic {singular} for {key} mentioned in the provided text? "
    "The special magic {singular} for {key} mentioned in the provided text is"
)
INSTRUCTION_TEMPLATE = (
    "Some special magic {plural} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {plural} afterwards."
)

KEY_ADJECTIVES: tuple[str, ...] = (
    "amber", "ancient", "brave", "bright", "calm", "careful", "cheerful", "clever", "crimson", "curious",
    "dusty", "eager", "elegant", "faint", "fancy", "fierce", "fragile", "gentle", "gloomy", "golden",
    "grumpy", "hidden", "hollow", "humble", "icy", "jolly", "kind", "lively", "lonely", "lucky",
    "massive", "mellow", "misty", "modest", "narrow", "noisy", "odd", "pale", "patient", "polite",
    "proud", "quiet", "rapid", "rusty", "scarlet", "shiny", "silent", "sleepy", "smooth", "sturdy",
    "swift", "tender", "tiny", "velvet", "vivid", "wandering", "wary", "wild", "wise", "zealous",
)  # fmt: skip
"""Adjectives for needle keys (the key is ``"<adjective>-<noun>"``)."""

KEY_NOUNS: tuple[str, ...] = (
    "anchor", "apron", "badger", "banjo", "barrel", "beacon", "blanket", "bucket", "cabinet", "candle",
    "canyon", "carpet", "castle", "cellar", "compass", "cottage", "cricket", "dolphin", "engine", "falcon",
    "feather", "fountain", "garden", "glacier", "harbor", "helmet", "island", "jacket", "kettle", "ladder",
    "lantern", "meadow", "mirror", "monkey", "needle", "orchard", "otter", "paddle", "pebble", "pepper",
    "piano", "pigeon", "pillow", "pocket", "quarry", "rabbit", "ribbon", "saddle", "shovel", "spoon",
    "teapot", "thimble", "tractor", "trumpet", "tunnel", "valley", "violin", "wagon", "walrus", "window",
)  # fmt: skip
"""Nouns for needle keys."""

HaystackKind = Literal["noise", "essays"]
ValueKind = Literal["number", "uuid"]
DepthAssignment = Literal["random", "cycle"]
EssaySource = Literal["ruler_json", "niah_tar"]


@dataclass(frozen=True)
class SNIAHTaskSpec:
    """What distinguishes the three S-NIAH tasks."""

    name: str
    number: int
    haystack: HaystackKind
    value_kind: ValueKind

    @property
    def singular(self) -> str:
        """``"number"`` or ``"uuid"``, as used in the query."""
        return self.value_kind

    @property
    def plural(self) -> str:
        """``"numbers"`` or ``"uuids"``, as used in the needle and the instruction."""
        return self.value_kind + "s"


SNIAH_TASKS: dict[str, SNIAHTaskSpec] = {
    "s_niah_1": SNIAHTaskSpec("s_niah_1", 1, "noise", "number"),
    "s_niah_2": SNIAHTaskSpec("s_niah_2", 2, "essays", "number"),
    "s_niah_3": SNIAHTaskSpec("s_niah_3", 3, "essays", "uuid"),
}
SNIAH_TASK_NAMES: tuple[str, ...] = tuple(SNIAH_TASKS)


def get_sniah_task(task: str) -> SNIAHTaskSpec:
    """The spec of ``task`` (``"s_niah_1"``, ``"s_niah_2"`` or ``"s_niah_3"``; ``-`` works for ``_``)."""
    spec = SNIAH_TASKS.get(task.lower().replace("-", "_"))
    if spec is None:
        raise ValueError(f"unknown S-NIAH task {task!r}; expected one of {list(SNIAH_TASKS)}")
    return spec


@dataclass(frozen=True)
class SNIAHSample(PromptRecord):
    """One S-NIAH prompt with its answer and where the needle is.

    Attributes:
        task: ``"s_niah_1"``, ``"s_niah_2"`` or ``"s_niah_3"``.
        sample_index: index of the sample within its (task, target_length) group.
        seed: the base seed the group was generated with.
        target_length: the context length in tokens; ``len(prompt_ids) + len(answer_ids) <= target_length``.
        depth_percent: the requested needle depth (one of the depths, percent of the haystack).
        actual_depth_percent: where the needle really is: tokens of haystack before it / haystack tokens.
        key: the adjective-noun key, e.g. ``"curious-lantern"``.
        answer: the gold value (7-digit number or uuid string).
        needle: the needle sentence as inserted.
        prompt: the full prompt text (ends with ``"... mentioned in the provided text is"``).
        prompt_ids: ``tokenizer.encode(prompt)``.
        answer_ids: ``tokenizer.encode(" " + answer)``, the expected continuation (with whatever tokens
            the tokenizer adds to every encoding, e.g. BOS; none for bytes).
        needle_token_position: number of tokens of the prompt text before the needle (exact for byte
            tokenizers; for subword tokenizers, the token count of the text preceding the needle).
    """

    task: str
    sample_index: int
    seed: int
    target_length: int
    depth_percent: float
    actual_depth_percent: float
    key: str
    answer: str
    needle: str
    prompt: str = field(repr=False)
    prompt_ids: list[int] = field(repr=False)
    answer_ids: list[int] = field(repr=False)
    needle_token_position: int = 0


# --------------------------------------------------------------------------------------------- haystacks


@functools.lru_cache(maxsize=4)
def _load_ruler_essays(path: str) -> str:
    with lzma.open(path, "rt", encoding="utf-8") as handle:
        payload = json.load(handle)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise ValueError(f"{path}: expected a JSON object with a string field 'text'")
    return str(payload["text"])


@functools.lru_cache(maxsize=4)
def _load_niah_essays(path: str) -> str:
    texts: list[str] = []
    with tarfile.open(path, mode="r:xz") as archive:
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and m.name.endswith(".txt")), key=lambda m: m.name
        )
        for member in members:
            handle = archive.extractfile(member)
            if handle is not None:
                texts.append(handle.read().decode("utf-8"))
    if not texts:
        raise ValueError(f"{path}: no .txt essays found in the archive")
    return "\n\n".join(text.strip() for text in texts)


def load_paul_graham_essays(source: EssaySource = "ruler_json", data_dir: str | Path | None = None) -> str:
    """The Paul Graham essays haystack text.

    Args:
        source: ``"ruler_json"`` (RULER's ``PaulGrahamEssays.json``, the default, ~3.0M characters) or
            ``"niah_tar"`` (the 49 essays of the original needle-in-a-haystack test, in file-name order).
        data_dir: where the data files are; default :func:`~titans.tasks.data_files.find_data_file`'s.
    """
    if source == "ruler_json":
        return _load_ruler_essays(str(find_data_file(PAUL_GRAHAM_RULER_JSON, data_dir)))
    if source == "niah_tar":
        return _load_niah_essays(str(find_data_file(PAUL_GRAHAM_NIAH_ARCHIVE, data_dir)))
    raise ValueError(f"unknown essay source {source!r}; expected 'ruler_json' or 'niah_tar'")


@functools.lru_cache(maxsize=8)
def _essay_units(text: str) -> tuple[str, ...]:
    units = split_into_sentence_units(text)
    if units and not units[-1][-1:].isspace():
        units[-1] += "\n"  # so that the corpus can wrap around onto itself
    return tuple(units)


def haystack_sentence_units(
    task: str, essay_source: EssaySource = "ruler_json", data_dir: str | Path | None = None
) -> tuple[str, ...]:
    """One cycle of ``task``'s haystack as sentences with trailing whitespace (the haystack repeats it)."""
    spec = get_sniah_task(task)
    if spec.haystack == "noise":
        return tuple(sentence + " " for sentence in NOISE_SENTENCES)
    return _essay_units(load_paul_graham_essays(essay_source, data_dir))


# ------------------------------------------------------------------------------------------------ values


def random_key(rng: np.random.Generator) -> str:
    """A random ``"<adjective>-<noun>"`` key."""
    adjective = KEY_ADJECTIVES[int(rng.integers(len(KEY_ADJECTIVES)))]
    noun = KEY_NOUNS[int(rng.integers(len(KEY_NOUNS)))]
    return f"{adjective}-{noun}"


def random_value(value_kind: ValueKind, rng: np.random.Generator) -> str:
    """A 7-digit number (no leading zero) or a uuid4 string, drawn from ``rng`` (so reproducible)."""
    if value_kind == "number":
        return str(int(rng.integers(1_000_000, 10_000_000)))
    if value_kind == "uuid":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    raise ValueError(f"unknown value kind {value_kind!r}; expected 'number' or 'uuid'")


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class _Layout:
    prefix: str  # instruction line + "\n", or ""
    needle: str
    query: str
    answer: str


def _layout(spec: SNIAHTaskSpec, key: str, value: str, include_instruction: bool) -> _Layout:
    prefix = INSTRUCTION_TEMPLATE.format(plural=spec.plural) + "\n" if include_instruction else ""
    return _Layout(
        prefix=prefix,
        needle=NEEDLE_TEMPLATE.format(plural=spec.plural, key=key, value=value),
        query=QUERY_TEMPLATE.format(singular=spec.singular, key=key),
        answer=value,
    )


def _assemble(layout: _Layout, before: str, after: str) -> tuple[str, int]:
    """The prompt text and the character offset of the needle in it."""
    context = (before + layout.needle + " " + after).rstrip()
    prompt = layout.prefix + context + "\n" + layout.query
    return prompt, len(layout.prefix) + len(before)


def minimum_sniah_length(
    task: str, tokenizer: Tokenizer | None = None, include_instruction: bool = True, key: str | None = None
) -> int:
    """Tokens needed by a prompt with an empty haystack plus its answer (any shorter target is refused).

    ``key`` defaults to the longest possible key (longest adjective and longest noun).
    """
    spec = get_sniah_task(task)
    tok = default_tokenizer(tokenizer)
    value = "1234567" if spec.value_kind == "number" else str(uuid.UUID(int=0, version=4))
    if key is None:
        key = f"{max(KEY_ADJECTIVES, key=len)}-{max(KEY_NOUNS, key=len)}"
    layout = _layout(spec, key, value, include_instruction)
    prompt, _ = _assemble(layout, "", "")
    return count_tokens(tok, prompt) + count_tokens(tok, " " + value)


def _build_sample(
    spec: SNIAHTaskSpec,
    haystack: CycledUnits,
    target_length: int,
    key: str,
    value: str,
    depth_percent: float,
    include_instruction: bool,
) -> tuple[str, list[int], list[int], int, float]:
    """Fit the haystack to ``target_length`` and insert the needle; see :func:`build_sniah_prompt`."""
    tok = haystack.tokenizer
    layout = _layout(spec, key, value, include_instruction)
    answer_ids = tok.encode(" " + value)
    # The prompt without haystack, keeping the space that follows the needle when text comes after it.
    fixed_text = layout.prefix + layout.needle + " \n" + layout.query
    budget = target_length - count_tokens(tok, fixed_text) - len(answer_ids)
    if budget < 0:
        raise ValueError(
            f"target_length {target_length} is too small for {spec.name}: the instruction, needle, query and "
            f"answer alone need {target_length - budget} tokens"
        )
    # Whole sentences first, then the next sentence cut at a word boundary (estimated per-sentence counts).
    num_units, used = 0, 0
    while used + max(1, haystack.count(num_units)) <= budget:
        used += max(1, haystack.count(num_units))
        num_units += 1

    def counter(text: str) -> int:  # tokens of a piece inside a longer text (no BOS/EOS)
        return count_tokens(tok, text) - haystack.special_tokens_per_encoding

    partial = longest_fitting_word_prefix(haystack.unit(num_units), budget - used, counter)
    offsets = np.cumsum([0] + [haystack.count(i) for i in range(num_units)])
    total = used + (counter(partial) if partial else 0)
    boundary = int(np.argmin(np.abs(offsets - depth_percent / 100.0 * total)))

    while True:  # the per-sentence counts are exact for bytes; re-check with the real encoding anyway
        units = [haystack.unit(i) for i in range(num_units)]
        before, after = "".join(units[:boundary]), "".join(units[boundary:]) + partial
        prompt, needle_offset = _assemble(layout, before, after)
        prompt_ids = tok.encode(prompt)
        if len(prompt_ids) + len(answer_ids) <= target_length:
            break
        overflow = len(prompt_ids) + len(answer_ids) - target_length
        if partial:
            partial = longest_fitting_word_prefix(partial, counter(partial) - overflow, counter)
        elif num_units > 0:
            num_units -= 1
            boundary = min(boundary, num_units)
        else:  # pragma: no cover - only for tokenizers whose counts are not monotone in the text
            raise ValueError(f"cannot fit {spec.name} into target_length {target_length}")
    needle_token_position = count_tokens(tok, prompt[:needle_offset])
    haystack_tokens = int(offsets[num_units]) + (counter(partial) if partial else 0)
    actual_depth = 100.0 * float(offsets[boundary]) / haystack_tokens if haystack_tokens else 0.0
    return prompt, prompt_ids, answer_ids, needle_token_position, actual_depth


def build_sniah_prompt(
    task: str,
    target_length: int,
    key: str,
    value: str,
    depth_percent: float,
    *,
    tokenizer: Tokenizer | None = None,
    include_instruction: bool = True,
    essay_source: EssaySource = "ruler_json",
    data_dir: str | Path | None = None,
    sample_index: int = 0,
    seed: int = 0,
) -> SNIAHSample:
    """Build one S-NIAH sample for a given key, value and depth (no randomness involved).

    Raises:
        ValueError: if ``target_length`` cannot hold the instruction, needle, query and answer, or if
            ``depth_percent`` is outside [0, 100].
    """
    spec = get_sniah_task(task)
    if not 0.0 <= depth_percent <= 100.0:
        raise ValueError(f"depth_percent must be in [0, 100], got {depth_percent}")
    tok = default_tokenizer(tokenizer)
    haystack = CycledUnits(haystack_sentence_units(spec.name, essay_source, data_dir), tok)
    return _sample_from_parts(
        spec, haystack, target_length, key, value, depth_percent, include_instruction, sample_index, seed
    )


def _sample_from_parts(
    spec: SNIAHTaskSpec,
    haystack: CycledUnits,
    target_length: int,
    key: str,
    value: str,
    depth_percent: float,
    include_instruction: bool,
    sample_index: int,
    seed: int,
) -> SNIAHSample:
    prompt, prompt_ids, answer_ids, needle_position, actual_depth = _build_sample(
        spec, haystack, target_length, key, value, depth_percent, include_instruction
    )
    return SNIAHSample(
        task=spec.name,
        sample_index=sample_index,
        seed=seed,
        target_length=target_length,
        depth_percent=float(depth_percent),
        actual_depth_percent=actual_depth,
        key=key,
        answer=value,
        needle=NEEDLE_TEMPLATE.format(plural=spec.plural, key=key, value=value),
        prompt=prompt,
        prompt_ids=prompt_ids,
        answer_ids=answer_ids,
        needle_token_position=needle_position,
    )


def _validate_depths(depths: Sequence[float] | None) -> tuple[float, ...]:
    chosen = RULER_DEPTHS if depths is None else tuple(float(d) for d in depths)
    if not chosen:
        raise ValueError("depths must not be empty")
    bad = [d for d in chosen if not 0.0 <= d <= 100.0]
    if bad:
        raise ValueError(f"depths must be percentages in [0, 100]; got {bad}")
    return chosen


def generate_sniah_samples(
    task: str,
    target_length: int,
    num_samples: int,
    *,
    seed: int = 42,
    tokenizer: Tokenizer | None = None,
    depths: Sequence[float] | None = None,
    depth_assignment: DepthAssignment = "random",
    include_instruction: bool = True,
    essay_source: EssaySource = "ruler_json",
    data_dir: str | Path | None = None,
) -> list[SNIAHSample]:
    """Generate ``num_samples`` S-NIAH samples of one task at one context length.

    Deterministic: the random stream is ``numpy.random.default_rng([seed, task number, target_length])``,
    so each (task, length) group is the same whatever other groups are generated alongside it.

    Args:
        task: ``"s_niah_1"``, ``"s_niah_2"`` or ``"s_niah_3"``.
        target_length: context length in the tokenizer's tokens (prompt + answer fit in it).
        num_samples: how many samples (RULER/Titans use 500 per task and length).
        seed: base seed.
        tokenizer: the model's tokenizer; bytes by default.
        depths: allowed needle depths in percent; default the 40 :data:`RULER_DEPTHS`.
        depth_assignment: ``"random"`` draws each sample's depth uniformly from ``depths``; ``"cycle"``
            goes through ``depths`` in order (balanced, for depth-by-length heatmaps).
        include_instruction: prepend RULER's "Some special magic ... are hidden" line.
        essay_source: which Paul Graham essay file S-NIAH-2/3 use.
        data_dir: where the data files are.

    Raises:
        ValueError: on an unknown task, a negative ``num_samples``, bad depths, or a ``target_length`` too
            small to hold the needle, query and answer.
    """
    spec = get_sniah_task(task)
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    depth_choices = _validate_depths(depths)
    if depth_assignment not in ("random", "cycle"):
        raise ValueError(f"depth_assignment must be 'random' or 'cycle', got {depth_assignment!r}")
    tok = default_tokenizer(tokenizer)
    minimum = minimum_sniah_length(spec.name, tok, include_instruction)
    if target_length < minimum:
        raise ValueError(
            f"target_length {target_length} is too small for {spec.name}: the instruction, needle, query and "
            f"answer alone need up to {minimum} tokens"
        )
    haystack = CycledUnits(haystack_sentence_units(spec.name, essay_source, data_dir), tok)
    rng = np.random.default_rng([seed, spec.number, target_length])
    samples: list[SNIAHSample] = []
    for index in range(num_samples):
        key = random_key(rng)
        if depth_assignment == "random":
            depth = depth_choices[int(rng.integers(len(depth_choices)))]
        else:
            depth = depth_choices[index % len(depth_choices)]
        for _attempt in range(100):  # the value must occur in the prompt only inside the needle
            value = random_value(spec.value_kind, rng)
            sample = _sample_from_parts(
                spec, haystack, target_length, key, value, depth, include_instruction, index, seed
            )
            if sample.prompt.count(value) == 1:
                break
        else:  # pragma: no cover - astronomically unlikely
            raise RuntimeError(f"could not draw a value absent from the {spec.name} haystack")
        samples.append(sample)
    return samples


def generate_sniah_suite(
    tasks: Sequence[str] = SNIAH_TASK_NAMES,
    lengths: Sequence[int] = (2048, 4096, 8192, 16384),
    num_samples: int = 500,
    *,
    seed: int = 42,
    tokenizer: Tokenizer | None = None,
    depths: Sequence[float] | None = None,
    depth_assignment: DepthAssignment = "random",
    include_instruction: bool = True,
    essay_source: EssaySource = "ruler_json",
    data_dir: str | Path | None = None,
) -> list[SNIAHSample]:
    """All samples for every (task, length), in task-major order; see :func:`generate_sniah_samples`.

    Each (task, length) group is deterministic on its own (its stream depends only on seed, task, length).
    """
    samples: list[SNIAHSample] = []
    for task in tasks:
        for length in lengths:
            samples.extend(
                generate_sniah_samples(
                    task,
                    length,
                    num_samples,
                    seed=seed,
                    tokenizer=tokenizer,
                    depths=depths,
                    depth_assignment=depth_assignment,
                    include_instruction=include_instruction,
                    essay_source=essay_source,
                    data_dir=data_dir,
                )
            )
    return samples
