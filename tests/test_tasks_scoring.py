"""Scorers on hand-written examples, near-misses included."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from titans.tasks.scoring import (
    babilong_output_is_correct,
    first_sentence,
    score_babilong,
    score_needle_predictions,
    score_sniah,
    sniah_output_is_correct,
)

LOCATIONS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]


def test_needle_scoring_overall_by_length_and_bin() -> None:
    lengths = [64, 64, 128, 128, 256, 256]
    targets = [0, 63, 30, 100, 255, 128]
    predictions = [0, 62, 30, 100, 255, 0]
    report = score_needle_predictions(predictions, targets, lengths)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["num_samples"] == 6 and report["num_correct"] == 4
    assert report["by_length"] == {
        "64": {"accuracy": 0.5, "num_correct": 1, "num_samples": 2},
        "128": {"accuracy": 1.0, "num_correct": 2, "num_samples": 2},
        "256": {"accuracy": 0.5, "num_correct": 1, "num_samples": 2},
    }
    bins = report["by_position_bin"]
    assert list(bins) == ["0-20%", "20-40%", "40-60%", "60-80%", "80-100%"]
    assert bins["0-20%"] == {"accuracy": 1.0, "num_correct": 1, "num_samples": 1}  # 0/64
    assert bins["20-40%"] == {"accuracy": 1.0, "num_correct": 1, "num_samples": 1}  # 30/128
    assert bins["40-60%"] == {"accuracy": 0.0, "num_correct": 0, "num_samples": 1}  # 128/256
    assert bins["60-80%"] == {"accuracy": 1.0, "num_correct": 1, "num_samples": 1}  # 100/128
    assert bins["80-100%"]["num_samples"] == 2  # 63/64 and 255/256
    json.dumps(report)  # ready for report.json


def test_needle_scoring_accepts_tensors_and_reports_empty_bins() -> None:
    report = score_needle_predictions(torch.tensor([3]), np.array([3]), torch.tensor([10]))
    assert report["accuracy"] == 1.0
    assert report["by_position_bin"]["80-100%"] == {"accuracy": None, "num_correct": 0, "num_samples": 0}


def test_needle_scoring_refuses_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        score_needle_predictions([1, 2], [1], [4])
    with pytest.raises(ValueError, match="target < length"):
        score_needle_predictions([1], [4], [4])


@pytest.mark.parametrize(
    "output",
    [
        "1234567",
        " 1234567.",
        "\n 1234567\n",
        "The special magic number is 1234567, as stated.",
        "(1234567)",
        "is: 1234567 and more",
    ],
)
def test_sniah_accepts_the_value(output: str) -> None:
    assert sniah_output_is_correct(output, "1234567")


@pytest.mark.parametrize(
    "output",
    [
        "123456",  # 6 of 7 digits
        "1234568",  # one digit off
        "12345678",  # the value glued to another digit
        "91234567",
        "123 4567",  # split by a space
        "1 2 3 4 5 6 7",
        "1,234,567",
        "",
        "I don't know",
    ],
)
def test_sniah_rejects_near_misses(output: str) -> None:
    assert not sniah_output_is_correct(output, "1234567")


def test_sniah_uuids() -> None:
    gold = "4b7b9ccd-7ca4-45c5-ac91-884e8a961e42"
    assert sniah_output_is_correct(f" {gold}.", gold)
    assert sniah_output_is_correct(gold.upper(), gold)
    assert not sniah_output_is_correct("4b7b9ccd-7ca4-45c5-ac91-884e8a961e43", gold)  # a different uuid
    assert not sniah_output_is_correct("ad9f3abc-f40c-455a-aaa6-2815bb016c99", gold)
    assert not sniah_output_is_correct("4b7b9ccd 7ca4 45c5 ac91 884e8a961e42", gold)
    assert not sniah_output_is_correct(gold[:-1], gold)
    assert not sniah_output_is_correct(gold + "-1", gold)


@dataclass
class FakeNiah:
    task: str
    target_length: int
    depth_percent: float
    answer: str


def test_score_sniah_groups() -> None:
    samples = [
        FakeNiah("s_niah_1", 1024, 0.0, "1111111"),
        FakeNiah("s_niah_1", 2048, 50.0, "2222222"),
        FakeNiah("s_niah_2", 1024, 50.0, "3333333"),
    ]
    report = score_sniah(samples, ["1111111", "222222", " 3333333."])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["by_task"]["s_niah_1"]["accuracy"] == 0.5
    assert report["by_length"]["1024"]["accuracy"] == 1.0
    assert report["by_depth"]["50.0"]["num_samples"] == 2
    assert report["by_task_and_length"]["s_niah_1"]["2048"]["accuracy"] == 0.0
    json.dumps(report)
    with pytest.raises(ValueError, match="outputs"):
        score_sniah(samples, ["x"])


def test_first_sentence() -> None:
    assert first_sentence("  bathroom. Mary went to the kitchen.") == "bathroom"
    assert first_sentence("The answer is bathroom\nkitchen") == "The answer is bathroom"
    assert first_sentence("kitchen") == "kitchen"
    assert first_sentence("Mr.Smith is in the office! Then") == "Mr.Smith is in the office"


@pytest.mark.parametrize(
    "output",
    ["bathroom", " bathroom.", "Bathroom", "Mary is in the bathroom.", "BATHROOM. Later she went to the kitchen."],
)
def test_babilong_accepts_the_answer_in_the_first_sentence(output: str) -> None:
    assert babilong_output_is_correct(output, "bathroom", LOCATIONS, "Where is Mary?")


@pytest.mark.parametrize(
    "output",
    [
        "kitchen",  # a different location
        "Mary is in the kitchen. Before that she was in the bathroom.",  # right answer only later
        "bathrooms",  # plural: a different word (decided: no stemming)
        "bath room",
        "thebathroom",
        "",
        "the bathroom or the kitchen",  # hedging between labels
    ],
)
def test_babilong_rejects_near_misses(output: str) -> None:
    assert not babilong_output_is_correct(output, "bathroom", LOCATIONS, "Where is Mary?")


def test_babilong_labels_in_the_question_are_not_distractors() -> None:
    people = ["Bill", "Fred", "Jeff", "Mary"]
    question = "Who gave the football to Fred?"
    assert babilong_output_is_correct("Bill gave the football to Fred.", "Bill", people, question)
    assert not babilong_output_is_correct("Bill or Jeff.", "Bill", people, question)
    # without labels, only containment is checked
    assert babilong_output_is_correct("Bill or Jeff.", "Bill")


def test_babilong_list_answers_need_every_part() -> None:
    assert babilong_output_is_correct("apple, football", "apple,football")
    assert not babilong_output_is_correct("apple", "apple,football")
    with pytest.raises(ValueError, match="no words"):
        babilong_output_is_correct("x", " , ")


@dataclass
class FakeBabilong:
    task: str
    target_length: int
    answer: str
    question: str


def test_score_babilong_groups() -> None:
    samples = [
        FakeBabilong("qa1", 0, "bathroom", "Where is Mary?"),
        FakeBabilong("qa1", 1024, "garden", "Where is John?"),
        FakeBabilong("qa2", 1024, "kitchen", "Where is the milk?"),
    ]
    outputs = ["bathroom", "garden or office", "kitchen."]
    plain = score_babilong(samples, outputs)
    assert plain["accuracy"] == 1.0
    strict = score_babilong(samples, outputs, labels_by_task={"qa1": LOCATIONS, "qa2": LOCATIONS})
    assert strict["accuracy"] == pytest.approx(2 / 3)
    assert strict["by_task_and_length"]["qa1"]["1024"]["accuracy"] == 0.0
    assert strict["by_length"]["0"]["accuracy"] == 1.0
    json.dumps(strict)
