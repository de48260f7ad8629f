"""Every variant is one causal function: one call == split calls with the state == token-by-token stepping
== greedy generation, in float64 (TITANS.md decisions 4, 6, 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from titans.models import VARIANTS, TitansConfig, TitansLM, load_state, save_state
from titans.models.lm import TitansState

VOCAB = 50
LENGTH = 20
SPLITS = ((0, 7), (7, 8), (8, 13), (13, 20))  # inside memory chunks (3), MAC segments (6), SWA windows (5)


def tiny_config(variant: str, **overrides: object) -> TitansConfig:
    values: dict[str, object] = dict(
        vocab_size=VOCAB, dim=16, depth=2, heads=2, memory_heads=2, memory_expansion=2, chunk_size=3,
        segment_len=6, window=5, persistent_tokens=2, mlp_hidden=24, variant=variant,
    )  # fmt: skip
    values.update(overrides)
    return TitansConfig(**values)  # type: ignore[arg-type]


CONFIGS = {variant: tiny_config(variant) for variant in VARIANTS} | {
    "mac_partial_memory": tiny_config("mac", memory_layers=(1,), persistent_tokens=0),
    "mag_ablated": tiny_config("mag", persistent_tokens=0, momentum=False, decay=False, conv=False, memory_depth=1),
    "mal_partial_memory": tiny_config("mal", memory_layers=(0,), window=1),
    "lmm_deep_primed": tiny_config("lmm", memory_depth=3, persistent_tokens=4),
    "transformer_persistent": tiny_config("transformer", persistent_tokens=3),
}


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny shapes run fastest, and steadiest on a busy machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(config: TitansConfig, seed: int = 0) -> TitansLM:
    torch.manual_seed(seed)
    return TitansLM(config).double()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request: pytest.FixtureRequest) -> TitansLM:
    return build(CONFIGS[request.param])


def tokens(batch: int = 2, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def run_pieces(model: TitansLM, ids: torch.Tensor, pieces: list[tuple[int, int]]) -> tuple[torch.Tensor, TitansState]:
    state, logits = None, []
    for start, end in pieces:
        out = model(ids[:, start:end], state=state)
        state = out.state
        logits.append(out.logits)
    assert state is not None
    return torch.cat(logits, dim=1), state


def test_causal(model: TitansLM) -> None:
    ids = tokens()
    reference = model(ids).logits
    for j in (0, 6, 11, LENGTH - 1):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % VOCAB
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], reference[:, :j], rtol=0, atol=1e-12)
        assert not torch.allclose(logits[:, j:], reference[:, j:])


def test_split_calls_and_stepping_match_one_call(model: TitansLM) -> None:
    ids = tokens()
    reference = model(ids).logits
    split, split_state = run_pieces(model, ids, list(SPLITS))
    stepped, step_state = run_pieces(model, ids, [(t, t + 1) for t in range(LENGTH)])
    torch.testing.assert_close(split, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(stepped, reference, rtol=0, atol=1e-10)
    assert split_state.position == step_state.position == LENGTH
    # the two states continue identically
    more = tokens(length=4, seed=2)
    torch.testing.assert_close(
        model(more, state=split_state).logits, model(more, state=step_state).logits, rtol=0, atol=1e-10
    )


def test_greedy_generation_is_argmax_stepping(model: TitansLM) -> None:
    prompt = tokens(length=5)
    generated = model.generate(prompt, max_new_tokens=12, temperature=0.0)
    out = model(prompt)
    expected = [prompt]
    for _ in range(12):
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        expected.append(token)
        out = model(token, state=out.state)
    torch.testing.assert_close(generated.sequences, torch.cat(expected, dim=1))
    assert generated.new_tokens.shape == (2, 12)
    # the returned state covers every returned token
    follow = tokens(length=3, seed=3)
    torch.testing.assert_close(
        model(follow, state=generated.state).logits,
        model(torch.cat([generated.sequences, follow], dim=1)).logits[:, -3:],
        rtol=0,
        atol=1e-10,
    )


def test_sampling_is_reproducible_with_a_generator(model: TitansLM) -> None:
    prompt = tokens(length=3)
    runs = [
        model.generate(prompt, 6, temperature=0.8, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0].sequences, runs[1].sequences)


def test_state_round_trip_through_safetensors(model: TitansLM, tmp_path: Path) -> None:
    ids = tokens()
    _, state = run_pieces(model, ids, [(0, 13)])
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    loaded = load_state(path, model)
    assert loaded.position == 13
    rest = ids[:, 13:]
    torch.testing.assert_close(model(rest, state=loaded).logits, model(rest, state=state).logits, rtol=0, atol=0)


def test_state_from_another_configuration_is_refused(tmp_path: Path) -> None:
    model = build(CONFIGS["mag"])
    other = build(tiny_config("mag", window=4))
    state = model(tokens()).state
    with pytest.raises(ValueError, match="different configuration"):
        other(tokens(), state=state)
    save_state(state, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="saved for configuration"):
        load_state(tmp_path / "s.safetensors", other)
    with pytest.raises(ValueError, match="batch size"):
        model(tokens(batch=3), state=state)
    with pytest.raises(TypeError, match="TitansState"):
        model(tokens(), state=state.layers[0])  # type: ignore[arg-type]


def test_detached_state_continues_without_the_graph() -> None:
    model = TitansLM(tiny_config("mac"))
    state = model(tokens()).state.detach()
    loss = model(tokens(seed=4), state=state, labels=tokens(seed=5)).loss
    assert loss is not None
    loss.backward()  # only this call's graph


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_keeps_attention_caches_bounded(variant: str) -> None:
    config = tiny_config(variant)
    model = build(config)
    initial = model.initial_state(2)
    generated = model.generate(
        tokens(length=7), max_new_tokens=30, temperature=1.0, generator=torch.Generator().manual_seed(0)
    )
    total = 7 + 30
    for layer, before in zip(generated.state.layers, initial.layers):
        caches = [c.length for c in (layer.cache, layer.context) if c is not None]
        if variant == "transformer":
            assert caches == [total]
        elif variant == "mac":
            assert all(n == total % config.segment_len for n in caches)
        else:
            assert all(n <= config.window - 1 for n in caches)
        if layer.memory is not None:  # the memory is a fixed-size state
            assert before.memory is not None
            shapes = [tuple(w.shape) for w in layer.memory.recurrent.weights]
            assert shapes == [tuple(w.shape) for w in before.memory.recurrent.weights]
