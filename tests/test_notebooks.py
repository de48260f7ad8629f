"""The quickstart notebook runs top to bottom on the CPU (a few training steps here; a minute by default).

``notebooks/analysis.ipynb`` needs a suite's results: tests/test_repro.py runs it on the tiny suite's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_builds_trains_and_samples(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("TITANS_QUICKSTART_STEPS", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "4 training steps" in text and "parameters:" in text
    assert "after 4 steps" in text and "bits per byte on validation" in text
    assert "It was a dark and" in text, "the sample starts with its prompt"
    assert "with the state carried: max difference" in text
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert images == 1, "the loss curve"
