"""On a CUDA GPU (skips on CPU): every variant runs in fp32 and under bf16 autocast, one call agrees with
split calls and stepping, and generation keeps its caches bounded."""

from __future__ import annotations

import pytest
import torch

from titans.models import VARIANTS, TitansLM, preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _config(variant: str):  # type: ignore[no-untyped-def]
    return preset(
        "tiny", variant, dim=64, heads=4, chunk_size=8, segment_len=16, window=16, persistent_tokens=4, vocab_size=97
    )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_call_split_and_stepping_agree_on_gpu(variant: str) -> None:
    torch.manual_seed(0)
    model = TitansLM(_config(variant)).cuda()
    ids = torch.randint(0, 97, (2, 53), device="cuda")
    reference = model(ids).logits
    state, pieces = None, []
    for start, end in ((0, 21), (21, 22), (22, 40), (40, 53)):
        out = model(ids[:, start:end], state=state)
        state, pieces = out.state, [*pieces, out.logits]
    assert _relative(torch.cat(pieces, 1), reference) < 1e-4
    state, steps = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], state=state)
        state, steps = out.state, [*steps, out.logits]
    assert _relative(torch.cat(steps, 1), reference) < 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_trains_and_generates_on_gpu(variant: str) -> None:
    torch.manual_seed(0)
    model = TitansLM(_config(variant)).cuda()
    ids = torch.randint(0, 97, (2, 70), device="cuda")
    full = model(ids).logits
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, labels=ids.roll(-1, 1))
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert _relative(out.logits, full) < 5e-2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        generated = model.generate(ids[:, :5], 40, temperature=0.0)
    assert generated.sequences.shape == (2, 45)
    if variant != "transformer":
        for layer in generated.state.layers:
            for cache in (layer.cache, layer.context):
                assert cache is None or cache.length < 16


@pytest.mark.parametrize("variant", ["transformer", "swa", "mac"])
def test_decoding_steps_avoid_cudnn_attention(variant: str) -> None:
    """cuDNN attention builds a plan for every new key length (~10 ms per call on an H100): a decoding step, whose
    cache grows by one key per token, must run on another backend."""
    from torch.profiler import ProfilerActivity, profile

    model = TitansLM(_config(variant)).cuda().eval()
    ids = torch.randint(0, 97, (1, 20), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        state = model(ids).state
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                state = model(ids[:, :1], state=state).state
    names = {event.key for event in prof.key_averages()}
    assert any("scaled_dot_product" in name for name in names), "no attention call was profiled"
    assert not [name for name in names if "cudnn_attention" in name]
