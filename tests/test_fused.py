"""The fused path (whole chunks, hand-written backward) against the chunked closed form.

``backend="torch"`` (chunk_vjp in a chunk loop) is checked in float64; ``backend="triton"`` runs the Triton
kernels — interpreted on the CPU (``TRITON_INTERPRET=1``, set below before Triton compiles anything) at tiny
shapes, compiled on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from titans.ops.fused import memory_recurrence_fused, triton_available
from titans.ops.memory_mlp import memory_layer_shapes
from titans.ops.recurrence import RecurrentState, memory_recurrence_chunked


def _inputs(depth, length, *, momentum=True, decay=True, batch=2, heads=2, d=4, expansion=2, dtype=torch.float64,
            device="cpu", seed=0, lr_scale=1.0):  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    q, k, v = (torch.nn.functional.normalize(rnd(batch, heads, length, d), dim=-1) for _ in range(3))
    lr = lr_scale * torch.sigmoid(rnd(batch, heads, length) - 1.0)
    log_momentum = torch.nn.functional.logsigmoid(rnd(batch, heads, length) + 1.5) if momentum else None
    log_retain = torch.nn.functional.logsigmoid(rnd(batch, heads, length) + 3.0) if decay else None
    initial = [rnd(heads, a, b, scale=a**-0.5) for a, b in memory_layer_shapes(d, depth, expansion)]
    leaves = [t.requires_grad_(True) for t in (q, k, v, lr, log_momentum, log_retain, *initial) if t is not None]
    return (q, k, v, lr, log_momentum, log_retain), initial, leaves


def _run(fn, gates_qkv, initial, leaves, chunk, offset=0, anchored=False, **kw):
    """Outputs, final state and gradients of a random functional of both, after an optional warm-up prefix.
    ``anchored``: the forget gate decays towards M_0 (decision 9)."""
    q, k, v, lr, lm, lret = gates_qkv
    batch = q.shape[0]
    state = RecurrentState.initial(initial, batch, lm is not None)
    anchor = initial if anchored else None
    if offset:
        _, state = memory_recurrence_chunked(
            *(None if t is None else t[:, :, :offset] for t in (q, k, v, lr, lm, lret)), state, chunk, anchor=anchor
        )
    rest = (None if t is None else t[:, :, offset:] for t in (q, k, v, lr, lm, lret))
    y, final = fn(*rest, state, chunk, anchor=anchor, **kw)
    tensors = [y, *final.weights, *(final.momentum or ())]
    g = torch.Generator().manual_seed(7)
    probes = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in tensors]
    loss = sum((t * p).sum() for t, p in zip(tensors, probes))
    grads = torch.autograd.grad(loss, leaves)
    return [t.detach() for t in tensors], grads, final.offset


CASES = [  # depth, length, chunk, offset, momentum, decay, checkpoint_every
    (2, 24, 4, 0, True, True, 1),
    (2, 27, 4, 2, True, True, 2),
    (2, 30, 3, 1, True, False, 3),
    (1, 26, 4, 0, True, True, 2),
    (2, 20, 5, 0, False, True, 8),
    (1, 17, 1, 0, False, False, 4),
]


@pytest.mark.parametrize("anchored", [False, True], ids=["towards-0", "towards-M0"])
@pytest.mark.parametrize(("depth", "length", "chunk", "offset", "momentum", "decay", "every"), CASES)
def test_torch_backend_matches_chunked(depth, length, chunk, offset, momentum, decay, every, anchored):
    args = _inputs(depth, length, momentum=momentum, decay=decay)
    expected, expected_grads, expected_offset = _run(memory_recurrence_chunked, *args, chunk, offset, anchored)
    actual, grads, actual_offset = _run(
        memory_recurrence_fused, *args, chunk, offset, anchored, backend="torch", checkpoint_every=every
    )
    assert actual_offset == expected_offset
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)


def _max_error(a, b) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


def _assert_close_scaled(actual, expected, fp32, tol, names):
    """max |a − b| ≤ max(tol · max |b|, 3 · max |fp32 − b|) per tensor (errors scale with the tensor)."""
    for name, a, b, c in zip(names, actual, expected, fp32):
        err, bound = _max_error(a, b), max(tol * b.abs().max().item(), 3 * _max_error(c, b))
        assert err <= bound, f"{name}: max error {err:.3e} > allowed {bound:.3e} (fp32 chunked: {_max_error(c, b):.3e})"


def _names(depth: int, momentum: bool) -> tuple[list[str], list[str]]:
    """Names of the compared outputs (y, W…, S…) and gradients (inputs, gates, M_0 layers)."""
    layers = [str(i + 1) for i in range(depth)] if depth > 1 else [""]
    names = ["y", *(f"W{i}" for i in layers), *((f"S{i}" for i in layers) if momentum else ())]
    gates = ["lr", "log_momentum", "log_retain"] if momentum else ["lr", "log_retain"]
    return names, ["q", "k", "v", *gates, *(f"M0{i}" for i in layers)]


TRITON_CASES = [  # depth, length, chunk, offset, momentum, decay, checkpoint_every
    (2, 48, 16, 0, True, True, 1),
    (2, 40, 8, 3, True, True, 2),
    (2, 36, 6, 0, False, True, 4),
    (1, 48, 16, 0, True, True, 1),
    (1, 43, 8, 3, True, True, 2),
    (1, 36, 6, 0, False, True, 4),
]


def _compare_triton(
    depth, length, chunk, offset, momentum, decay, every, precision, tol, device, batch=1, d=16, anchored=False
):
    """Triton (fp32 state) against the float64 chunked path, allowed the larger of ``tol`` × scale and 3× the
    error of the exact fp32 chunked path (the recurrence amplifies rounding, whichever path rounds)."""
    kw = {"momentum": momentum, "decay": decay, "d": d, "expansion": 4, "batch": batch}
    expected, expected_grads, _ = _run(
        memory_recurrence_chunked, *_inputs(depth, length, device=device, **kw), chunk, offset, anchored
    )
    args32 = _inputs(depth, length, dtype=torch.float32, device=device, **kw)
    fp32, fp32_grads, _ = _run(memory_recurrence_chunked, *args32, chunk, offset, anchored)
    actual, grads, _ = _run(
        memory_recurrence_fused, *args32, chunk, offset, anchored,
        backend="triton", checkpoint_every=every, precision=precision,
    )  # fmt: skip
    names, grad_names = _names(depth, momentum)
    assert len(names) == len(actual) and len(grad_names) == len(grads)
    _assert_close_scaled(actual, expected, fp32, tol, names)
    _assert_close_scaled(grads, expected_grads, fp32_grads, 10 * tol, grad_names)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize(("depth", "length", "chunk", "offset", "momentum", "decay", "every"), TRITON_CASES)
def test_triton_backend_matches_chunked(depth, length, chunk, offset, momentum, decay, every):
    """Tiny shapes: interpreted on the CPU, compiled on a GPU; exact fp32 products (relative error ~1e-5)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _compare_triton(depth, length, chunk, offset, momentum, decay, every, "ieee", 2e-5, device)


