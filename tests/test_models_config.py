"""Configuration, presets, parameter counts, ablation switches and clear errors."""

from __future__ import annotations

import pytest
import torch

from titans.models import (
    ABLATIONS,
    PAPER_PRESETS,
    VARIANTS,
    TitansConfig,
    TitansLM,
    count_parameters,
    nominal_parameters,
    parameter_breakdown,
    preset,
)
from titans.models.blocks import LMMBlock, MACBlock, MAGBlock, MALBlock
from titans.models.presets import meta_model

PAPER_SHAPES = {"170M": (12, 768, 16), "340M": (24, 1024, 16), "760M": (24, 1536, 16), "1.3B": (18, 2048, 8)}


@pytest.mark.parametrize("size", PAPER_PRESETS)
def test_paper_presets_have_the_nominal_size(size: str) -> None:
    nominal = nominal_parameters(size)
    assert nominal is not None
    for variant in VARIANTS:
        config = preset(size, variant)
        assert (config.depth, config.dim, config.heads, config.vocab_size) == (*PAPER_SHAPES[size], 32000)
        count = count_parameters(meta_model(config))
        assert abs(count - nominal) <= 0.05 * nominal, f"{size} {variant}: {count:,}"


def test_small_preset_is_between_10_and_20_million() -> None:
    for variant in VARIANTS:
        config = preset("small", variant)
        assert config.vocab_size == 256
        assert 10e6 <= count_parameters(meta_model(config)) <= 20e6


def test_parameter_count_convention() -> None:
    """Embedding and untied head both count; a tied head adds nothing."""
    untied, tied = (preset("tiny", "lmm", tie_embeddings=t) for t in (False, True))
    n_untied, n_tied = count_parameters(TitansLM(untied)), count_parameters(TitansLM(tied))
    assert n_untied - n_tied == untied.vocab_size * untied.dim
    model = TitansLM(untied)
    groups = parameter_breakdown(model)
    assert sum(groups.values()) == n_untied
    assert groups["embedding"] == groups["output head"] == untied.vocab_size * untied.dim
    assert count_parameters(model, embeddings=False) == n_untied - 2 * untied.vocab_size * untied.dim
    assert "neural memory" in model.summary()


def test_variants_build_the_blocks_they_claim() -> None:
    kinds = {"mac": MACBlock, "mag": MAGBlock, "mal": MALBlock, "lmm": LMMBlock}
    for variant, kind in kinds.items():
        assert all(isinstance(b, kind) for b in TitansLM(preset("tiny", variant)).blocks)
    for variant in ("transformer", "swa"):
        model = TitansLM(preset("tiny", variant))
        assert not any("memory" in name for name, _ in model.named_parameters())
    partial = TitansLM(preset("tiny", "mag", memory_layers=(1,)))
    assert [isinstance(b, MAGBlock) for b in partial.blocks] == [False, True]


def _memory(model: TitansLM):  # type: ignore[no-untyped-def]
    return model.blocks[0].memory


def test_ablation_switches_change_what_they_claim() -> None:
    base = TitansLM(preset("tiny", "mag"))
    assert any("persistent_tokens" in name for name, _ in base.named_parameters())

    no_persistent = TitansLM(preset("tiny", "mag", ablations=["no_persistent_memory"]))
    assert not any("persistent" in name for name, _ in no_persistent.named_parameters())
    assert no_persistent.persistent_prefixes() == [None, None]

    shapes = {
        d: [tuple(w.shape) for w in _memory(TitansLM(preset("tiny", "lmm", memory_depth=d))).initial_weights]
        for d in (1, 2, 4)
    }
    assert shapes[1] == [(2, 16, 16)]  # linear memory: one d×d matrix per head
    assert shapes[2] == [(2, 16, 32), (2, 32, 16)]
    assert len(shapes[4]) == 4

    assert _memory(base).to_momentum is not None
    assert _memory(TitansLM(preset("tiny", "mag", ablations=["no_momentum"]))).to_momentum is None
    assert _memory(TitansLM(preset("tiny", "mag", ablations=["no_weight_decay"]))).to_forget is None
    assert _memory(TitansLM(preset("tiny", "mag", ablations=["no_conv"]))).convs is None
    assert _memory(TitansLM(preset("tiny", "mag", ablations=["linear_memory"]))).depth == 1
    assert set(ABLATIONS) == {"linear_memory", "no_conv", "no_momentum", "no_weight_decay", "no_persistent_memory"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"variant": "mamba"}, "variant"),
        ({"heads": 3}, "heads"),
        ({"dim": 30, "heads": 10}, "heads"),  # odd head_dim: RoPE needs pairs
        ({"variant": "mac", "segment_len": 0}, "segment_len"),
        ({"variant": "mac", "segment_len": 6, "chunk_size": 4}, "segment_len"),
        ({"variant": "swa", "window": 0}, "window"),
        ({"variant": "mag", "window": -1}, "window"),
        ({"memory_depth": 5}, "memory_depth"),
        ({"memory_depth": 0}, "memory_depth"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"memory_heads": 3}, "memory_heads"),
        ({"impl": "triton"}, "impl"),
        ({"decay_target": "one"}, "decay_target"),
        ({"memory_checkpoint_chunks": -1}, "memory_checkpoint_chunks"),
        ({"persistent_tokens": -1}, "persistent_tokens"),
        ({"variant": "lmm", "memory_layers": (0,)}, "memory_layers"),
        ({"variant": "mag", "memory_layers": (2,)}, "memory_layers"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_validation_names_the_bad_field(overrides: dict[str, object], field: str) -> None:
    config = TitansConfig(**{**preset("tiny", "mac").to_dict(), **overrides})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"TitansConfig.{field}"):
        config.validate()
    with pytest.raises(ValueError, match=field):
        TitansLM(config)


