"""Bad input to ``titans train | eval | generate`` gives one line, ``error: ...`` naming the problem, and exit
status 2 — no traceback."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import yaml

from titans.cli import main
from titans.models import TitansLM
from titans.training import CheckpointError, load_run_config, train
from titans.training.checkpoint import LAST, load_model_weights

MICRO = [
    "model.dim=32", "model.depth=1", "model.heads=2", "model.mlp_hidden=64", "model.chunk_size=8",
    "model.segment_len=16", "model.persistent_tokens=2", "data.seq_len=32", "train.batch_size=2",
    "train.steps=2", "train.eval_batches=1", "eval.max_batches=1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TITANS_CACHE_DIR", str(tmp_path / "cache"))


def _set(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _fails(capsys, argv: list[str]) -> str:
    """Run the command, check that it failed cleanly, and return its error line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step run of a very small model (shared by the checkpoint tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("errors")
    config = load_run_config(None, [*MICRO, f"data.cache_dir={root / 'cache'}"])
    train(config, root / "run", progress=False, final_eval=False)
    yield config, root / "run"
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------ data


def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "no_such_corpus.jsonl"
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*MICRO, f"data.path={missing}")])
    assert f"corpus not found: {missing}" in err
    assert not (tmp_path / "run").exists(), "a failed start leaves no run folder behind"


@pytest.mark.parametrize(("name", "message"), [("empty.jsonl", "holds no JSONL documents"), ("empty.txt", "is empty")])
def test_empty_data_file(tmp_path, capsys, name, message):
    corpus = tmp_path / name
    corpus.write_text("")
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*MICRO, f"data.path={corpus}")])
    assert str(corpus) in err and message in err


def test_unreadable_jsonl_line(tmp_path, capsys):
    corpus = tmp_path / "broken.jsonl.gz"
    lines = [json.dumps({"text": "A fine first document.", "split": "train"}), '{"text": "no closing quote}']
    with gzip.open(corpus, "wt") as file:
        file.write("\n".join(lines) + "\n")
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*MICRO, f"data.path={corpus}")])
    assert f"{corpus}, line 2: not valid JSON" in err


def test_split_without_documents(tmp_path, capsys):
    corpus = tmp_path / "train_only.jsonl"
    corpus.write_text(json.dumps({"text": "only training text " * 20, "split": "train"}) + "\n")
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*MICRO, f"data.path={corpus}")])
    assert "no documents in the 'valid' split" in err


# ------------------------------------------------------------------------------------------ config


def test_unknown_config_key(tmp_path, capsys):
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set("train.lrr=1e-3")])
    assert "unknown config key 'train.lrr'" in err and "Did you mean 'train.lr'?" in err


def test_unknown_key_in_config_file(tmp_path, capsys):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"dim": 32, "depht": 2}}))
    err = _fails(capsys, ["train", "--config", str(config_file), "--out", str(tmp_path / "run")])
    assert "unknown config key 'model.depht'" in err and "Did you mean 'model.depth'?" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=many", "config key 'train.steps' expects int, got 'many' (str)"),
        ("train.lr=fast", "config key 'train.lr' expects float, got 'fast' (str)"),
        ("train.precision=fp16", "config key 'train.precision' must be one of 'auto', 'fp32', 'bf16'; got 'fp16'"),
        ("model.heads=3", "TitansConfig.heads: 3 does not divide dim=64"),
        ("train.batch_size=0", "config key 'train.batch_size' must be >= 1, got 0"),
        (
            "train.cuda_graph=true train.compile=true",
            "config key 'train.cuda_graph' cannot be combined with 'train.compile'",
        ),
    ],
)
def test_wrong_config_value(tmp_path, capsys, override, message):
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*override.split())])
    assert message in err


def test_cuda_graph_needs_a_cuda_device(tmp_path, capsys):
    overrides = _set(*MICRO, "train.device=cpu", "train.cuda_graph=true", f"data.cache_dir={tmp_path / 'cache'}")
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *overrides])
    assert "config key 'train.cuda_graph' needs a CUDA device; this run is on cpu" in err
    assert not (tmp_path / "run").exists()


def test_micro_batch_must_divide_the_batch(tmp_path, capsys):
    err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), *_set(*MICRO, "train.micro_batch_size=3")])
    assert "'train.micro_batch_size' (3) must divide the rows per process (2" in err


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_from_a_different_config(trained_run):
    _, run_dir = trained_run
    other = load_run_config(None, [*MICRO, "model.dim=48", "model.depth=2"])
    with pytest.raises(CheckpointError) as error:
        load_model_weights(run_dir / LAST, TitansLM(other.model), other.model)
    message = str(error.value)
    assert "different model config" in message
    assert "dim (checkpoint 32, config 48)" in message and "depth (checkpoint 1, config 2)" in message


def test_resume_with_a_different_model_config(trained_run, capsys):
    _, run_dir = trained_run
    err = _fails(capsys, ["train", "--out", str(run_dir), "--resume", *_set("model.dim=48")])
    assert "different model config" in err and "dim (checkpoint 32, config 48)" in err


def test_eval_with_a_different_model_config(trained_run, capsys):
    _, run_dir = trained_run
    err = _fails(capsys, ["eval", "--checkpoint", str(run_dir), *_set("model.depth=3")])
    assert "depth (checkpoint 1, config 3)" in err


def test_existing_run_needs_resume(trained_run, capsys):
    _, run_dir = trained_run
    err = _fails(capsys, ["train", "--out", str(run_dir), *_set(*MICRO)])
    assert "already holds a training run (checkpoint at step 2)" in err and "--resume" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    err = _fails(capsys, ["train", "--out", str(tmp_path / "nothing"), "--resume", *_set(*MICRO)])
    assert "cannot resume: no checkpoint in" in err


def test_missing_checkpoint(tmp_path, capsys):
    err = _fails(capsys, ["generate", "--checkpoint", str(tmp_path / "nowhere"), "--prompt", "Hi"])
    assert f"checkpoint not found: {tmp_path / 'nowhere'}" in err


def test_damaged_checkpoint(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    (damaged / "config.yaml").write_text((run_dir / LAST / "config.yaml").read_text())
    err = _fails(capsys, ["eval", "--checkpoint", str(damaged)])
    assert "cannot read the checkpoint" in err and str(damaged / "model.safetensors") in err


def test_a_step_with_non_finite_gradients_is_skipped():
    import torch

    from titans.training.trainer import clip_gradients, step_if_finite

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    (layer(torch.ones(1, 3)).sum() * float("inf")).backward()
    assert not step_if_finite(optimizer, clip_gradients(layer, 1.0))
    for p, q in zip(layer.parameters(), before):
        assert torch.equal(p, q) and p.grad is None
    layer(torch.ones(1, 3)).sum().backward()
    assert step_if_finite(optimizer, clip_gradients(layer, 1.0))
    assert not torch.equal(layer.weight, before[0])
    layer(torch.ones(1, 3)).sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert step_if_finite(optimizer, clip_gradients(layer, 1.0), keep_grads=True)  # zeroed in place (CUDA graphs)
    for p, grad in zip(layer.parameters(), grads, strict=True):
        assert p.grad is grad and not p.grad.any()


def test_training_curves_plot_nan_records(tmp_path):
    from titans.training.plots import plot_training_curves

    records = [
        {"split": "train", "step": 10, "loss": 2.0},
        {"split": "train", "step": 20, "loss": "nan"},
        {"split": "valid", "step": 20, "bits": "inf", "unit": "bits_per_byte"},
    ]
    assert plot_training_curves(records, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").stat().st_size > 0
