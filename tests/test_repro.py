"""``titans repro``: the suites (equal parameters and tokens, the ablation switches), the tiny suite end to end
(training, skipping, results.json, the table, the plots, the analysis notebook), failures, and the results page.

The tiny suite trains three 2-block models for 4 steps each, in this process on one thread (~15 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from titans.cli import main
from titans.config_io import ConfigError
from titans.models import preset
from titans.models.config import EXECUTION_FIELDS
from titans.models.presets import meta_model, nominal_parameters
from titans.models.summary import count_parameters
from titans.repro import collect_results, load_suite, publish, run_suite, write_report, write_results
from titans.repro.report import markdown_report, markers
from titans.repro.runner import RECORD_FILE, config_changes, display_path
from titans.training.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "configs" / "repro"
TINY = SUITES / "tiny_lm.yaml"
BOOKS = "gutenberg_pg19like.jsonl.xz"
TINY_CONFIG = display_path(REPO / "configs" / "tiny.yaml")


# ------------------------------------------------------------------------------------------------ the suites


def _planned_configs(name: str):
    suite = load_suite(SUITES / f"{name}.yaml")
    return {run.name: run.load_config() for run in suite.plan(suite.default_out_dir())}


def _budget(config) -> tuple:
    return (config.train.steps, config.train.batch_size, config.data.seq_len, config.train.seed, config.train.lr)


@pytest.mark.parametrize("name", ["lm", "ablations", "tiny_lm"])
def test_every_suite_loads(name):
    suite = load_suite(SUITES / f"{name}.yaml")
    assert suite.name == name
    assert suite.spec.metric_split == "test"
    assert len(suite.run_names) == len(set(suite.run_names)) >= 2


def test_lm_suite_compares_the_six_models_at_equal_parameters_and_tokens():
    configs = _planned_configs("lm")
    assert {c.model.variant for c in configs.values()} == {"transformer", "swa", "lmm", "mac", "mag", "mal"}
    assert len({_budget(c) for c in configs.values()}) == 1, "equal tokens: the same steps, batch, rows, seed"
    small = load_run_config(REPO / "configs" / "small.yaml")
    assert _budget(next(iter(configs.values())))[:3] == (small.train.steps, 32, 1024), "configs/small.yaml"
    for name, config in configs.items():
        assert config.data.path is not None and config.data.path.endswith(BOOKS), name
        assert config.data.tokenizer == "bytes" and config.model.vocab_size == 256
        matched = preset("small", config.model.variant)
        assert config.model.mlp_hidden == matched.mlp_hidden, f"{name}: not the width that matches 16M parameters"
        assert config.model.persistent_tokens == matched.persistent_tokens
        for key in ("dim", "depth", "heads", "memory_depth", "memory_expansion", "chunk_size", "segment_len", "window"):
            assert getattr(config.model, key) == getattr(matched, key), f"{name}: model.{key}"
        parameters = count_parameters(meta_model(config.model))
        assert abs(parameters / nominal_parameters("small") - 1) < 0.01, f"{name}: {parameters:,} parameters"


ABLATION_SWITCHES = {
    "lmm": ({}, ()),
    "linear_memory": ({"memory_depth": 1, "max_lr": 0.0625}, ("linear_memory",)),
    "no_conv": ({"conv": False}, ("no_conv",)),
    "no_momentum": ({"momentum": False}, ("no_momentum",)),
    "no_weight_decay": ({"decay": False}, ("no_weight_decay",)),
    "no_persistent_memory": ({"persistent_tokens": 0}, ("no_persistent_memory",)),
    "memory_depth_2_lr8": ({"max_lr": 0.125}, ()),
    "memory_depth_3": ({"memory_depth": 3, "max_lr": 0.125}, ()),
    "memory_depth_4": ({"memory_depth": 4, "max_lr": 0.125}, ()),
}


def test_ablation_suite_changes_one_switch_of_lmm_per_run():
    configs = _planned_configs("ablations")
    assert set(configs) == set(ABLATION_SWITCHES)
    assert len({_budget(c) for c in configs.values()}) == 1
    assert _budget(configs["lmm"]) == _budget(_planned_configs("lm")["lmm"]), "the budget of the lm suite"
    base = configs["lmm"].model.to_dict()
    for name, config in configs.items():
        switches, ablations = ABLATION_SWITCHES[name]
        model = config.model.to_dict()
        changed = {k: v for k, v in model.items() if base[k] != v and k != "mlp_hidden" and k not in EXECUTION_FIELDS}
        assert changed == switches, name
        extra = {k: v for k, v in switches.items() if k == "memory_depth" and not ablations}
        matched = preset("small", "lmm", ablations=ablations, **extra)
        assert config.model.mlp_hidden == matched.mlp_hidden, f"{name}: parameters not matched"
        parameters = count_parameters(meta_model(config.model))
        assert abs(parameters / nominal_parameters("small") - 1) < 0.025, f"{name}: {parameters:,} parameters"


def test_bad_suites_are_refused(tmp_path):
    cases = {
        "unknown_key.yaml": ("name: x\nruns: [{name: a}]\nbogus: 1\n", "bogus"),
        "bad_override.yaml": ("name: x\nruns: [{name: a, set: [model.dimm=4]}]\n", "model.dimm"),
        "duplicate.yaml": ("name: x\nruns: [{name: a}, {name: a}]\n", "unique"),
        "bad_name.yaml": ("name: x\nruns: [{name: a/b}]\n", "folder name"),
        "no_config.yaml": ("name: x\nruns: [{name: a, config: nowhere.yaml}]\n", "not found"),
    }
    for file_name, (text, message) in cases.items():
        path = tmp_path / file_name
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_suite(path)


# ------------------------------------------------------------------------------------------------ the tiny suite


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """``titans repro configs/repro/tiny_lm.yaml --out OUT`` in this process, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("repro")
    out = root / "tiny_lm"
    cache = f"data.cache_dir={root / 'cache'}"
    status = main(["repro", str(TINY), "--out", str(out), "--set", cache, "--no-progress", "--no-run-plots"])
    yield status, out, cache
    torch.set_num_threads(previous)


