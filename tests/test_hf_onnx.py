"""The single-token decode step: the fixed-shape PyTorch step equals TitansLM for every variant, and its ONNX
export run with onnxruntime gives PyTorch's logits over a generated sequence."""

from __future__ import annotations

import pytest
import torch

from test_hf_helpers import SMALL, one_thread  # noqa: F401  (fixture)
from titans.models import TitansConfig, TitansLM

pytestmark = pytest.mark.usefixtures("one_thread")

ABLATED = dict(persistent_tokens=0, momentum=False, decay=False, conv=False, memory_depth=1)


def native(variant: str, **extra: object) -> TitansLM:
    torch.manual_seed(0)
    return TitansLM(TitansConfig(variant=variant, **{**SMALL, **extra})).eval()


CASES = [(v, {}) for v in ("mac", "mag", "mal", "lmm", "swa", "transformer")]
CASES += [("mac", ABLATED), ("mag", ABLATED), ("mac", {"memory_layers": (1,)}), ("mal", {"memory_layers": (0,)})]


@pytest.mark.parametrize(("variant", "extra"), CASES, ids=[f"{v}-{'-'.join(e) or 'full'}" for v, e in CASES])
def test_decode_step_equals_the_model_token_by_token(variant, extra):
    from titans.hf.decode_step import decode_step_for, flatten_state

    model = native(variant, **extra)
    step, flat = decode_step_for(model, batch_size=2, max_cache_len=40)
    ids = torch.randint(0, 48, (2, 13), generator=torch.Generator().manual_seed(1))
    state = None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], state)
            logits, flat = step.step(ids[:, t : t + 1], flat)
            assert torch.allclose(logits, out.logits[:, -1], rtol=1e-4, atol=1e-5), f"token {t}"
            state = out.state
        # a state read by the model in one call converts to the same tensors
        converted = flatten_state(model, model(ids).state, 40)
    logits_a, _ = step.step(ids[:, :1], converted)
    logits_b, _ = step.step(ids[:, :1], flat)
    assert torch.allclose(logits_a, logits_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["mac", "mag"])
def test_onnx_decode_step_matches_pytorch_over_a_generated_sequence(tmp_path, variant):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from titans.hf.onnx_export import OnnxDecoder, export_decode_step

    model = native(variant)
    path = export_decode_step(model, tmp_path / "step.onnx")
    decoder = OnnxDecoder(path)
    prompt = torch.randint(0, 48, (1, 3), generator=torch.Generator().manual_seed(2))
    new_tokens, step_logits, _ = decoder.greedy(prompt, decoder.initial_state(model), max_new_tokens=13)
    with torch.no_grad():
        reference = model.generate(prompt, 13, temperature=0.0)
        expected = model(reference.sequences).logits[0]
    assert torch.equal(new_tokens, reference.new_tokens)
    for t, logits in enumerate(step_logits[:-1]):
        assert torch.allclose(logits[0], expected[t], rtol=1e-4, atol=1e-4), f"position {t}"
    # continuing a prompt read by PyTorch in one call
    with torch.no_grad():
        state = decoder.state_from(model, model(prompt).state)
        logits, _ = decoder.step(reference.new_tokens[:, :1], state)
    assert torch.allclose(logits[0], expected[prompt.shape[1]], rtol=1e-4, atol=1e-4)