ANCHOR_CASES = [  # depth, length, chunk, offset, momentum, checkpoint_every
    (2, 40, 8, 3, True, 2),
    (2, 36, 6, 0, False, 1),
    (1, 43, 8, 3, True, 2),
]


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("precision", ["ieee", "tf32"])
@pytest.mark.parametrize(("depth", "length", "chunk", "offset", "momentum", "every"), ANCHOR_CASES)
def test_triton_forgetting_towards_the_initial_weights(depth, length, chunk, offset, momentum, every, precision):
    """Decision 9 (decay_target="initial"): the kernels with the anchor M_0, whose gradient (summed over the
    batch) joins M_0's gradient through the initial state. The tf32 kernels arrange some products differently
    (to save shared memory); the interpreter computes them in fp32, so the same tolerance checks their math."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tol = 2e-5 if precision == "ieee" or device == "cpu" else 1e-2
    _compare_triton(depth, length, chunk, offset, momentum, True, every, precision, tol, device, 2, anchored=True)


def test_anchor_changes_the_function():
    """The anchored recurrence is not the plain one (so the anchor tests above can fail)."""
    args = _inputs(2, 12, d=4)
    plain, _, _ = _run(memory_recurrence_chunked, *args, 4)
    anchored, _, _ = _run(memory_recurrence_chunked, *args, 4, anchored=True)
    assert _max_error(plain[0], anchored[0]) > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["ieee", "tf32"])
@pytest.mark.parametrize(
    ("depth", "split"), [(1, 1), (2, 1), (2, 2), (2, 8)], ids=["depth1", "depth2", "depth2-split2", "depth2-split8"]
)
@pytest.mark.parametrize(("length", "chunk", "offset", "every"), [(120, 16, 0, 3), (160, 64, 5, 1)])
def test_triton_kernels_on_gpu(length, chunk, offset, every, depth, split, precision, monkeypatch):
    """The benchmark's head size (64, hidden 256), compiled, in fp32 and in tf32 products; depth 2 also with
    ``split`` programs per (batch, head), each owning hidden / split columns and exchanging the sums that pass
    through a LayerNorm.

    Short sequences on purpose: with random gates the recurrence is chaotic — the fp32 chunked path itself
    drifts from float64 by O(1) after ~500 tokens — so only short stretches can be compared to float64.
    """
    tol = 2e-5 if precision == "ieee" else 1e-2
    monkeypatch.setenv("TITANS_FUSED_SPLIT", str(split))
    for anchored in (False, True):
        _compare_triton(depth, length, chunk, offset, True, True, every, precision, tol, "cuda", 2, 64, anchored)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_split_programs_run_in_waves(monkeypatch):
    """More split programs than the GPU holds at once (64 × 16 (batch, head) × 8): groups start in ticket order,
    so none waits for a member that cannot start; the result is the unsplit kernels' (fp32 products)."""
    kw = {"d": 64, "expansion": 4, "batch": 64}
    args = _inputs(2, 48, dtype=torch.float32, device="cuda", **kw)
    results = []
    for split in (1, 8):
        monkeypatch.setenv("TITANS_FUSED_SPLIT", str(split))
        results.append(_run(memory_recurrence_fused, *args, 16, 0, True, backend="triton", checkpoint_every=2))
    (unsplit, unsplit_grads, _), (split_out, split_grads, _) = results
    for a, b in zip([*split_out, *split_grads], [*unsplit, *unsplit_grads]):
        assert _max_error(a, b) <= 1e-4 * b.abs().max().item()


