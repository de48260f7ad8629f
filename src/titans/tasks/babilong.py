"""BABILong QA1-QA5 (TITANS.md section 5): bAbI facts hidden in long background text.

Each bAbI question becomes one sample. Its story's facts, kept in order, are inserted at random sentence
boundaries of background text from held-out books (the Gutenberg ``test`` split by default), which fills
the context up to the target length in the tokenizer's own tokens; then the question follows::

    <background sentences with the facts in between, one space between sentences>
    Question: Where is Mary?
    Answer:

and the expected continuation is ``" bathroom"``. ``len(prompt_ids) + len(answer_ids) <= target_length``,
with the background filling the rest: whole sentences, then one more sentence cut at a word boundary.
``target_length == 0`` ("0K") means no background at all: the facts and the question only, whatever their
length. Background for a sample is a run of consecutive sentences starting at a random sentence of the
background corpus (wrapping around at its end).

Sentences of the background are split simply (after ``. ! ?`` plus optional closing quotes, before
whitespace), with all whitespace collapsed to single spaces.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import lzma
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from titans.tasks.babi import BabiQuestion, BabiSize, BabiSplit, load_babi_task, parse_babi_task_number
from titans.tasks.data_files import GUTENBERG_JSONL, find_data_file
from titans.tasks.text_utils import (
    CycledUnits,
    PromptRecord,
    count_tokens,
    default_tokenizer,
    longest_fitting_word_prefix,
    split_sentences,
)
from titans.tokenizer import Tokenizer

BABILONG_TASKS: tuple[int, ...] = (1, 2, 3, 4, 5)
"""The bAbI tasks used by BABILong QA1-QA5."""

QUESTION_PREFIX = "\nQuestion: "
ANSWER_PREFIX = "\nAnswer:"
TooLongPolicy = Literal["error", "skip"]

_SPLIT_FIELD = re.compile(rb'"split"\s*:\s*"([^"]*)"')


@dataclass(frozen=True)
class BabilongSample(PromptRecord):
    """One BABILong prompt.

    Attributes:
        task: ``"qa1"`` .. ``"qa5"``.
        sample_index: index within its (task, target_length) group.
        seed: the base seed the group was generated with.
        target_length: context length in tokens (0: no background).
        question: the bAbI question.
        answer: the gold answer.
        facts: the story's facts in the order they appear in the prompt.
        supporting_facts: the supporting facts' texts.
        fact_char_offsets: character offset of each fact in ``prompt``.
        fact_depth_percents: each fact's offset as a percentage of the context's characters.
        num_background_sentences: background sentences used (a cut last sentence counts as one).
        source_story_index, source_line_id: where the question is in its bAbI file.
        prompt: the full prompt, ending with ``"Answer:"``.
        prompt_ids: ``tokenizer.encode(prompt)``.
        answer_ids: ``tokenizer.encode(" " + answer)``, the expected continuation (with whatever tokens
            the tokenizer adds to every encoding, e.g. BOS; none for bytes).
    """

    task: str
    sample_index: int
    seed: int
    target_length: int
    question: str
    answer: str
    facts: list[str]
    supporting_facts: list[str]
    fact_char_offsets: list[int]
    fact_depth_percents: list[float]
    num_background_sentences: int
    source_story_index: int
    source_line_id: int
    prompt: str = field(repr=False)
    prompt_ids: list[int] = field(repr=False)
    answer_ids: list[int] = field(repr=False)


# ------------------------------------------------------------------------------------------- background


@functools.lru_cache(maxsize=8)
def _read_gutenberg_split(path: str, split: str, max_chars: int | None) -> str:
    books: list[str] = []
    total = 0
    wanted = split.encode("utf-8")
    with lzma.open(path, "rb") as handle:
        for line in handle:
            match = _SPLIT_FIELD.search(line, 0, 4096)
            if match is not None and match.group(1) != wanted:
                continue  # skip other splits without decoding or parsing their (large) JSON
            record = json.loads(line.decode("utf-8"))
            if record.get("split") != split:
                continue
            text = str(record["text"]).strip()
            books.append(text)
            total += len(text) + 2
            if max_chars is not None and total >= max_chars:
                break
    if not books:
        raise ValueError(f"{path}: no books with split {split!r}")
    joined = "\n\n".join(books)
    return joined if max_chars is None else joined[:max_chars]


def load_gutenberg_text(split: str = "test", max_chars: int | None = None, data_dir: str | Path | None = None) -> str:
    """The books of one split of the Gutenberg corpus, joined by blank lines, in file order.

    The ``jsonl.xz`` is streamed and reading stops once ``max_chars`` characters are collected (the text
    is then cut to exactly ``max_chars``); ``None`` reads the whole split. Cached per process.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"Gutenberg split must be 'train', 'valid' or 'test', got {split!r}")
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be positive or None, got {max_chars}")
    return _read_gutenberg_split(str(find_data_file(GUTENBERG_JSONL, data_dir)), split, max_chars)


