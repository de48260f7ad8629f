"""Run configs, the learning-rate schedule, the AdamW groups and the loss-by-position evaluator."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from titans.config_io import save_config
from titans.models import TitansLM, count_parameters, nominal_parameters
from titans.training import RunConfig, load_run_config
from titans.training.config import TINY_CONFIG
from titans.training.evaluate import bucket_bounds, document_token_losses, loss_by_position
from titans.training.trainer import learning_rate, parameter_groups

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {"paper_170m.yaml": "170M", "paper_340m.yaml": "340M", "paper_760m.yaml": "760M", "paper_1.3b.yaml": "1.3B"}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_tiny_yaml_is_the_default_run():
    assert load_run_config(CONFIGS / "tiny.yaml") == load_run_config() == load_run_config(TINY_CONFIG)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_loads_and_builds(name):
    config = load_run_config(CONFIGS / name)
    with torch.device("meta"):
        model = TitansLM(config.model)
    parameters = count_parameters(model)
    if name in PAPER:
        nominal = nominal_parameters(PAPER[name])
        assert nominal is not None and abs(parameters - nominal) / nominal < 0.02, f"{parameters:,} vs {nominal:,}"
        assert config.data.seq_len == 4096 and config.train.batch_size * config.data.seq_len == 524_288
    if name.startswith("small"):
        assert abs(parameters - 16_000_000) < 400_000


def test_round_trip_through_yaml(tmp_path):
    config = load_run_config(None, ["train.betas=[0.8, 0.99]", "model.memory_layers=[1]", "eval.max_batches=null"])
    save_config(config, tmp_path / "config.yaml")
    assert load_run_config(tmp_path / "config.yaml") == config
    assert isinstance(config, RunConfig) and config.model.memory_layers == (1,)


def test_learning_rate_schedule():
    train = load_run_config(
        None, ["train.steps=110", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1"]
    ).train
    rates = [learning_rate(step, train) for step in range(train.steps)]
    assert rates[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert rates[9] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in pairwise(rates[9:])), "the cosine only goes down"
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_weight_decay_only_on_matrices():
    model = TitansLM(load_run_config().model)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "lm_head.weight" in decayed and "blocks.0.mlp.to_hidden.weight" in decayed
    assert {"embed.weight", "norm.weight", "blocks.0.persistent_tokens"} <= kept
    assert all(not n.endswith(".bias") for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------ by position


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = load_run_config(None, ["model.dim=32", "model.depth=1", "model.mlp_hidden=64", "model.chunk_size=8",
                                    "model.segment_len=16"]).model  # fmt: skip
    return TitansLM(config).eval()


def test_pieces_with_carried_state_equal_one_pass(small_model):
    """Reading a document in pieces, state carried, gives the losses of reading it at once."""
    tokens = np.random.default_rng(0).integers(0, 256, size=101)
    whole = document_token_losses(small_model, tokens, piece_len=1000, device=torch.device("cpu"), precision="fp32")
    pieces = document_token_losses(small_model, tokens, piece_len=24, device=torch.device("cpu"), precision="fp32")
    assert whole.shape == pieces.shape == (100,)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5)


def test_loss_by_position_buckets(small_model):
    documents = [np.arange(70) % 256, np.arange(30) % 256]
    result = loss_by_position(small_model, documents, 16, [0, 10, 40], torch.device("cpu"), "fp32")
    assert result["document_tokens"] == [70, 30]
    assert [(b["start"], b["end"], b["tokens"]) for b in result["buckets"]] == [
        (0, 10, 20),
        (10, 40, 49),
        (40, None, 29),
    ]
    assert [(p["start"], p["end"], p["tokens"]) for p in result["curve"]] == [
        (0, 16, 32), (16, 32, 29), (32, 48, 16), (48, 64, 16), (64, 69, 5)
    ]  # fmt: skip
    total_bits = sum(b["bits"] * b["tokens"] for b in result["buckets"])
    assert total_bits == pytest.approx(sum(p["bits"] * p["tokens"] for p in result["curve"]))


def test_bucket_bounds():
    assert bucket_bounds([0, 1024, 4096]) == [(0, 1024), (1024, 4096), (4096, None)]