def test_unknown_options_and_presets_are_refused() -> None:
    with pytest.raises(ValueError, match="windw"):
        preset("tiny", "swa", windw=3)
    with pytest.raises(ValueError, match="windw"):
        TitansConfig.from_dict({"windw": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("7B", "mac")
    with pytest.raises(ValueError, match="unknown ablation"):
        preset("tiny", "mac", ablations=["no_attention"])
    with pytest.raises(ValueError, match="variant"):
        preset("tiny", "transformerxl")
    config = TitansConfig.from_dict(preset("tiny", "mal").to_dict())
    assert config.fingerprint() == preset("tiny", "mal").fingerprint()
    assert config.fingerprint() != preset("tiny", "mal", window=4).fingerprint()
    assert config.fingerprint() == preset("tiny", "mal", impl="reference").fingerprint()


@pytest.fixture(scope="module")
def model() -> TitansLM:
    return TitansLM(preset("tiny", "mac", vocab_size=20))


def test_token_ids_out_of_range_name_the_id_and_the_vocabulary(model: TitansLM) -> None:
    ids = torch.tensor([[1, 2, 25, 3]])
    with pytest.raises(ValueError, match=r"token id 25 .*vocab_size 20"):
        model(ids)
    with pytest.raises(ValueError, match=r"token id -1 .*vocab_size 20"):
        model(torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match="token id 20"):
        model.generate(torch.tensor([[20]]), 3)


def test_wrong_inputs_are_refused(model: TitansLM) -> None:
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(1, 3, dtype=torch.long), labels=torch.zeros(1, 2, dtype=torch.long))
    prompt = torch.zeros(1, 2, dtype=torch.long)
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"max_new_tokens": -1}):
        with pytest.raises(ValueError):
            model.generate(prompt, **{"max_new_tokens": 2, **kwargs})  # type: ignore[arg-type]


def test_loss_ignores_minus_100(model: TitansLM) -> None:
    ids = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, :-1].flatten())
    assert out.loss is not None
    torch.testing.assert_close(out.loss, expected)
    none = model(ids, labels=torch.full_like(ids, -100)).loss
    assert none is not None and float(none.detach()) == 0.0


def test_config_and_layer_accept_the_same_options() -> None:
    """models.config keeps its own copies (it imports no torch); they must match NeuralMemory's."""
    from titans.layers import neural_memory
    from titans.models import config

    assert config.IMPLS == neural_memory.IMPLS
    assert config.DECAY_TARGETS == neural_memory.DECAY_TARGETS


def test_memory_checkpointing_and_compiling_change_no_results() -> None:
    """memory_checkpoint_chunks recomputes chunks in backward: same loss and gradients, same fingerprint; so does
    memory_compile_chunk_step (not run here: compiling takes a minute on the CPU), which reaches every layer."""
    base = preset("tiny", "lmm", vocab_size=20, memory_depth=3, chunk_size=2, impl="chunked")
    checkpointed = TitansConfig(**{**base.to_dict(), "memory_checkpoint_chunks": 2})
    assert checkpointed.fingerprint() == base.fingerprint()
    ids = torch.randint(0, 20, (2, 11), generator=torch.Generator().manual_seed(1))
    results = []
    for config in (base, checkpointed):
        torch.manual_seed(0)
        model = TitansLM(config).double()
        loss = model(ids, labels=ids.roll(-1, dims=1)).loss
        assert loss is not None
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    memories = [m for m in TitansLM(checkpointed).modules() if hasattr(m, "checkpoint_chunks")]
    assert memories and all(m.checkpoint_chunks == 2 for m in memories)
    compiled = TitansConfig(**{**base.to_dict(), "memory_compile_chunk_step": True})
    assert compiled.fingerprint() == base.fingerprint()  # the same function (tests/test_chunked_vs_reference.py)
    layers = [m for m in TitansLM(compiled).modules() if hasattr(m, "compile_chunk_step")]
    assert layers and all(m.compile_chunk_step for m in layers)
    torch.testing.assert_close(results[0][0], results[1][0])
    for plain, recomputed in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(plain, recomputed)
