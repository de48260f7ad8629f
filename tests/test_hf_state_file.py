"""Memory-state files: a model's full state after a document, saved and loaded; wrong versions and wrong
configurations are refused with clear errors; reset gives the state of a new sequence."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from test_hf_helpers import SMALL, one_thread  # noqa: F401  (fixture)
from titans.hf.configuration import TitansHFConfig
from titans.hf.modeling import TitansCache, TitansForCausalLM
from titans.hf.state_file import MemoryStateError, MemoryStateFile
from titans.models import TitansConfig, TitansLM

pytestmark = pytest.mark.usefixtures("one_thread")


def native(variant: str = "mac", **extra: object) -> TitansLM:
    torch.manual_seed(0)
    return TitansLM(TitansConfig(variant=variant, **{**SMALL, **extra})).eval()


def document(length: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 48, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["mac", "mag", "swa"])
def test_saved_state_continues_the_document_exactly(tmp_path, variant):
    model = native(variant)
    with torch.no_grad():
        state = model(document()).state
        path = MemoryStateFile.save(state, tmp_path / "doc.safetensors")
        loaded = MemoryStateFile.load(path, model)
        follow = document(5, seed=1)
        assert torch.allclose(model(follow, state=loaded).logits, model(follow, state=state).logits, atol=1e-6)
    info = MemoryStateFile.info(path)
    assert (info.version, info.fingerprint, info.position, info.batch_size) == (1, model.fingerprint, 13, 2)


def test_hf_model_reads_saves_and_resumes_through_its_cache(tmp_path):
    torch.manual_seed(0)
    model = TitansForCausalLM(TitansHFConfig(variant="mal", **SMALL)).eval()
    cache = model.read(document())
    MemoryStateFile.save(cache, tmp_path / "s.safetensors")
    resumed = TitansCache(MemoryStateFile.load(tmp_path / "s.safetensors", model))
    follow = document(4, seed=2)
    with torch.no_grad():
        expected = model(follow, past_key_values=cache).logits
        assert torch.allclose(model(follow, past_key_values=resumed).logits, expected, atol=1e-6)


def test_state_of_another_configuration_is_refused(tmp_path):
    with torch.no_grad():
        state = native("mac")(document()).state
    MemoryStateFile.save(state, tmp_path / "s.safetensors")
    with pytest.raises(MemoryStateError, match="fingerprint"):
        MemoryStateFile.load(tmp_path / "s.safetensors", native("mac", chunk_size=8))


def _rewrite_metadata(path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = {**(handle.metadata() or {}), **changes}
    save_file(tensors, str(path), metadata=metadata)


def test_other_format_version_is_refused(tmp_path):
    model = native()
    path = MemoryStateFile.save(model(document()).state, tmp_path / "s.safetensors")
    _rewrite_metadata(path, format="titans-state/2")
    with pytest.raises(MemoryStateError, match="version 2"):
        MemoryStateFile.load(path, model)


def test_files_that_are_not_states_are_refused(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "weights.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MemoryStateError, match="not a Titans memory-state file"):
        MemoryStateFile.info(tmp_path / "weights.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MemoryStateError):
        MemoryStateFile.info(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        MemoryStateFile.info(tmp_path / "missing.safetensors")
    with pytest.raises(MemoryStateError, match="empty"):
        MemoryStateFile.save(TitansCache(), tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_reset_gives_a_fresh_sequence():
    model = native("mag")
    follow = document(6, seed=3)
    with torch.no_grad():
        fresh = MemoryStateFile.reset(model, batch_size=2)
        assert torch.equal(model(follow, state=fresh).logits, model(follow).logits)