@functools.lru_cache(maxsize=8)
def _sentences_of(text: str) -> tuple[str, ...]:
    return tuple(split_sentences(text))


def load_background_sentences(
    split: str = "test", max_chars: int | None = None, data_dir: str | Path | None = None
) -> tuple[str, ...]:
    """The background corpus as sentences (see :func:`load_gutenberg_text` for the arguments)."""
    return _sentences_of(load_gutenberg_text(split, max_chars, data_dir))


# ---------------------------------------------------------------------------------------------- samples


def _prompt_from_pieces(pieces: Sequence[str], question: str) -> tuple[str, list[int]]:
    """Join context pieces with single spaces; return the prompt and each piece's character offset."""
    offsets: list[int] = []
    position = 0
    for piece in pieces:
        offsets.append(position)
        position += len(piece) + 1
    context = " ".join(pieces)
    return context + QUESTION_PREFIX + question + ANSWER_PREFIX, offsets


def minimum_babilong_length(question: BabiQuestion, tokenizer: Tokenizer | None = None) -> int:
    """Tokens of the prompt without background plus the answer: the smallest non-zero target that fits."""
    tok = default_tokenizer(tokenizer)
    prompt, _ = _prompt_from_pieces(question.fact_texts, question.question)
    return count_tokens(tok, prompt) + count_tokens(tok, " " + question.answer)


def build_babilong_sample(
    question: BabiQuestion,
    target_length: int,
    background: CycledUnits,
    rng: np.random.Generator,
    *,
    sample_index: int = 0,
    seed: int = 0,
) -> BabilongSample:
    """Hide ``question``'s facts in background text so that prompt + answer fit ``target_length`` tokens.

    Args:
        question: the bAbI question.
        target_length: tokens; 0 means no background.
        background: background sentences (each unit a sentence followed by a space), with the tokenizer.
        rng: draws the background start sentence and the fact positions.
        sample_index, seed: recorded in the sample.

    Raises:
        ValueError: naming the length when the facts, question and answer alone exceed ``target_length``.
    """
    if target_length < 0:
        raise ValueError(f"target_length must be non-negative, got {target_length}")
    tok = background.tokenizer
    facts = list(question.fact_texts)
    answer_ids = tok.encode(" " + question.answer)
    background_units: list[str] = []
    partial = ""

    def counter(text: str) -> int:  # tokens of a piece inside a longer text (no BOS/EOS)
        return count_tokens(tok, text) - background.special_tokens_per_encoding

    insert_at: list[int] = [0] * len(facts)
    if target_length > 0:
        bare_prompt, _ = _prompt_from_pieces(facts, question.question)
        budget = target_length - count_tokens(tok, bare_prompt) - len(answer_ids)
        if budget < 0:
            raise ValueError(
                f"target_length {target_length} is too small for qa{question.task} story "
                f"{question.story_index} question at line {question.line_id}: its facts, question and "
                f"answer alone need {target_length - budget} tokens"
            )
        start = int(rng.integers(len(background)))
        used = 0
        while used + max(1, background.count(start + len(background_units))) <= budget:
            used += max(1, background.count(start + len(background_units)))
            background_units.append(background.unit(start + len(background_units)).strip())
        partial = longest_fitting_word_prefix(
            background.unit(start + len(background_units)).strip(),
            budget - used - 1,  # the space that joins it
            counter,
        )
        insert_at = sorted(int(i) for i in rng.integers(0, len(background_units) + 1, size=len(facts)))

    while True:
        pieces: list[str] = []
        fact_piece_indices: list[int] = []
        next_fact = 0
        for boundary in range(len(background_units) + 1):
            while next_fact < len(facts) and insert_at[next_fact] == boundary:
                fact_piece_indices.append(len(pieces))
                pieces.append(facts[next_fact])
                next_fact += 1
            if boundary < len(background_units):
                pieces.append(background_units[boundary])
        if partial:
            pieces.append(partial)
        prompt, offsets = _prompt_from_pieces(pieces, question.question)
        prompt_ids = tok.encode(prompt)
        if target_length == 0 or len(prompt_ids) + len(answer_ids) <= target_length:
            break
        # Per-sentence counts are exact for byte tokenizers; trim for tokenizers that merge across pieces.
        if partial:
            overflow = len(prompt_ids) + len(answer_ids) - target_length
            partial = longest_fitting_word_prefix(partial, counter(partial) - overflow, counter)
        elif background_units:
            background_units.pop()
            insert_at = [min(i, len(background_units)) for i in insert_at]
        else:  # pragma: no cover - only for tokenizers whose counts are not monotone in the text
            raise ValueError(f"cannot fit qa{question.task} into target_length {target_length}")
    context_chars = max(1, offsets[-1] + len(pieces[-1])) if pieces else 1
    fact_offsets = [offsets[i] for i in fact_piece_indices]
    return BabilongSample(
        task=f"qa{question.task}",
        sample_index=sample_index,
        seed=seed,
        target_length=target_length,
        question=question.question,
        answer=question.answer,
        facts=facts,
        supporting_facts=list(question.supporting_facts),
        fact_char_offsets=fact_offsets,
        fact_depth_percents=[100.0 * offset / context_chars for offset in fact_offsets],
        num_background_sentences=len(background_units) + (1 if partial else 0),
        source_story_index=question.story_index,
        source_line_id=question.line_id,
        prompt=prompt,
        prompt_ids=prompt_ids,
        answer_ids=answer_ids,
    )