def test_split_programs_are_refused_where_they_cannot_run(monkeypatch):
    """Interpreted programs run one after another, so split ones would wait forever: a clear error instead; and a
    split must divide the hidden width into whole blocks."""
    from titans.ops.fused import split_programs

    monkeypatch.setenv("TITANS_FUSED_SPLIT", "2")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        split_programs(1, 64, 16, 16, torch.device("cpu"))
    monkeypatch.setenv("TITANS_FUSED_SPLIT", "3")
    with pytest.raises(ValueError, match="power-of-two"):
        split_programs(1, 96, 16, 16, torch.device("cuda"))
    monkeypatch.setenv("TITANS_FUSED_SPLIT", "8")
    with pytest.raises(ValueError, match="whole 32-column blocks"):
        split_programs(1, 128, 32, 16, torch.device("cuda"))
    monkeypatch.setenv("TITANS_FUSED_SPLIT", "2")
    assert split_programs(1, 128, 32, 16, torch.device("cuda")) == 2
    monkeypatch.delenv("TITANS_FUSED_SPLIT")
    assert split_programs(1, 128, 32, 16, torch.device("cpu")) == 1


def test_auto_split_keeps_every_program_resident():
    """Split while (batch, head) × split programs all fit at once, into whole blocks of hidden columns."""
    from titans.ops.fused import auto_split

    assert auto_split(128, 256, 32, resident=264) == 2  # the issue-6 shape on an H100: 256 programs
    assert auto_split(48, 256, 32, resident=264) == 4
    assert auto_split(16, 256, 32, resident=264) == 8  # one sequence: 8 parts of 32 columns, no more
    assert auto_split(16, 64, 32, resident=264) == 2
    assert auto_split(200, 256, 32, resident=264) == 1


def test_more_programs_than_sms_take_four_warps_so_two_share_an_sm():
    from titans.ops.fused import program_warps

    assert program_warps(192, 16, 1, 132, default=8) == 4  # configs/small.yaml: one wave, not two
    assert program_warps(128, 16, 1, 132, default=8) == 8  # the issue-6 shape unsplit: one per SM
    assert program_warps(128, 16, 2, 132, default=8) == 4  # split programs: always two per SM
    assert program_warps(192, 64, 1, 132, default=8) == 8  # 64-row chunks: not measured, unchanged


def test_chunks_over_32_rows_split_only_one_program_per_sm():
    from titans.ops.fused import auto_split, resident_programs

    assert resident_programs(16, 132) == 264
    assert auto_split(128, 256, 32, resident_programs(64, 132)) == 1  # the issue-6 shape: slower split
    assert auto_split(16, 256, 32, resident_programs(64, 132)) == 8  # one long sequence: faster split


def test_auto_never_runs_the_triton_interpreter_on_the_cpu():
    from titans.layers.neural_memory import NeuralMemory

    q = torch.zeros(1, 2, 4, 16)
    assert NeuralMemory(32, heads=2, impl="auto")._dispatch(q) == ("chunked", "torch")
    assert NeuralMemory(32, heads=2, impl="fused")._dispatch(q)[0] == "fused"
    assert NeuralMemory(32, heads=2, impl="chunked")._dispatch(q) == ("chunked", "torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_selects_the_triton_kernels_of_gpu_tested_depths_only():
    from titans.layers.neural_memory import AUTO_TRITON_DEPTHS, NeuralMemory

    q = torch.zeros(1, 2, 4, 16, device="cuda")
    for depth in (1, 2):
        expected = ("fused", "triton") if depth in AUTO_TRITON_DEPTHS else ("chunked", "torch")
        assert NeuralMemory(32, heads=2, depth=depth, impl="auto")._dispatch(q) == expected
        assert NeuralMemory(32, heads=2, depth=depth, impl="fused")._dispatch(q) == ("fused", "triton")
