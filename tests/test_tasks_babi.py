"""bAbI v1.2 parsing: the format on hand-written lines, and the real archive."""

from __future__ import annotations

import pytest

from titans.tasks.babi import (
    babi_answer_labels,
    babi_member_name,
    load_babi_task,
    parse_babi_lines,
    parse_babi_task_number,
)
from titans.tasks.data_files import BABI_ARCHIVE, data_file_available

needs_babi = pytest.mark.skipif(
    not data_file_available(BABI_ARCHIVE),
    reason=f"shared data file {BABI_ARCHIVE} not found (set TITANS_DATA_DIR or provide ../shared/data)",
)

HAND_WRITTEN = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra got the football there.
2 Sandra went to the garden.
3 Where is the football? \tgarden\t1 2
"""


def test_parse_hand_written_stories() -> None:
    questions = parse_babi_lines(HAND_WRITTEN.splitlines(), task=2)
    assert len(questions) == 3
    first, second, third = questions
    assert (first.story_index, first.line_id, first.question, first.answer) == (0, 3, "Where is Mary?", "bathroom")
    assert first.fact_texts == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert first.supporting_facts == ("Mary moved to the bathroom.",)
    # facts accumulate across questions of one story, questions themselves are not facts
    assert [f.line_id for f in second.facts] == [1, 2, 4]
    assert second.supporting_facts == ("Daniel went back to the hallway.",)
    # id 1 starts a new story
    assert third.story_index == 1
    assert third.fact_texts == ("Sandra got the football there.", "Sandra went to the garden.")
    assert third.supporting_fact_ids == (1, 2)
    assert third.task == 2
    assert third.to_dict()["supporting_facts"] == list(third.fact_texts)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["2 Mary moved to the bathroom."], "must start at id 1"),
        (["1 Mary moved.", "3 John moved."], "does not follow"),
        (["1 Mary moved.", "2 Where is Mary?\tbathroom\t5"], r"supporting fact ids \[5\]"),
        (["1 Mary moved.", "2 Where is Mary?\tbathroom\t2"], r"supporting fact ids \[2\]"),
        (["x Mary moved."], "expected '<id> <text>'"),
        (["1 Mary moved.", "2 Where is Mary?\t\t1"], "expected '<id> <question>"),
        (["1 Mary moved.", "2 Where is Mary?\tbathroom\tone"], "must be integers"),
    ],
)
def test_malformed_lines_are_refused(lines: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_babi_lines(lines, source="made-up.txt")


def test_task_numbers_and_member_names() -> None:
    assert parse_babi_task_number("qa3") == parse_babi_task_number(3) == parse_babi_task_number("3") == 3
    for bad in (0, 21, "qa", "qa21", True):
        with pytest.raises(ValueError):
            parse_babi_task_number(bad)  # type: ignore[arg-type]
    assert babi_member_name(1, "train", "1k") == "tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt"
    assert babi_member_name(5, "test", "10k") == "tasks_1-20_v1-2/en-10k/qa5_three-arg-relations_test.txt"
    assert babi_member_name(2, "valid", "1k") == "tasks_1-20_v1-2/en-valid/qa2_valid.txt"
    with pytest.raises(ValueError, match="split"):
        babi_member_name(1, "dev")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        babi_member_name(1, "test", "2k")  # type: ignore[arg-type]


@needs_babi
def test_qa1_train_real_file() -> None:
    questions = load_babi_task(1, "train", "1k")
    assert len(questions) == 1000  # 1k training questions
    first = questions[0]
    assert first.question == "Where is Mary?"
    assert first.answer == "bathroom"
    assert first.supporting_fact_ids == (1,)
    assert first.fact_texts == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert first.supporting_facts == ("Mary moved to the bathroom.",)
    second = questions[1]
    assert (second.question, second.answer, second.supporting_facts) == (
        "Where is Daniel?",
        "hallway",
        ("Daniel went back to the hallway.",),
    )
    assert [f.line_id for f in second.facts] == [1, 2, 4, 5]
    # qa1 stories have 5 questions each; story boundaries restart the ids
    assert questions[5].story_index == 1 and questions[5].facts[0].line_id == 1
    assert {q.story_index for q in questions} == set(range(200))


@needs_babi
@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_real_test_files_are_consistent(task: int) -> None:
    questions = load_babi_task(task, "test", "1k")
    assert len(questions) == 1000
    expected_supports = {1: 1, 2: 2, 3: 3}
    for question in questions:
        ids = [fact.line_id for fact in question.facts]
        assert ids == sorted(ids) and ids[0] == 1
        assert all(i < question.line_id for i in ids)
        assert len(question.supporting_facts) == len(question.supporting_fact_ids) >= 1
        if task in expected_supports:
            assert len(question.supporting_fact_ids) == expected_supports[task]
        assert question.answer and "\t" not in question.answer
    if task == 1:  # the supporting fact names the answer's location
        assert all(q.answer in q.supporting_facts[0] for q in questions)


@needs_babi
def test_sizes_and_missing_qa3_10k_train() -> None:
    assert len(load_babi_task("qa1", "train", "10k")) == 10_000
    assert load_babi_task(1, "test", "10k")[0] == load_babi_task(1, "test", "1k")[0]
    assert len(load_babi_task(1, "valid")) == 100
    with pytest.raises(FileNotFoundError, match="qa3"):
        load_babi_task(3, "train", "10k")


@needs_babi
def test_answer_labels_of_qa1_are_the_six_locations() -> None:
    assert babi_answer_labels(1) == {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}
