"""RULER S-NIAH-1/2/3 generation: format, sizing, depth, determinism."""

from __future__ import annotations

import re
import uuid
import zlib

import pytest

from titans.tasks.data_files import PAUL_GRAHAM_NIAH_ARCHIVE, PAUL_GRAHAM_RULER_JSON, data_file_available
from titans.tasks.sniah import (
    NOISE_SENTENCES,
    RULER_DEPTHS,
    SNIAHSample,
    build_sniah_prompt,
    generate_sniah_samples,
    generate_sniah_suite,
    get_sniah_task,
    haystack_sentence_units,
    load_paul_graham_essays,
    minimum_sniah_length,
)
from titans.tokenizer import ByteTokenizer

needs_essays = pytest.mark.skipif(
    not data_file_available(PAUL_GRAHAM_RULER_JSON),
    reason=f"shared data file {PAUL_GRAHAM_RULER_JSON} not found (set TITANS_DATA_DIR or provide ../shared/data)",
)

QUERY_END = "mentioned in the provided text is"


class WordTokenizer:
    """A toy subword-like tokenizer (words, punctuation, whitespace runs); not additive over concatenation."""

    vocab_size = 65536

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(piece.encode()) % self.vocab_size for piece in re.findall(r"\w+|[^\w\s]|\s+", text)]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class BosByteTokenizer:
    """Bytes plus a BOS token (256) at the start of every encoding, like many subword tokenizers."""

    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return [256, *text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8")


def _haystack_bounds(sample: SNIAHSample) -> tuple[int, int]:
    """Character span of the haystack (with the needle) inside the prompt."""
    start = sample.prompt.index("\n") + 1  # after the instruction line
    end = sample.prompt.rindex("\nWhat is the special magic")
    return start, end


def _check_sample(sample: SNIAHSample, target_length: int, unit_lengths: list[int]) -> None:
    tokenizer = ByteTokenizer()
    spec = get_sniah_task(sample.task)
    # sizing
    total = len(sample.prompt_ids) + len(sample.answer_ids)
    assert total <= target_length
    assert total >= 0.9 * target_length
    assert sample.prompt_ids == tokenizer.encode(sample.prompt)
    assert sample.answer_ids == tokenizer.encode(" " + sample.answer)
    # format: needle once, value only inside the needle, query at the end
    assert sample.needle == f"One of the special magic {spec.plural} for {sample.key} is: {sample.answer}."
    assert sample.prompt.count(sample.needle) == 1
    assert sample.prompt.count(sample.answer) == 1
    assert sample.prompt.endswith(
        f"What is the special magic {spec.singular} for {sample.key} mentioned in the provided text? "
        f"The special magic {spec.singular} for {sample.key} {QUERY_END}"
    )
    if spec.value_kind == "number":
        assert re.fullmatch(r"[1-9]\d{6}", sample.answer)
    else:
        assert uuid.UUID(sample.answer).version == 4 and str(uuid.UUID(sample.answer)) == sample.answer
    # needle token position (bytes: exact)
    position = sample.needle_token_position
    needle_ids = tokenizer.encode(sample.needle)
    assert sample.prompt_ids[position : position + len(needle_ids)] == needle_ids
    # the needle sits at a sentence boundary, at the requested depth within one sentence
    start, end = _haystack_bounds(sample)
    needle_start = sample.prompt.index(sample.needle)
    before = sample.prompt[start:needle_start]
    assert before == "" or re.search(r"[.!?][\"'”’)\]]*\s+$", before)
    haystack_chars = (end - start) - len(sample.needle) - 1
    measured_depth = 100.0 * (needle_start - start) / haystack_chars
    tolerance = 100.0 * max(unit_lengths) / haystack_chars + 0.5
    assert abs(measured_depth - sample.depth_percent) <= tolerance
    assert abs(measured_depth - sample.actual_depth_percent) <= 0.5


def test_forty_depths() -> None:
    assert len(RULER_DEPTHS) == 40
    assert RULER_DEPTHS[0] == 0.0 and RULER_DEPTHS[-1] == 100.0


@pytest.mark.parametrize("target_length", [1024, 4096])
def test_s_niah_1_format_and_sizing(target_length: int) -> None:
    samples = generate_sniah_samples("s_niah_1", target_length, 12, seed=3)
    unit_lengths = [len(s) + 1 for s in NOISE_SENTENCES]
    for sample in samples:
        assert sample.task == "s_niah_1" and sample.target_length == target_length
        assert sample.depth_percent in RULER_DEPTHS
        _check_sample(sample, target_length, unit_lengths)
        start, end = _haystack_bounds(sample)
        haystack = sample.prompt[start:end].replace(sample.needle + " ", "")
        assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again." in (haystack)


def test_s_niah_1_deterministic_and_seed_dependent() -> None:
    first = generate_sniah_samples("s_niah_1", 1024, 5, seed=11)
    second = generate_sniah_samples("s_niah_1", 1024, 5, seed=11)
    other = generate_sniah_samples("s_niah_1", 1024, 5, seed=12)
    assert [s.to_dict() for s in first] == [s.to_dict() for s in second]
    assert [s.answer for s in first] != [s.answer for s in other]


def test_suite_groups_are_independent() -> None:
    suite = generate_sniah_suite(["s_niah_1"], [1024, 2048], 3, seed=5)
    alone = generate_sniah_samples("s_niah_1", 2048, 3, seed=5)
    assert [(s.task, s.target_length) for s in suite] == [("s_niah_1", 1024)] * 3 + [("s_niah_1", 2048)] * 3
    assert [s.to_dict() for s in suite[3:]] == [s.to_dict() for s in alone]


def test_depth_cycle_and_extreme_depths() -> None:
    samples = generate_sniah_samples("s_niah_1", 2048, 4, seed=0, depths=[0, 25, 50, 100], depth_assignment="cycle")
    assert [s.depth_percent for s in samples] == [0.0, 25.0, 50.0, 100.0]
    first, last = samples[0], samples[-1]
    assert first.prompt.split("\n")[1].startswith(first.needle)
    assert first.actual_depth_percent == 0.0
    assert last.actual_depth_percent > 97.0


def test_too_short_target_is_refused_naming_the_length() -> None:
    minimum = minimum_sniah_length("s_niah_1")
    with pytest.raises(ValueError, match=r"target_length 100\b"):
        generate_sniah_samples("s_niah_1", 100, 1)
    # the minimum itself works: an (almost) empty haystack
    samples = generate_sniah_samples("s_niah_1", minimum, 2, seed=1)
    assert all(len(s.prompt_ids) + len(s.answer_ids) <= minimum for s in samples)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown S-NIAH task"):
        generate_sniah_samples("s_niah_4", 1024, 1)
    with pytest.raises(ValueError, match="depths"):
        generate_sniah_samples("s_niah_1", 1024, 1, depths=[120])
    with pytest.raises(ValueError, match="depth_percent"):
        build_sniah_prompt("s_niah_1", 1024, "calm-otter", "1234567", -1.0)
    with pytest.raises(ValueError, match="num_samples"):
        generate_sniah_samples("s_niah_1", 1024, -1)


def test_build_prompt_is_pure() -> None:
    sample = build_sniah_prompt("S-NIAH-1", 1024, "calm-otter", "7654321", 50.0)
    assert sample.task == "s_niah_1" and sample.answer == "7654321" and sample.key == "calm-otter"
    assert sample == build_sniah_prompt("s_niah_1", 1024, "calm-otter", "7654321", 50.0)
    assert abs(sample.actual_depth_percent - 50.0) < 2.0


def test_a_non_byte_tokenizer_is_respected() -> None:
    tokenizer = WordTokenizer()
    for sample in generate_sniah_samples("s_niah_1", 2000, 3, seed=2, tokenizer=tokenizer):
        total = len(sample.prompt_ids) + len(sample.answer_ids)
        assert 0.9 * 2000 <= total <= 2000
        assert sample.prompt_ids == tokenizer.encode(sample.prompt)


def test_tokens_added_to_every_encoding_are_not_counted_per_sentence() -> None:
    tokenizer = BosByteTokenizer()
    for sample in generate_sniah_samples("s_niah_1", 2048, 3, seed=2, tokenizer=tokenizer):
        total = len(sample.prompt_ids) + len(sample.answer_ids)
        assert 2048 - 30 <= total <= 2048  # per-sentence BOS would leave ~100 tokens unused
        assert sample.prompt_ids[0] == 256 and sample.prompt_ids.count(256) == 1
        position = sample.needle_token_position
        assert tokenizer.decode(sample.prompt_ids[position:]).startswith(sample.needle)


@needs_essays
@pytest.mark.parametrize("task", ["s_niah_2", "s_niah_3"])
def test_essay_tasks_format_and_sizing(task: str) -> None:
    target_length = 4096
    units = haystack_sentence_units(task)
    prefix_units, covered = [], 0
    for unit in units:  # the sentences that can occur in a 4K haystack
        prefix_units.append(len(unit))
        covered += len(unit)
        if covered > target_length:
            break
    samples = generate_sniah_samples(task, target_length, 8, seed=1)
    for sample in samples:
        _check_sample(sample, target_length, prefix_units)
        assert "July 2010What hard liquor" in sample.prompt  # RULER's essays, from the start
    assert len({s.answer for s in samples}) == len(samples)


@needs_essays
def test_essay_tasks_long_context_and_determinism() -> None:
    first = generate_sniah_samples("s_niah_3", 32768, 2, seed=9)
    again = generate_sniah_samples("s_niah_3", 32768, 2, seed=9)
    assert [s.to_dict() for s in first] == [s.to_dict() for s in again]
    for sample in first:
        total = len(sample.prompt_ids) + len(sample.answer_ids)
        assert 0.9 * 32768 <= total <= 32768
        assert sample.prompt.count(sample.needle) == 1


@needs_essays
def test_essay_units_reproduce_the_corpus() -> None:
    text = load_paul_graham_essays()
    assert len(text) > 3_000_000
    units = haystack_sentence_units("s_niah_2")
    assert "".join(units).rstrip() == text.rstrip()


@pytest.mark.skipif(
    not data_file_available(PAUL_GRAHAM_NIAH_ARCHIVE), reason=f"shared data file {PAUL_GRAHAM_NIAH_ARCHIVE} not found"
)
def test_niah_tar_essays_load_and_wrap_around() -> None:
    text = load_paul_graham_essays("niah_tar")
    assert 600_000 < len(text) < 700_000
    target_length = 700_000  # longer than the 49 essays: the haystack starts over
    (sample,) = generate_sniah_samples("s_niah_2", target_length, 1, seed=0, essay_source="niah_tar")
    assert 0.9 * target_length <= len(sample.prompt_ids) + len(sample.answer_ids) <= target_length
    opening = text[:200]
    assert sample.prompt.count(opening) == 2
