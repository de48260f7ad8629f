"""The `titans verify` registry, docs/equations.md and the test files stay in step; the demo really learns."""

from pathlib import Path

import pytest

from titans.demo import recall_error
from titans.equations import EQUATIONS, _outcomes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("equation", EQUATIONS, ids=lambda e: e.id)
def test_every_registered_test_exists(equation):
    for node in equation.tests:
        path, _, name = node.partition("::")
        source = (ROOT / path).read_text()
        assert not name or f"def {name}(" in source, f"{node} does not exist"


def test_docs_list_every_equation():
    docs = (ROOT / "docs" / "equations.md").read_text()
    for equation in EQUATIONS:
        for node in equation.tests:
            assert Path(node.split("::")[0]).name in docs, f"docs/equations.md does not mention {node}"


def test_outcomes_parser(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_a" name="test_x[1]"/>'
        '<testcase classname="tests.test_a" name="test_y"><failure message="boom"/></testcase>'
        "</testsuite></testsuites>"
    )
    outcomes = _outcomes(report)
    assert outcomes["tests/test_a.py::test_x"] == "passed"
    assert outcomes["tests/test_a.py::test_y"] == "failed"
    assert outcomes["tests/test_a.py"] == "failed"


def test_demo_deep_memory_holds_more_pairs_than_linear():
    """The demo's claim: past d pairs a linear memory saturates while the deep memory keeps recalling."""
    _, linear_after = recall_error(pairs=64, head_dim=32, depth=1, passes=16, lr=0.4)
    _, deep_after = recall_error(pairs=64, head_dim=32, depth=2, passes=16, lr=0.05)
    _, few_after = recall_error(pairs=16, head_dim=32, depth=1, passes=16, lr=0.4)
    assert few_after < 0.1, "a linear memory should store 16 pairs in 32 dimensions"
    assert deep_after < 0.6 * linear_after
