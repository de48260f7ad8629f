"""BABILong generation: facts in order at sentence boundaries, sizing in tokens, determinism."""

from __future__ import annotations

import re
import zlib

import pytest

from titans.tasks.babi import BabiQuestion, load_babi_task, parse_babi_lines
from titans.tasks.babilong import (
    ANSWER_PREFIX,
    QUESTION_PREFIX,
    BabilongSample,
    generate_babilong_samples,
    generate_babilong_suite,
    load_background_sentences,
    load_gutenberg_text,
    minimum_babilong_length,
)
from titans.tasks.data_files import BABI_ARCHIVE, GUTENBERG_JSONL, data_file_available
from titans.tokenizer import ByteTokenizer

needs_babi = pytest.mark.skipif(
    not data_file_available(BABI_ARCHIVE),
    reason=f"shared data file {BABI_ARCHIVE} not found (set TITANS_DATA_DIR or provide ../shared/data)",
)
needs_gutenberg = pytest.mark.skipif(
    not data_file_available(GUTENBERG_JSONL),
    reason=f"shared data file {GUTENBERG_JSONL} not found (set TITANS_DATA_DIR or provide ../shared/data)",
)

BACKGROUND_CHARS = 250_000  # streamed from the test split; enough for the lengths below

STORY = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
"""

SYNTHETIC_BACKGROUND = tuple(
    f"Sentence number {i} talks about the weather in town {i % 17} and nothing else." for i in range(400)
)


class WordTokenizer:
    """A toy subword-like tokenizer (words, punctuation, whitespace runs); not additive over concatenation."""

    vocab_size = 65536

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(piece.encode()) % self.vocab_size for piece in re.findall(r"\w+|[^\w\s]|\s+", text)]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


@pytest.fixture(scope="module")
def story_questions() -> list[BabiQuestion]:
    return parse_babi_lines(STORY.splitlines(), task=1)


def _context(sample: BabilongSample) -> str:
    return sample.prompt[: sample.prompt.rindex(QUESTION_PREFIX)]


def _check_sample(sample: BabilongSample, background: tuple[str, ...] | None = None) -> None:
    tokenizer = ByteTokenizer()
    assert sample.prompt_ids == tokenizer.encode(sample.prompt)
    assert sample.answer_ids == tokenizer.encode(" " + sample.answer)
    assert sample.prompt.endswith(QUESTION_PREFIX + sample.question + ANSWER_PREFIX)
    total = len(sample.prompt_ids) + len(sample.answer_ids)
    if sample.target_length > 0:
        assert 0.9 * sample.target_length <= total <= sample.target_length
    context = _context(sample)
    # every fact is present, in the story's order, at the recorded offsets, between whole sentences
    offsets = []
    for fact, offset in zip(sample.facts, sample.fact_char_offsets):
        assert context[offset : offset + len(fact)] == fact
        assert offset == 0 or context[offset - 1] == " "
        assert offset + len(fact) == len(context) or context[offset + len(fact)] == " "
        offsets.append(offset)
    assert offsets == sorted(offsets) and len(offsets) == len(sample.facts)
    assert all(s in sample.facts for s in sample.supporting_facts)
    if background is not None:  # what remains is background sentences (the last one may be cut)
        remainder = context
        for fact, offset in sorted(zip(sample.facts, sample.fact_char_offsets), key=lambda p: -p[1]):
            remainder = remainder[:offset] + remainder[offset + len(fact) + 1 :]
        pieces = [piece for piece in re.split(r"(?<=\.) ", remainder.strip()) if piece]
        assert all(piece in background for piece in pieces[:-1])
        assert any(sentence.startswith(pieces[-1]) for sentence in background)


def test_zero_length_means_no_background(story_questions) -> None:
    samples = generate_babilong_samples(1, 0, 5, questions=story_questions)
    assert len(samples) == 2
    first = samples[0]
    assert first.prompt == ("Mary moved to the bathroom. John went to the hallway.\nQuestion: Where is Mary?\nAnswer:")
    assert first.answer == "bathroom" and first.num_background_sentences == 0
    assert first.supporting_facts == ["Mary moved to the bathroom."]
    _check_sample(samples[1])


@pytest.mark.parametrize("target_length", [512, 2048])
def test_synthetic_background_format_and_sizing(story_questions, target_length: int) -> None:
    samples = generate_babilong_samples(
        1, target_length, 2, questions=story_questions, background_sentences=SYNTHETIC_BACKGROUND, seed=3
    )
    assert len(samples) == 2
    for sample in samples:
        assert sample.task == "qa1" and sample.target_length == target_length
        assert sample.num_background_sentences > 0
        _check_sample(sample, SYNTHETIC_BACKGROUND)


def test_determinism_and_seeds(story_questions) -> None:
    def make(seed: int) -> list[dict]:
        return [
            s.to_dict()
            for s in generate_babilong_samples(
                1, 1024, 2, questions=story_questions, background_sentences=SYNTHETIC_BACKGROUND, seed=seed
            )
        ]

    assert make(1) == make(1)
    assert make(1) != make(2)


def test_too_long_story_error_names_the_length(story_questions) -> None:
    minimum = minimum_babilong_length(story_questions[1])
    with pytest.raises(ValueError, match=rf"target_length {minimum - 1}\b"):
        generate_babilong_samples(
            1, minimum - 1, 2, questions=story_questions, background_sentences=SYNTHETIC_BACKGROUND
        )
    skipped = generate_babilong_samples(
        1,
        minimum - 1,
        2,
        questions=story_questions,
        background_sentences=SYNTHETIC_BACKGROUND,
        on_too_long="skip",
    )
    assert [s.question for s in skipped] == ["Where is Mary?"]
    exact = generate_babilong_samples(
        1, minimum, 2, questions=story_questions[1:], background_sentences=SYNTHETIC_BACKGROUND
    )
    assert len(exact[0].prompt_ids) + len(exact[0].answer_ids) <= minimum


def test_bad_arguments(story_questions) -> None:
    with pytest.raises(ValueError, match="bAbI task"):
        generate_babilong_samples(0, 0, 1, questions=story_questions)
    with pytest.raises(ValueError, match="non-negative"):
        generate_babilong_samples(1, -5, 1, questions=story_questions)
    with pytest.raises(ValueError, match="on_too_long"):
        generate_babilong_samples(1, 0, 1, questions=story_questions, on_too_long="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background"):
        generate_babilong_samples(1, 1024, 1, questions=story_questions, background_sentences=())


def test_non_byte_tokenizer_is_respected(story_questions) -> None:
    tokenizer = WordTokenizer()
    for sample in generate_babilong_samples(
        1, 700, 2, questions=story_questions, background_sentences=SYNTHETIC_BACKGROUND, tokenizer=tokenizer
    ):
        total = len(sample.prompt_ids) + len(sample.answer_ids)
        assert 0.9 * 700 <= total <= 700
        assert sample.prompt_ids == tokenizer.encode(sample.prompt)


@pytest.fixture(scope="module")
def gutenberg_background() -> tuple[str, ...]:
    if not data_file_available(GUTENBERG_JSONL):
        pytest.skip(f"shared data file {GUTENBERG_JSONL} not found (set TITANS_DATA_DIR)")
    return load_background_sentences("test", max_chars=BACKGROUND_CHARS)


@needs_gutenberg
def test_gutenberg_test_split_is_streamed(gutenberg_background) -> None:
    text = load_gutenberg_text("test", max_chars=BACKGROUND_CHARS)
    assert len(text) == BACKGROUND_CHARS
    assert text.startswith("THE LADY OF THE SHROUD")  # the first book of the test split
    assert len(gutenberg_background) > 1000
    assert all("\n" not in sentence and sentence == sentence.strip() for sentence in gutenberg_background)
    with pytest.raises(ValueError, match="split"):
        load_gutenberg_text("dev")


@needs_babi
@needs_gutenberg
@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_real_tasks_with_gutenberg_background(task: int, gutenberg_background) -> None:
    samples = generate_babilong_samples(
        task, 4096, 3, background_sentences=gutenberg_background, on_too_long="skip", seed=1
    )
    assert len(samples) == 3
    questions = load_babi_task(task, "test")
    for sample in samples:
        _check_sample(sample)
        assert sample.task == f"qa{task}"
        source = next(
            q for q in questions if (q.story_index, q.line_id) == (sample.source_story_index, sample.source_line_id)
        )
        assert list(source.fact_texts) == sample.facts and source.answer == sample.answer
        assert sample.fact_depth_percents == sorted(sample.fact_depth_percents)
        assert min(sample.fact_depth_percents) >= 0.0 and max(sample.fact_depth_percents) < 100.0


@needs_babi
@needs_gutenberg
def test_long_lengths_up_to_128k(gutenberg_background) -> None:
    (sample,) = generate_babilong_samples(1, 131072, 1, background_sentences=gutenberg_background, seed=0)
    _check_sample(sample)
    # the facts are spread over the whole context, not bunched at one end
    assert sample.fact_depth_percents[-1] - sample.fact_depth_percents[0] > 10.0


@needs_babi
@needs_gutenberg
def test_suite_is_deterministic_and_groups_independent() -> None:
    suite = generate_babilong_suite([1, 2], [0, 1024], 2, seed=4, background_max_chars=BACKGROUND_CHARS)
    again = generate_babilong_suite([1, 2], [0, 1024], 2, seed=4, background_max_chars=BACKGROUND_CHARS)
    assert [s.to_dict() for s in suite] == [s.to_dict() for s in again]
    groups = [(s.task, s.target_length) for s in suite]
    assert sorted(set(groups)) == [("qa1", 0), ("qa1", 1024), ("qa2", 0), ("qa2", 1024)]
    alone = generate_babilong_samples(2, 1024, 2, seed=4, background_max_chars=BACKGROUND_CHARS, on_too_long="skip")
    assert [s.to_dict() for s in suite if (s.task, s.target_length) == ("qa2", 1024)] == [s.to_dict() for s in alone]
    # same questions at every length
    assert [s.question for s in suite if s.task == "qa1" and s.target_length == 0] == [
        s.question for s in suite if s.task == "qa1" and s.target_length == 1024
    ]
