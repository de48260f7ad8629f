"""The human side of ``results.json``: a markdown table with per-run details, PNG plots, and a block of a
markdown page (``docs/results.md``) filled in place.

Plots (``OUT/plots/``): ``final_bpb.png`` (a bar per run: held-out bits per byte), ``bpb_by_position.png``
(a curve per run: bits per byte by position inside long documents, state carried from piece to piece) and
``validation_curves.png`` (validation bits per byte against training tokens). Runs that have no result are
left out of the plots and marked *not run yet* (or *failed*) in the table; no number is ever filled in for
them except what their config fixes (parameters, data, token budget).

A page takes a suite's block between two markers, which :func:`publish` replaces (images are copied to
``images/repro/<suite>/`` beside the page)::

    <!-- titans-repro:lm:begin -->
    ... generated ...
    <!-- titans-repro:lm:end -->
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from titans.config_io import ConfigError
from titans.plotting import pyplot, save_figure
from titans.repro.collect import write_results

PLOTS_DIR = "plots"
REPORT_FILE = "results.md"
FINAL_PLOT = "final_bpb.png"
POSITION_PLOT = "bpb_by_position.png"
VALIDATION_PLOT = "validation_curves.png"
NOT_RUN = "*not run yet*"

_PLOT_TITLES = {
    FINAL_PLOT: "held-out bits per byte per run",
    POSITION_PLOT: "bits per byte by position in long documents",
    VALIDATION_PLOT: "validation bits per byte during training",
}


# ------------------------------------------------------------------------------------------------ formatting


def format_count(n: Any) -> str:
    """``16097004`` → ``16.10M``; ``—`` for a missing value."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "—"
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}"
    return f"{n:.0f}"


def format_duration(seconds: Any) -> str:
    """``603`` → ``10 min 3 s``; ``—`` for a missing value."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def format_bits(bits: Any) -> str:
    return f"{bits:.4f}" if isinstance(bits, int | float) and math.isfinite(bits) else "—"


def _unit_words(unit: str) -> str:
    return unit.replace("_", " ")


def _short_commit(run: dict[str, Any]) -> str:
    commit = run.get("commit")
    if not commit:
        return "—"
    return f"`{commit[:7]}`" + (" (dirty)" if run.get("dirty") else "")


def _done(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for run in results["runs"] if run.get("status") == "done" and run.get("bits") is not None]


def _by_position(run: dict[str, Any], split: str) -> dict[str, Any]:
    return ((run.get("eval") or {}).get(split) or {}).get("by_position") or {}


def _bucket_labels(runs: Iterable[dict[str, Any]], split: str) -> list[str]:
    """The position buckets of the table's columns: those measured, else those the configs plan."""
    runs = list(runs)
    labels: list[str] = []
    for run in runs:
        for bucket in _by_position(run, split).get("buckets") or []:
            if bucket.get("label") not in labels:
                labels.append(bucket["label"])
    if not labels:
        for run in runs:
            labels += [label for label in run.get("position_buckets") or [] if label not in labels]
    return labels


def _status_cell(run: dict[str, Any]) -> str:
    status = run.get("status")
    if status == "failed":
        return "*failed*"
    if status == "incomplete":
        return "*incomplete*"
    return NOT_RUN


# ------------------------------------------------------------------------------------------------ markdown


def markdown_report(results: dict[str, Any], images: Iterable[str] = ()) -> str:
    """The table, the notes on how it was measured, the images (paths as given) and the per-run details."""
    suite = results["suite"]
    split = suite["metric_split"]
    unit = _unit_words(results.get("unit") or "bits_per_byte")
    done = _done(results)
    lines = [f"**Suite `{suite['name']}`** (`{suite['file']}`). {suite.get('description') or ''}".rstrip(), ""]
    if not done:
        lines += ["**Not run yet.** No run of this suite has finished: every measured cell below is a placeholder.", ""]
    else:
        lines += [
            f"Generated {results.get('generated_at')} by `titans repro` from `{results.get('out_dir')}/results.json`"
            f" ({len(done)} of {len(results['runs'])} runs done).",
            "",
        ]
    lines += [
        f"Held-out {unit} on the **{split}** split (lower is better), with the checkpoint of the lowest validation "
        f"loss; by position: the {split} split's longest documents read in pieces with the state carried from "
        "piece to piece. Tokens/s: median over the logged training windows (the first left out).",
        "",
    ]
    lines += _table(results, split)
    images = list(images)
    if images:
        lines.append("")
        for image in images:
            title = _PLOT_TITLES.get(Path(image).name, Path(image).stem)
            lines.append(f"![{title}]({image})")
    lines += ["", "**Runs**", ""]
    for run in results["runs"]:
        lines += _run_details(run)
    return "\n".join(lines).rstrip() + "\n"


