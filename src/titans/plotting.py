"""matplotlib for every figure of the project: imported lazily with the non-interactive ``Agg`` backend (importing
a module that draws costs nothing and works without a display), and one way to write a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path) -> Path:
    """Lay out, write ``path`` (PNG, 120 dpi, parent folders created) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path
