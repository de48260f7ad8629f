"""Eq. 18 and TITANS.md's closed form: the momentum recurrence inside a chunk as a b×b mixing matrix,
computed in log space, equals the scan S_t = η_t S_{t−1} − θ_t u_t, M_t = (1 − α_t) M_{t−1} + S_t."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans.ops.recurrence import chunk_mixing


@pytest.mark.parametrize("momentum", [True, False])
def test_mixing_matrix_equals_scan(momentum):
    n = 7
    x = make_inputs(length=n, momentum=momentum, heads=1, batch=1)
    lr, log_eta, log_keep = x.lr[0, 0], x.log_momentum, x.log_retain[0, 0]
    mix = chunk_mixing(lr, None if log_eta is None else log_eta[0, 0], log_keep)
    eta = torch.zeros(n, dtype=lr.dtype) if log_eta is None else log_eta[0, 0].exp()
    keep = log_keep.exp()
    # Scan with scalar "weights": symbolic coefficients of M_0, S_0 and each u_r.
    m_coef = torch.zeros(n + 2, dtype=lr.dtype)  # [M_0, S_0, u_1..u_n]
    s_coef = torch.zeros(n + 2, dtype=lr.dtype)
    m_coef[0], s_coef[1] = 1.0, 1.0
    for t in range(n):
        u = torch.zeros(n + 2, dtype=lr.dtype)
        u[2 + t] = 1.0
        s_coef = eta[t] * s_coef - lr[t] * u
        m_coef = keep[t] * m_coef + s_coef
        assert_close(mix.retain[t], m_coef[0], what="D_{1:t}")
        assert_close(-mix.grad_mix[t], m_coef[2:], what=f"row {t} of W θ")
        if momentum:
            assert_close(mix.carry[t], m_coef[1], what="c_t")
            assert_close(mix.momentum_decay[t], s_coef[1], what="A_{1:t}")
            assert_close(-mix.momentum_mix[t], s_coef[2:], what="A_{r+1:t} θ_r")


def test_mixing_is_stable_for_long_chunks_and_strong_decay():
    """Log-space products: no overflow or NaN with tiny η and (1 − α) over a long chunk, in fp32."""
    n = 256
    lr = torch.full((n,), 0.5)
    log_small = torch.full((n,), -30.0)
    mix = chunk_mixing(lr, log_small, log_small)
    for t in (mix.retain, mix.carry, mix.grad_mix, mix.momentum_mix):
        assert torch.isfinite(t).all()
    assert torch.all(mix.grad_mix.triu(1) == 0), "the mixing matrix must be lower triangular"
