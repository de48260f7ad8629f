"""Eq. 15 and decision 4: y_t = M_t(q_t), the weights after token t's update; retrieval itself writes nothing."""

import pytest

from conftest import assert_close, make_inputs
from titans.ops.memory_mlp import memory_forward
from titans.ops.recurrence import memory_recurrence_chunked, memory_recurrence_reference


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
@pytest.mark.parametrize("chunk_size", [1, 4])
def test_output_is_retrieval_with_weights_after_token(impl, chunk_size):
    x = make_inputs(depth=2, length=9)
    y, _ = impl(*x.args(), x.state(), chunk_size)
    for t in range(9):
        _, prefix_state = impl(
            x.queries[:, :, : t + 1],
            x.keys[:, :, : t + 1],
            x.values[:, :, : t + 1],
            x.lr[:, :, : t + 1],
            x.log_momentum[:, :, : t + 1],
            x.log_retain[:, :, : t + 1],
            x.state(),
            chunk_size,
        )
        expected = memory_forward(prefix_state.weights, x.queries[:, :, t, None]).squeeze(-2)
        assert_close(y[:, :, t], expected, what=f"token {t}")


def test_retrieval_does_not_change_the_weights():
    x = make_inputs(depth=2, length=4)
    state = x.state()
    before = [w.clone() for w in state.weights]
    memory_forward(state.weights, x.queries)
    for a, b in zip(state.weights, before):
        assert_close(a, b)
