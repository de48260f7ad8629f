"""bAbI QA v1.2 (Weston et al. 2015), read straight from the shared ``tar.xz`` (nothing is extracted).

File format: one line per sentence, ``"<id> <text>"``; id 1 starts a new story; a question line is
``"<id> <question>\\t<answer>\\t<supporting fact ids>"``. Every question becomes one
:class:`BabiQuestion` holding the facts (non-question lines) of its story that come before it, in order,
and its supporting facts. Supporting-fact ids are the original line ids of the file.

Folders of the archive: ``en`` (1k training questions per task), ``en-10k`` (10k), and ``en-valid`` /
``en-valid-10k`` (the training set split 90/10 into train and valid). ``en-10k`` lacks qa3's train file.
"""

from __future__ import annotations

import functools
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from titans.tasks.data_files import BABI_ARCHIVE, find_data_file

BABI_TASK_FILE_STEMS: dict[int, str] = {
    1: "qa1_single-supporting-fact",
    2: "qa2_two-supporting-facts",
    3: "qa3_three-supporting-facts",
    4: "qa4_two-arg-relations",
    5: "qa5_three-arg-relations",
    6: "qa6_yes-no-questions",
    7: "qa7_counting",
    8: "qa8_lists-sets",
    9: "qa9_simple-negation",
    10: "qa10_indefinite-knowledge",
    11: "qa11_basic-coreference",
    12: "qa12_conjunction",
    13: "qa13_compound-coreference",
    14: "qa14_time-reasoning",
    15: "qa15_basic-deduction",
    16: "qa16_basic-induction",
    17: "qa17_positional-reasoning",
    18: "qa18_size-reasoning",
    19: "qa19_path-finding",
    20: "qa20_agents-motivations",
}
"""File-name stems of the 20 tasks (the BABILong benchmark here uses 1-5; the parser reads all)."""

BabiSize = Literal["1k", "10k"]
BabiSplit = Literal["train", "valid", "test"]