def generate_babilong_samples(
    task: int | str,
    target_length: int,
    num_samples: int,
    *,
    seed: int = 42,
    tokenizer: Tokenizer | None = None,
    babi_split: BabiSplit = "test",
    babi_size: BabiSize = "1k",
    background_split: str = "test",
    background_max_chars: int | None = None,
    on_too_long: TooLongPolicy = "error",
    questions: Sequence[BabiQuestion] | None = None,
    background_sentences: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
) -> list[BabilongSample]:
    """Generate BABILong samples of one task at one length.

    The questions are the first ``num_samples`` of the bAbI file, in file order (the same questions at
    every length, so lengths are comparable). The random stream is
    ``numpy.random.default_rng([seed, task, target_length])``: deterministic, and each (task, length)
    group is independent of the others. Samples also depend on the background corpus, i.e. on
    ``background_split`` and ``background_max_chars``.

    Args:
        task: 1..5 (any bAbI task 1..20 works) or ``"qa1"``...
        target_length: context length in the tokenizer's tokens; 0 = no background.
        num_samples: how many samples (fewer if the file has fewer questions).
        seed: base seed.
        tokenizer: the model's tokenizer; bytes by default.
        babi_split, babi_size: which bAbI file the questions come from.
        background_split: Gutenberg split of the background books (held-out ``"test"`` by default).
        background_max_chars: read at most this many characters of background (``None``: the whole split).
        on_too_long: when a story's facts alone exceed ``target_length``: ``"error"`` raises ValueError,
            ``"skip"`` moves on to the next question (so the group still gets ``num_samples`` if it can).
        questions: use these questions instead of reading the bAbI archive.
        background_sentences: use these sentences instead of reading the Gutenberg corpus.
        data_dir: where the data files are.
    """
    number = parse_babi_task_number(task)
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    if target_length < 0:
        raise ValueError(f"target_length must be non-negative, got {target_length}")
    if on_too_long not in ("error", "skip"):
        raise ValueError(f"on_too_long must be 'error' or 'skip', got {on_too_long!r}")
    tok = default_tokenizer(tokenizer)
    pool = list(questions) if questions is not None else load_babi_task(number, babi_split, babi_size, data_dir)
    if target_length > 0 and background_sentences is None:
        background_sentences = load_background_sentences(background_split, background_max_chars, data_dir)
    if target_length > 0 and not background_sentences:
        raise ValueError(f"target_length {target_length} needs background sentences, but none were given")
    background = CycledUnits([s + " " for s in (background_sentences or ("",))], tok)
    rng = np.random.default_rng([seed, number, target_length])
    samples: list[BabilongSample] = []
    for question in pool:
        if len(samples) >= num_samples:
            break
        if question.task != number:  # e.g. questions parsed from text without a task number
            question = dataclasses.replace(question, task=number)
        if on_too_long == "skip" and 0 < target_length < minimum_babilong_length(question, tok):
            continue
        samples.append(
            build_babilong_sample(question, target_length, background, rng, sample_index=len(samples), seed=seed)
        )
    return samples


def generate_babilong_suite(
    tasks: Sequence[int | str] = BABILONG_TASKS,
    lengths: Sequence[int] = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
    num_samples: int = 100,
    *,
    seed: int = 42,
    tokenizer: Tokenizer | None = None,
    babi_split: BabiSplit = "test",
    babi_size: BabiSize = "1k",
    background_split: str = "test",
    background_max_chars: int | None = None,
    on_too_long: TooLongPolicy = "skip",
    data_dir: str | Path | None = None,
) -> list[BabilongSample]:
    """All samples for every (task, length), task-major; see :func:`generate_babilong_samples`.

    ``on_too_long`` defaults to ``"skip"`` here: qa2-qa5 stories can hold hundreds of facts (several
    thousand bytes), more than the shortest lengths allow.
    """
    background: Sequence[str] | None = None
    if any(length > 0 for length in lengths):
        background = load_background_sentences(background_split, background_max_chars, data_dir)
    samples: list[BabilongSample] = []
    for task in tasks:
        for length in lengths:
            samples.extend(
                generate_babilong_samples(
                    task,
                    length,
                    num_samples,
                    seed=seed,
                    tokenizer=tokenizer,
                    babi_split=babi_split,
                    babi_size=babi_size,
                    on_too_long=on_too_long,
                    background_sentences=background,
                    data_dir=data_dir,
                )
            )
    return samples
