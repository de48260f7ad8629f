"""The registry behind ``titans verify``: each equation of TITANS.md → the code → the tests that check it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Equation:
    id: str
    what: str
    code: str
    tests: tuple[str, ...]


EQUATIONS: tuple[Equation, ...] = (
    Equation(
        "11",
        "key/value projections k = x W_K, v = x W_V (+ conv, SiLU, ℓ2-norm)",
        "titans.layers.neural_memory.NeuralMemory._project",
        ("tests/test_ablations.py::test_conv_mixes_neighbouring_tokens_and_no_conv_does_not",),
    ),
    Equation(
        "12",
        "associative-memory loss ½‖M(k) − v‖² and its analytic gradient",
        "titans.ops.memory_mlp.inner_loss, inner_grad_factors",
        ("tests/test_eq12_inner_loss.py",),
    ),
    Equation(
        "8",
        "online gradient step M_t = M_{t−1} − θ_t ∇ℓ",
        "titans.ops.recurrence.memory_recurrence_reference / _chunked",
        ("tests/test_eq08_online_gradient_descent.py",),
    ),
    Equation(
        "10/14",
        "surprise with momentum S_t = η_t S_{t−1} − θ_t ∇ℓ",
        "titans.ops.recurrence.memory_recurrence_reference / _chunked",
        ("tests/test_eq10_14_momentum.py",),
    ),
    Equation(
        "13",
        "forgetting M_t = (1 − α_t) M_{t−1} + S_t",
        "titans.ops.recurrence.memory_recurrence_reference / _chunked",
        ("tests/test_eq13_forgetting.py",),
    ),
    Equation(
        "15",
        "retrieval y_t = M_t(q_t) without update (decision 4)",
        "titans.ops.memory_mlp.memory_forward, NeuralMemory.retrieve",
        ("tests/test_eq15_retrieval.py",),
    ),
    Equation(
        "16/17",
        "chunked form: gradients at the chunk-start weights; linear memory as one matmul",
        "titans.ops.recurrence.memory_recurrence_chunked",
        ("tests/test_eq16_17_chunked.py",),
    ),
    Equation(
        "18",
        "momentum inside a chunk as a b×b mixing matrix in log space (closed form)",
        "titans.ops.recurrence.chunk_mixing",
        ("tests/test_eq18_mixing.py",),
    ),
    Equation(
        "closed form",
        "chunk-parallel == token-by-token: outputs, state, gradients; gradcheck",
        "titans.ops.recurrence.memory_recurrence_chunked",
        ("tests/test_chunked_vs_reference.py",),
    ),
    Equation(
        "state",
        "exact continuation at any split; step == one call",
        "titans.layers.neural_memory.NeuralMemory.forward / step",
        ("tests/test_state.py",),
    ),
    Equation(
        "D8",
        "causality: output i never depends on inputs after i",
        "titans.layers.neural_memory.NeuralMemory",
        ("tests/test_causality.py",),
    ),
    Equation(
        "D5",
        "inner state fp32 under bf16 autocast",
        "titans.layers.neural_memory.NeuralMemory.forward",
        ("tests/test_precision.py",),
    ),
)


def find_tests_root(start: Path | None = None) -> Path:
    """The repository root holding ``tests/``: the current directory or the source checkout."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "tests" / "test_eq12_inner_loss.py").is_file():
            return root
    raise FileNotFoundError(
        "titans verify needs the project's tests/ folder (run it from a source checkout); looked in "
        + ", ".join(str(c) for c in candidates)
    )


def _outcomes(report: Path) -> dict[str, str]:
    """Per test file: 'passed', 'failed' or 'skipped', from a JUnit XML report."""
    status: dict[str, str] = {}
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        key = f"tests/{module}.py::{case.get('name', '').split('[')[0]}"
        for k in (key, f"tests/{module}.py"):
            if rank[outcome] >= rank.get(status.get(k, "passed"), 0):
                status[k] = outcome
    return status


def verify(root: Path | None = None) -> int:
    """Run every equation's tests and print a table of their status; returns a process exit code."""
    root = find_tests_root(root)
    nodes = sorted({t for eq in EQUATIONS for t in eq.tests})
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *nodes]
        subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if not report.is_file():
            print("could not run pytest (is it installed? `uv sync` installs the dev tools)", file=sys.stderr)
            return 2
        outcomes = _outcomes(report)
    failed = 0
    print(f"{'eq':<12} {'status':<8} what  [code]")
    for eq in EQUATIONS:
        status = [outcomes.get(t, "missing") for t in eq.tests]
        verdict = "passed" if all(s == "passed" for s in status) else "FAILED"
        failed += verdict != "passed"
        print(f"{eq.id:<12} {verdict:<8} {eq.what}  [{eq.code}]")
    print(f"\n{len(EQUATIONS) - failed}/{len(EQUATIONS)} equations verified")
    return 1 if failed else 0