_ARCHIVE_ROOT = "tasks_1-20_v1-2"
_TASK_NAME = re.compile(r"^\s*(?:qa)?\s*(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BabiFact:
    """A story sentence: its line id in the file and its text (e.g. ``"Mary moved to the bathroom."``)."""

    line_id: int
    text: str


@dataclass(frozen=True)
class BabiQuestion:
    """One bAbI question with its context.

    Attributes:
        task: task number 1..20 (0 when parsed from text without one).
        story_index: index of the story in its file (0-based).
        line_id: line id of the question inside its story.
        question: e.g. ``"Where is Mary?"``.
        answer: e.g. ``"bathroom"`` (list answers of some tasks are comma-separated, as in the files).
        supporting_fact_ids: line ids of the supporting facts, as given in the file.
        facts: all facts of the story before the question, in order (earlier questions excluded).
    """

    task: int
    story_index: int
    line_id: int
    question: str
    answer: str
    supporting_fact_ids: tuple[int, ...]
    facts: tuple[BabiFact, ...]

    @property
    def fact_texts(self) -> tuple[str, ...]:
        """The texts of :attr:`facts`, in order."""
        return tuple(fact.text for fact in self.facts)

    @property
    def supporting_facts(self) -> tuple[str, ...]:
        """The texts of the supporting facts, in the order of :attr:`supporting_fact_ids`."""
        by_id = {fact.line_id: fact.text for fact in self.facts}
        return tuple(by_id[line_id] for line_id in self.supporting_fact_ids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "task": self.task,
            "story_index": self.story_index,
            "line_id": self.line_id,
            "question": self.question,
            "answer": self.answer,
            "supporting_fact_ids": list(self.supporting_fact_ids),
            "supporting_facts": list(self.supporting_facts),
            "facts": [{"line_id": fact.line_id, "text": fact.text} for fact in self.facts],
        }


def parse_babi_task_number(task: int | str) -> int:
    """``1``, ``"1"``, ``"qa1"`` → 1; raises ValueError for anything outside 1..20."""
    if isinstance(task, int) and not isinstance(task, bool):
        number = task
    else:
        match = _TASK_NAME.match(str(task))
        if match is None:
            raise ValueError(f"not a bAbI task: {task!r} (expected 1..20 or 'qa1'..'qa20')")
        number = int(match.group(1))
    if number not in BABI_TASK_FILE_STEMS:
        raise ValueError(f"bAbI task must be in 1..20, got {task!r}")
    return number


def parse_babi_lines(lines: Iterable[str], task: int = 0, source: str = "<lines>") -> list[BabiQuestion]:
    """Parse bAbI lines into questions (see the module docstring for the format).

    Raises:
        ValueError: naming ``source`` and the line number for a malformed line, a story not starting at
            id 1, ids that do not increase by one, or a supporting id that is not an earlier fact.
    """
    questions: list[BabiQuestion] = []
    facts: list[BabiFact] = []
    story_index = -1
    previous_id = 0
    for line_number, raw_line in enumerate(lines, start=1):
        line = raw_line.strip("\r\n")
        if not line.strip():
            continue
        where = f"{source}:{line_number}"
        id_text, _, rest = line.strip().partition(" ")
        if not id_text.isdigit() or not rest.strip():
            raise ValueError(f"{where}: expected '<id> <text>', got {line!r}")
        line_id = int(id_text)
        if line_id == 1:
            story_index += 1
            facts = []
        elif story_index < 0:
            raise ValueError(f"{where}: the first story must start at id 1, got id {line_id}")
        elif line_id != previous_id + 1:
            raise ValueError(f"{where}: id {line_id} does not follow id {previous_id}")
        previous_id = line_id
        if "\t" not in rest:
            facts.append(BabiFact(line_id, rest.strip()))
            continue
        fields = rest.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise ValueError(f"{where}: expected '<id> <question>\\t<answer>\\t<support ids>', got {line!r}")
        support_text = fields[2] if len(fields) > 2 else ""
        if not all(part.isdigit() for part in support_text.split()):
            raise ValueError(f"{where}: supporting fact ids must be integers, got {support_text!r}")
        supporting_ids = tuple(int(part) for part in support_text.split())
        fact_ids = {fact.line_id for fact in facts}
        unknown = [i for i in supporting_ids if i not in fact_ids]
        if unknown:
            raise ValueError(f"{where}: supporting fact ids {unknown} are not earlier facts of this story")
        questions.append(
            BabiQuestion(
                task=task,
                story_index=story_index,
                line_id=line_id,
                question=fields[0].strip(),
                answer=fields[1].strip(),
                supporting_fact_ids=supporting_ids,
                facts=tuple(facts),
            )
        )
    return questions


def babi_member_name(task: int | str, split: BabiSplit = "test", size: BabiSize = "1k") -> str:
    """The archive member of a task file.

    ``"train"`` and ``"test"`` are the standard files of ``en`` (1k) or ``en-10k``; ``"valid"`` is the
    held-out 10% of the training set in ``en-valid`` / ``en-valid-10k`` (whose ``qa<N>_train.txt`` is the
    other 90%; read it with :func:`parse_babi_lines` if needed).
    """
    number = parse_babi_task_number(task)
    if size not in ("1k", "10k"):
        raise ValueError(f"bAbI size must be '1k' or '10k', got {size!r}")
    suffix = "" if size == "1k" else "-10k"
    if split in ("train", "test"):
        return f"{_ARCHIVE_ROOT}/en{suffix}/{BABI_TASK_FILE_STEMS[number]}_{split}.txt"
    if split == "valid":
        return f"{_ARCHIVE_ROOT}/en-valid{suffix}/qa{number}_valid.txt"
    raise ValueError(f"bAbI split must be 'train', 'valid' or 'test', got {split!r}")


@functools.lru_cache(maxsize=64)
def read_archive_member(archive_path: str, member: str) -> str:
    """The text of ``member`` inside the ``tar.xz`` at ``archive_path`` (cached).

    Raises:
        FileNotFoundError: if the archive has no such member (e.g. ``en-10k`` qa3 train).
    """
    # Walk the members in archive order and read the wanted one as soon as its header is seen: that never
    # seeks backwards (which, in an xz stream, means decompressing again from the start).
    with tarfile.open(archive_path, mode="r:xz") as archive:
        for info in archive:
            if info.name != member:
                continue
            handle = archive.extractfile(info)
            if handle is None:
                raise FileNotFoundError(f"{archive_path}: member {member!r} is not a regular file")
            return handle.read().decode("utf-8")
    hint = " (en-10k has no qa3 train file; use size='1k' for qa3 training)" if "qa3" in member else ""
    raise FileNotFoundError(f"{archive_path} has no member {member!r}{hint}")


@functools.lru_cache(maxsize=64)
def _load_babi_cached(archive_path: str, member: str, task: int) -> tuple[BabiQuestion, ...]:
    text = read_archive_member(archive_path, member)
    return tuple(parse_babi_lines(text.splitlines(), task=task, source=member))


def load_babi_task(
    task: int | str, split: BabiSplit = "test", size: BabiSize = "1k", data_dir: str | Path | None = None
) -> list[BabiQuestion]:
    """All questions of a bAbI task file, in file order (parsed once per process and cached).

    Args:
        task: 1..20 or ``"qa1"``..``"qa20"``.
        split: ``"train"``, ``"test"`` or ``"valid"`` (see :func:`babi_member_name`).
        size: ``"1k"`` (folder ``en``) or ``"10k"`` (folder ``en-10k``).
        data_dir: where ``babi_tasks_1-20_v1-2_en.tar.xz`` is.
    """
    number = parse_babi_task_number(task)
    member = babi_member_name(number, split, size)
    archive = find_data_file(BABI_ARCHIVE, data_dir)
    return list(_load_babi_cached(str(archive), member, number))


def babi_answer_labels(task: int | str, data_dir: str | Path | None = None) -> frozenset[str]:
    """Every answer word of a task (from its 1k train and test files), lower-cased.

    Used by :func:`titans.tasks.scoring.babilong_output_is_correct` to reject outputs that also name
    another possible answer (e.g. two locations).
    """
    labels: set[str] = set()
    splits: tuple[BabiSplit, ...] = ("train", "test")
    for split in splits:
        for question in load_babi_task(task, split, "1k", data_dir):
            labels.update(part.strip().lower() for part in question.answer.split(",") if part.strip())
    return frozenset(labels)