def test_tiny_suite_trains_evaluates_and_collects(tiny_suite):
    status, out, _ = tiny_suite
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "titans-repro-results/1"
    assert results["suite"]["name"] == "tiny_lm" and results["suite"]["metric_split"] == "test"
    assert [run["name"] for run in results["runs"]] == ["transformer", "mac", "mac_linear_memory"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    for run in results["runs"]:
        assert run["status"] == "done", run.get("error")
        assert run["unit"] == "bits_per_byte"
        assert 3 < run["bits"] < 8.5 and 3 < run["valid_bits"] < 8.5, "an untrained byte model is near 8"
        assert math.isclose(run["bits"], run["eval"]["test"]["bits"])
        assert [b["label"] for b in run["eval"]["test"]["by_position"]["buckets"]] == ["0–128", "128–256", "256+"]
        assert run["position_buckets"] == ["0–128", "128–256", "256+"], "the config's labels = eval.json's"
        assert run["eval"]["test"]["by_position"]["curve"], "one point per piece"
        assert [p["step"] for p in run["validation_curve"]] == [0, 4]
        assert run["train_tokens"] == 4 * 4 * 64 and run["steps"] == 4 and run["seed"] == 0
        assert run["parameters"] > 100_000 and run["tokens_per_s"] > 0
        assert run["wall_time_s"] >= run["train_time_s"] > 0
        assert run["device"] == "cpu" and run["precision"] == "fp32" and run["device_name"]
        if head.returncode == 0:
            assert run["commit"] == head.stdout.strip() and isinstance(run["dirty"], bool)
        assert run["command"].startswith(f"titans train --config {TINY_CONFIG} --set train.device=cpu")
        run_dir = display_path(out / run["name"])
        assert run["command"].endswith(f"--out {run_dir} && titans eval --checkpoint {run_dir} --split test")
        assert run["config"]["model"]["variant"] == run["variant"]
        assert (out / run["name"] / RECORD_FILE).is_file()
    assert results["runs"][2]["config"]["model"]["memory_depth"] == 1
    assert results["runs"][1]["parameters"] > results["runs"][2]["parameters"], "a linear memory has fewer weights"


def test_tiny_suite_writes_the_table_and_plots(tiny_suite):
    _, out, _ = tiny_suite
    report = (out / "results.md").read_text()
    assert "**Suite `tiny_lm`**" in report and "3 of 3 runs done" in report and "not run yet" not in report
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | variant | parameters | training tokens | test bpb | valid bpb | bpb 0–128")
    assert [row.split(" | ")[0] for row in table[1:]] == ["| Transformer++", "| MAC", "| MAC, linear memory"]
    for name in ("final_bpb.png", "bpb_by_position.png", "validation_curves.png"):
        assert (out / "plots" / name).stat().st_size > 5000
        assert f"(plots/{name})" in report


def test_a_second_call_skips_the_done_runs(tiny_suite, capsys):
    _, out, cache = tiny_suite
    records = {p: p.stat().st_mtime_ns for p in out.glob(f"*/{RECORD_FILE}")}
    assert main(["repro", str(TINY), "--out", str(out), "--set", cache, "--only", "mac,transformer"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already") == 2 and "running" not in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"*/{RECORD_FILE}")} == records


def test_a_changed_config_is_an_error_not_a_skip(tiny_suite, capsys):
    _, out, cache = tiny_suite
    args = ["repro", str(TINY), "--out", str(out), "--set", cache, "--set", "train.steps=8"]
    assert main(args) == 2
    assert "train.steps: 4 → 8" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_suite, tmp_path, capsys):
    _, out, cache = tiny_suite
    assert main(["repro", str(TINY), "--out", str(tmp_path / "new"), "--set", cache, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"would run: titans train --config {TINY_CONFIG} ") == 3
    assert not (tmp_path / "new").exists()
    assert main(["repro", str(TINY), "--out", str(out), "--set", cache, "--dry-run", "--only", "mac"]) == 0
    assert "[1/1] mac: done already" in capsys.readouterr().out


def test_unknown_run_names_are_refused(capsys):
    assert main(["repro", str(TINY), "--only", "nope", "--dry-run"]) == 2
    assert "unknown run(s) nope" in capsys.readouterr().err


def test_runs_that_have_not_run_are_listed_as_such(tiny_suite, tmp_path):
    """A suite with one more run than was made: the extra run is 'not run', with its planned size only."""
    _, out, cache = tiny_suite
    text = TINY.read_text().replace("config: ../tiny.yaml", f"config: {REPO / 'configs' / 'tiny.yaml'}")
    text += "  - name: mag\n    label: MAG\n    set: [model.variant=mag]\n"
    bigger = tmp_path / "tiny_plus.yaml"
    bigger.write_text(text)
    suite = load_suite(bigger)
    results = collect_results(suite, out, [cache])
    statuses = {run["name"]: run["status"] for run in results["runs"]}
    assert statuses == {"transformer": "done", "mac": "done", "mac_linear_memory": "done", "mag": "not run"}
    mag = results["runs"][-1]
    assert mag["bits"] is None and mag["wall_time_s"] is None and mag["commit"] is None and mag["eval"] == {}
    assert mag["parameters"] > 0 and mag["train_tokens"] == 1024, "what the config fixes is filled in"
    report_dir = tmp_path / "report"
    write_results(results, report_dir)
    report, plots = write_report(results, report_dir)
    assert "| MAG | `mag` |" in report.read_text() and "*not run yet*" in report.read_text()
    assert len(plots) == 3


def test_a_failing_run_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch):
    calls = []

    def broken_train(config, run_dir, **kwargs):
        calls.append(Path(run_dir).name)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr("titans.training.train", broken_train)
    suite = load_suite(TINY)
    outcomes = run_suite(suite, tmp_path, echo=lambda line: None)
    assert calls == ["transformer", "mac", "mac_linear_memory"], "every run is tried"
    assert [o.status for o in outcomes] == ["failed"] * 3
    record = json.loads((tmp_path / "mac" / RECORD_FILE).read_text())
    assert record["status"] == "failed" and "illegal memory access" in record["error"]
    assert "Traceback" in record["traceback"] and record["wall_time_s"] >= 0
    results = collect_results(suite, tmp_path)
    assert {run["status"] for run in results["runs"]} == {"failed"}
    assert "*failed*" in (write_report(results, tmp_path)[0]).read_text()
    calls.clear()
    run_suite(suite, tmp_path, only=["mac"], echo=lambda line: None)
    assert calls == ["mac"], "a failed run is tried again"


def test_config_changes_ignore_settings_that_do_not_change_the_run():
    from titans.training import load_run_config

    tiny = REPO / "configs" / "tiny.yaml"
    base = load_run_config(tiny)
    same = load_run_config(tiny, ["data.cache_dir=/elsewhere", "model.check_inputs=false"])
    other = load_run_config(tiny, ["train.lr=1e-3"])
    assert config_changes(base, same) == []
    assert config_changes(base, other) == ["train.lr: 0.003 → 0.001"]


# ------------------------------------------------------------------------------------------------ the page


def test_publish_fills_the_suite_block_only(tiny_suite, tmp_path):
    _, out, _ = tiny_suite
    results = json.loads((out / "results.json").read_text())
    begin, end = markers("tiny_lm")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\nintro\n\n{begin}\nold text\n{end}\n\n## after\n")
    plots = sorted((out / "plots").glob("*.png"))
    publish(results, plots, page)
    text = page.read_text()
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith(f"{end}\n\n## after\n")
    assert "old text" not in text and "| Transformer++ |" in text
    assert "![held-out bits per byte per run](images/repro/tiny_lm/final_bpb.png)" in text
    assert {p.name for p in (page.parent / "images" / "repro" / "tiny_lm").iterdir()} == {p.name for p in plots}
    assert json.loads((page.parent / "results" / "tiny_lm" / "results.json").read_text()) == results
    publish(results, plots, page)
    assert page.read_text() == text, "publishing again changes nothing"
    with pytest.raises(ConfigError, match="no block for suite"):
        publish({**results, "suite": {**results["suite"], "name": "other"}}, plots, page)


def test_results_page_blocks_render_again_from_the_published_results():
    """Each number on docs/results.md comes from the results.json published beside it: the block is exactly the
    report of that file (or, for a suite not run yet, every measured cell is a placeholder)."""
    page = (REPO / "docs" / "results.md").read_text()
    for name in ("lm", "ablations"):
        begin, end = markers(name)
        block = page[page.index(begin) + len(begin) + 1 : page.index(end)]
        published = REPO / "docs" / "results" / name / "results.json"
        if not published.is_file():
            measured = [line.split(" | ")[4] for line in block.splitlines() if line.startswith("| ") and "`" in line]
            assert measured and set(measured) == {"*not run yet*"}, "no measured number without results.json"
            continue
        results = json.loads(published.read_text())
        assert [run["name"] for run in results["runs"]] == load_suite(SUITES / f"{name}.yaml").run_names
        images = [line[line.index("](") + 2 : -1] for line in block.splitlines() if line.startswith("![")]
        assert all((REPO / "docs" / image).is_file() for image in images)
        assert block == markdown_report(results, images)


def test_readme_language_model_table_is_the_published_results():
    """The README's language-modelling table repeats docs/results/lm/results.json (3 decimals), not hand-typed drift."""
    results = json.loads((REPO / "docs" / "results" / "lm" / "results.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Language modelling on the books corpus") : readme.index("**MAC trains stably")]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    table = {cells[0].strip(): [cell.strip().strip("*") for cell in cells[1:]] for cells in rows[1:]}
    for run in results["runs"]:
        (label,) = [name for name in table if name.split(" (")[0] == run["label"]]
        buckets = run["eval"]["test"]["by_position"]["buckets"]
        assert table[label] == [f"{run['bits']:.3f}", *(f"{bucket['bits']:.3f}" for bucket in buckets)], label
    external = json.loads((REPO / "docs" / "results" / "lm" / "external_titans_pytorch.json").read_text())["runs"]
    for run in external:
        layers = run["memory_layers"]
        where = layers if isinstance(layers, str) else "blocks " + " and ".join(map(str, layers))
        label = f"titans-pytorch MAC, memory in {where} (external)"
        assert table[label] == [f"{run['test']['bits_per_byte']:.3f}", "—", "—", "—", "—"], label


def test_readme_long_context_table_is_the_recorded_task_results():
    """The README's S-NIAH-1/2/3 and BABILong table repeats docs/results/tasks/results.json: each model's accuracy
    by length ("0.000 at each", else every length to 2 decimals) and the validation answer losses (3 decimals)."""
    runs = json.loads((REPO / "docs" / "results" / "tasks" / "results.json").read_text())["runs"]
    readme = (REPO / "README.md").read_text()
    start = readme.index("**S-NIAH-1/2/3 and BABILong QA1 by length")
    end = readme.index("The validation losses say why")
    section = readme[start:end]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    variants = ("transformer", "swa", "mac", "lmm", "mag", "mal")
    prefixes = {"sniah-1": "S-NIAH-1", "sniah-2": "S-NIAH-2", "sniah-3": "S-NIAH-3", "babilong-qa1": "BABILong QA1"}
    for task, prefix in prefixes.items():
        (cells,) = [[cell.strip() for cell in row] for row in rows if row[0].strip().startswith(prefix)]
        by_variant = {run["variant"]: run for run in runs if run["task"] == task}
        losses = " / ".join(f"{by_variant[v]['final_validation_answer_loss']:.3f}" for v in variants)
        assert cells[-1] == losses, task
        for variant, cell in zip(variants, cells[1:-1], strict=True):
            run = by_variant[variant]
            accuracy = run["accuracy_by_length"]
            assert run["status"] == "done" and [int(n) for n in accuracy] == run["eval_lengths"], (task, variant)
            values = list(accuracy.values())
            expected = "0.000 at each" if set(values) == {0.0} else ", ".join(f"{a:.2f}" for a in values)
            assert cell == expected, (task, variant)


# ------------------------------------------------------------------------------------------------ the notebook


def test_analysis_notebook_runs_on_the_tiny_suite_results(tiny_suite, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    _, out, _ = tiny_suite
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("TITANS_RESULTS_DIR", str(out))  # the kernel inherits the environment
    monkeypatch.setenv("TITANS_BASELINE", "transformer")
    nbclient.NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [
        output.get("text", "") + json.dumps(output.get("data", {}))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    text = "\n".join(outputs)
    assert "suite 'tiny_lm'" in text and "3 of 3 runs done" in text
    assert "Difference to **Transformer++**" in text
    assert "no runs that differ only in memory depth" not in text, "MAC at depths 1 and 2 make a depth plot"
    assert sum("image/png" in output for output in outputs) == 4, "bars, by position, validation, depth"
