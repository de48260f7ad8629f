"""Bar chart of whole-model training throughput, eager against CUDA-graphed, from the rows that
``bench_model.py`` and ``bench_model.py --cuda-graph`` wrote (gathered in one JSON file with ``eager`` and
``cuda_graph`` lists, as ``benchmarks/results/bench_model_cuda_graph_h100.json``).

    python benchmarks/plot_cuda_graph.py benchmarks/results/bench_model_cuda_graph_h100.json \
        docs/images/bench_model_cuda_graph.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from titans.plotting import pyplot, save_figure

LABELS = {"transformer": "Transformer++", "swa": "SWA", "mac": "MAC", "mag": "MAG", "mal": "MAL", "lmm": "LMM"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("png")
    args = p.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    eager = {row["variant"]: row["tokens_per_s"] for row in results["eager"]}
    graphed = {row["variant"]: row["tokens_per_s"] for row in results["cuda_graph"]}
    variants = [v for v in eager if v in graphed]
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.6))
    positions = range(len(variants))
    axis.bar([i - 0.2 for i in positions], [eager[v] for v in variants], width=0.4, label="eager")
    axis.bar([i + 0.2 for i in positions], [graphed[v] for v in variants], width=0.4, label="CUDA graph")
    for i, v in enumerate(variants):
        axis.annotate(f"{graphed[v] / eager[v]:.2f}×", (i + 0.2, graphed[v]), ha="center", va="bottom", fontsize=8)
    axis.set_yscale("log")
    axis.set_xticks(list(positions), [LABELS.get(v, v) for v in variants])
    axis.set_ylabel("training tokens/s (log scale)")
    axis.set_title(f"Training step, {results['device']}: eager vs CUDA graph", fontsize=10)
    axis.legend()
    save_figure(figure, args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