def _table(results: dict[str, Any], split: str) -> list[str]:
    labels = _bucket_labels(results["runs"], split)
    header = ["run", "variant", "parameters", "training tokens", f"{split} bpb", "valid bpb"]
    header += [f"bpb {label}" for label in labels]
    header += ["tokens/s", "wall time", "device", "seed", "commit"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in results["runs"]:
        measured = run.get("status") == "done"
        buckets = {b.get("label"): b.get("bits") for b in _by_position(run, split).get("buckets") or []}
        cells = [
            run.get("label") or run["name"],
            f"`{run.get('variant')}`" if run.get("variant") else "—",
            format_count(run.get("parameters")),
            format_count(run.get("train_tokens")),
            format_bits(run.get("bits")) if measured else _status_cell(run),
            format_bits(run.get("valid_bits")) if measured else "—",
            *[format_bits(buckets.get(label)) if measured else "—" for label in labels],
            format_count(run.get("tokens_per_s")) if measured else "—",
            format_duration(run.get("wall_time_s")) if measured else "—",
            str(run.get("device_name") or "—") if measured else "—",
            str(run.get("seed")) if run.get("seed") is not None else "—",
            _short_commit(run) if measured else "—",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _run_details(run: dict[str, Any]) -> list[str]:
    status = run.get("status")
    title = f"- **{run.get('label') or run['name']}** (`{run['name']}`)"
    title += " — done" if status == "done" else f" — {_status_cell(run)}"
    lines = [title, f"  - command: `{run.get('command')}`"]
    config_file = f"`{run['config_file']}`" if run.get("config_file") else "the tiny default"
    overrides = f" with the {len(run['overrides'])} `--set` overrides of the command" if run.get("overrides") else ""
    where = f"; the whole config: `{run['run_dir']}/config.yaml`" if status != "not run" else ""
    lines.append(f"  - config: {config_file}{overrides}{where}")
    data = run.get("data") or {}
    if data:
        budget = ""
        if run.get("train_tokens"):
            budget = (f"; {run.get('steps')} steps × {run.get('batch_size')} rows = "
                      f"{format_count(run['train_tokens'])} training tokens")  # fmt: skip
        lines.append(f"  - data: `{data.get('path')}`, {data.get('tokenizer')} tokenizer, rows of "
                     f"{data.get('seq_len')} tokens{budget}")  # fmt: skip
    if run.get("notes"):
        lines.append(f"  - notes: {run['notes'].strip()}")
    if status == "not run":
        return [*lines, f"  - device, wall time, commit: {NOT_RUN}"]
    if run.get("device"):
        memory = run.get("peak_memory_gib")
        peak = f", peak memory {memory:.1f} GiB" if isinstance(memory, int | float) else ""
        threads = f", {run.get('threads')} CPU thread(s)" if run["device"] == "cpu" else ""
        lines.append(f"  - device: {run.get('device_name')} (`{run['device']}`), {run.get('precision')}{threads}, "
                     f"torch {run.get('torch')}{peak}")  # fmt: skip
    lines.append(
        f"  - wall time {format_duration(run.get('wall_time_s'))} (training {format_duration(run.get('train_time_s'))})"
        f"; seed {run.get('seed')}; commit {_short_commit(run)}; started {run.get('started_at') or '—'}"
    )
    if status == "failed":
        lines.append(f"  - error: `{run.get('error')}`")
    return lines


# ------------------------------------------------------------------------------------------------ plots


def plot_final_bits(results: dict[str, Any], path: Path) -> Path | None:
    """A bar per finished run: its held-out bits per byte (None when no run has finished)."""
    done = _done(results)
    if not done:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(5.0, 1.1 * len(done) + 2), 4.5))
    labels = [run.get("label") or run["name"] for run in done]
    values = [run["bits"] for run in done]
    bars = axes.bar(range(len(done)), values, color=[f"C{i % 10}" for i in range(len(done))])
    axes.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2)
    crowded = len(done) > 5
    axes.set_xticks(range(len(done)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    split = results["suite"]["metric_split"]
    axes.set_ylabel(f"{split} {_unit_words(results.get('unit') or 'bits_per_byte')}")
    axes.set_title(f"{results['suite']['name']}: held-out {_unit_words(results.get('unit') or 'bits_per_byte')}")
    axes.set_ylim(0, max(values) * 1.12)
    axes.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, path)


def plot_bits_by_position(results: dict[str, Any], path: Path) -> Path | None:
    """A curve per finished run: bits per byte by position (one point per piece), log position axis."""
    split = results["suite"]["metric_split"]
    curves = [(run, _by_position(run, split).get("curve") or []) for run in _done(results)]
    curves = [(run, curve) for run, curve in curves if curve]
    if not curves:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for index, (run, curve) in enumerate(curves):
        centres = [max((point["start"] + point["end"]) / 2, 1) for point in curve]
        axes.plot(centres, [point["bits"] for point in curve], ".-", color=f"C{index % 10}",
                  label=run.get("label") or run["name"])  # fmt: skip
    seq_lens = {(run.get("data") or {}).get("seq_len") for run, _ in curves}
    if len(seq_lens) == 1 and isinstance(next(iter(seq_lens)), int):
        seq_len = next(iter(seq_lens))
        axes.axvline(seq_len, color="gray", linestyle="--", label=f"training length {seq_len}")
    positions = _by_position(curves[0][0], split)
    axes.set_xscale("log")
    axes.set_xlabel("position in document (tokens)")
    axes.set_ylabel(f"{split} {_unit_words(results.get('unit') or 'bits_per_byte')}")
    axes.set_title(
        f"{results['suite']['name']}: by position ({positions.get('documents')} document(s), "
        f"pieces of {positions.get('piece_len')}, state carried)"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_validation_curves(results: dict[str, Any], path: Path) -> Path | None:
    """A curve per run with validation records: validation bits per byte against training tokens."""
    curves = []
    for run in _done(results):
        curve = [point for point in run.get("validation_curve") or [] if point.get("bits") is not None]
        if curve:
            curves.append((run, curve))
    if not curves:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    use_tokens = all(point.get("tokens") is not None for _, curve in curves for point in curve)
    for index, (run, curve) in enumerate(curves):
        xs = [point["tokens"] if use_tokens else point["step"] for point in curve]
        axes.plot(xs, [point["bits"] for point in curve], "o-", markersize=3, color=f"C{index % 10}",
                  label=run.get("label") or run["name"])  # fmt: skip
    axes.set_xlabel("training tokens" if use_tokens else "step")
    axes.set_ylabel(f"validation {_unit_words(results.get('unit') or 'bits_per_byte')}")
    axes.set_title(f"{results['suite']['name']}: validation during training")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def draw_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Every plot the results allow, written to ``OUT/plots/``; returns their paths (old ones are removed,
    so a plot never outlives the results it was drawn from)."""
    plots_dir = Path(out_dir) / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in ((FINAL_PLOT, plot_final_bits), (POSITION_PLOT, plot_bits_by_position),
                       (VALIDATION_PLOT, plot_validation_curves)):  # fmt: skip
        path = plots_dir / name
        path.unlink(missing_ok=True)
        if draw(results, path) is not None:
            written.append(path)
    return written


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, list[Path]]:
    """``OUT/results.md`` and ``OUT/plots/*.png``; returns their paths."""
    out = Path(out_dir)
    plots = draw_plots(results, out)
    path = out / REPORT_FILE
    path.write_text(markdown_report(results, [f"{PLOTS_DIR}/{p.name}" for p in plots]), encoding="utf-8")
    return path, plots


# ------------------------------------------------------------------------------------------------ a page


def markers(suite_name: str) -> tuple[str, str]:
    return f"<!-- titans-repro:{suite_name}:begin -->", f"<!-- titans-repro:{suite_name}:end -->"


def publish(results: dict[str, Any], plots: Iterable[Path], page: str | Path) -> Path:
    """Replace the suite's block of the markdown ``page`` with the report; copy the plots beside the page
    (``images/repro/SUITE/``) and the results the block is made from (``results/SUITE/results.json``), so every
    published number can be traced, and the block rendered again, from files next to the page.

    Raises :class:`ConfigError` when the page lacks the two markers of the suite.
    """
    page = Path(page)
    name = results["suite"]["name"]
    begin, end = markers(name)
    text = page.read_text(encoding="utf-8") if page.is_file() else ""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ConfigError(f"{page} has no block for suite {name!r}: add the lines {begin} and {end}")
    image_dir = Path("images") / "repro" / name
    target = page.parent / image_dir
    for old in target.glob("*.png"):  # plots of earlier results go, whatever is drawn now
        old.unlink()
    images = []
    for plot in plots:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, target / plot.name)
        images.append((image_dir / plot.name).as_posix())
    write_results(results, page.parent / "results" / name)
    block = f"{begin}\n{markdown_report(results, images)}{end}"
    page.write_text(text[:start] + block + text[stop + len(end) :], encoding="utf-8")
    return page
