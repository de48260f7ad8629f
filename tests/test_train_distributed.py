"""Two processes (``torchrun``, gloo; DistributedDataParallel or FSDP2) train like one process with the same
global batch.

The one-process run (in this test process) takes the global batch of 4 rows as 2 micro batches of 2
(gradient accumulation); each of the two processes takes its 2 rows (``rank::2``) in one pass.
Micro batch ``i`` of one process holds the rows of rank ``i``, so every forward and backward pass is the same
computation and the results agree to the last bit here; the test allows 1e-6 relative.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from titans.training import checkpoint as ckpt
from titans.training import load_run_config, train

CONFIG = {
    "model": {"variant": "mac", "dim": 32, "depth": 1, "heads": 2, "mlp_hidden": 64, "memory_expansion": 2,
              "chunk_size": 8, "segment_len": 16, "persistent_tokens": 2},
    "data": {"seq_len": 32},
    "train": {"steps": 6, "batch_size": 4, "micro_batch_size": 2, "warmup_steps": 2, "log_every": 1,
              "eval_every": 3, "eval_batches": 2, "checkpoint_every": 6, "device": "cpu"},
    "eval": {"batch_size": 4, "max_batches": 1, "max_document_len": 256, "piece_len": 64},
}  # fmt: skip


def _environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        TITANS_CACHE_DIR=str(tmp_path / "cache"),
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _train_with_torchrun(tmp_path: Path, name: str, processes: int, *overrides: str) -> tuple[Path, str]:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    run_dir = tmp_path / name
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "titans.cli", "train", "--config", str(config_path), "--out", str(run_dir),
               "--no-progress", *overrides]  # fmt: skip
    result = subprocess.run([sys.executable, *command], env=_environment(tmp_path), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return run_dir, result.stdout


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The reference: one process, the global batch of 4 rows as 2 micro batches (run once for both tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 gives each of the other processes
    root = tmp_path_factory.mktemp("distributed")
    train(load_run_config(CONFIG, [f"data.cache_dir={root / 'cache'}"]), root / "single", progress=False,
          final_eval=False)  # fmt: skip
    yield root / "single"
    torch.set_num_threads(previous)


def _losses(run_dir: Path, split: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == split]


def _assert_same_training(single: Path, double: Path) -> None:
    for split in ("train", "valid"):
        expected, actual = _losses(single, split), _losses(double, split)
        assert len(actual) == len(expected) > 0
        torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), rtol=1e-6, atol=0)
    weights_single = ckpt.read_weights(single / ckpt.LAST)
    weights_double = ckpt.read_weights(double / ckpt.LAST)
    assert weights_single.keys() == weights_double.keys()
    for name, tensor in weights_single.items():
        torch.testing.assert_close(weights_double[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(tmp_path, single_process_run):
    double, output = _train_with_torchrun(tmp_path, "ddp", 2)
    assert "4 rows = 2 process(es) × 1 micro batch(es) × 2" in output
    assert (double / "eval.json").is_file(), "rank 0 evaluates the finished run"
    _assert_same_training(single_process_run, double)


def _fsdp_worker(rank: int, port: int, run_dir: Path, cache_dir: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")  # fmt: skip
    config = load_run_config(CONFIG, ["train.fsdp=true", f"data.cache_dir={cache_dir}"])
    train(config, run_dir, progress=False, final_eval=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_fsdp_matches_one_process(tmp_path, single_process_run):
    """FSDP2 (``train.fsdp``), in two forked processes that call ``train`` like torchrun's would."""
    run_dir, port = tmp_path / "fsdp", _free_port()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fsdp_worker, args=(rank, port, run_dir, tmp_path / "cache")) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    _assert_same_training(single_process_run, run_dir)
