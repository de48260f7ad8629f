"""Eq. 13: forgetting, M_t = (1 − α_t) M_{t−1} + S_t."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans.ops.recurrence import memory_recurrence_chunked, memory_recurrence_reference


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_zero_learning_rate_only_decays(impl):
    """With θ = 0 and S_0 = 0 the memory only forgets: M_T = Π(1 − α_t) M_0, for any chunk size."""
    x = make_inputs(depth=2, length=10)
    x.lr.zero_()
    _, state = impl(*x.args(), x.state(), 3)
    factor = x.log_retain.sum(-1).exp()[..., None, None]
    for w, w0 in zip(state.weights, x.initial_weights):
        assert_close(w, factor * w0, what="decayed weights")


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_full_forgetting_erases_the_past(impl):
    """α_t = 1 at token t: M_t = S_t, so what came before t reaches the output only through momentum."""
    x = make_inputs(depth=1, momentum=False, length=6)
    x.log_retain[:, :, 3] = -1e4  # (1 − α_3) = 0
    x.lr[:, :, 3:] = 0.0  # no writes from token 3 on: M_t = 0 from t = 3 (S = −θu = 0)
    y, state = impl(*x.args(), x.state(), 2)
    assert y[:, :, 3:].abs().max() < 1e-12
    assert state.weights[0].abs().max() < 1e-12


def test_no_decay_equals_zero_alpha():
    x = make_inputs(depth=2, length=9)
    y0, _ = memory_recurrence_chunked(*x.args()[:5], None, x.state(), 4)
    y1, _ = memory_recurrence_chunked(*x.args()[:5], torch.zeros_like(x.log_retain), x.state(), 4)
    assert_close(y0, y1)
