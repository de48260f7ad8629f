"""Bad input gets a clear error that names the problem."""

import pytest
import torch

from titans import NeuralMemory


@pytest.fixture(scope="module")
def mem():
    return NeuralMemory(8, heads=2, chunk_size=4)


def test_wrong_rank(mem):
    with pytest.raises(ValueError, match=r"\(batch, time, dim=8\).*\(3, 8\)"):
        mem(torch.randn(3, 8))


def test_wrong_width(mem):
    with pytest.raises(ValueError, match=r"dim=8.*\(1, 5, 7\)"):
        mem(torch.randn(1, 5, 7))


def test_integer_input(mem):
    with pytest.raises(TypeError, match="floating-point"):
        mem(torch.ones(1, 5, 8, dtype=torch.long))


def test_non_finite_input(mem):
    x = torch.randn(1, 5, 8)
    x[0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mem(x)


def test_dim_not_divisible():
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=4"):
        NeuralMemory(10, heads=4)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fast"}, "impl"),
        ({"depth": 0}, "depth"),
    ],
)
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        NeuralMemory(8, heads=2, **kw)


def test_state_from_another_configuration(mem):
    other = NeuralMemory(8, heads=2, chunk_size=4, depth=3)
    _, state = other(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="different configuration"):
        mem(torch.randn(1, 3, 8), state)


def test_state_with_another_batch_size(mem):
    _, state = mem(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="batch size 2"):
        mem(torch.randn(1, 3, 8), state)


def test_state_of_wrong_type(mem):
    with pytest.raises(TypeError, match="NeuralMemoryState"):
        mem(torch.randn(1, 3, 8), state=(1, 2))


def test_input_checks_off_skips_the_synchronising_checks_and_restores_them():
    """TitansLM.input_checks_off (tracing, CUDA-graph capture): no token-range or NaN check inside, back after,
    also when the block raises; the shape check stays."""
    from titans.models import TitansLM, preset

    model = TitansLM(preset("tiny", "mac", vocab_size=50))
    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    assert memories and model.config.check_inputs and all(m.check_inputs for m in memories)
    with pytest.raises(RuntimeError, match="boom"), model.input_checks_off():
        assert not model.config.check_inputs and not any(m.check_inputs for m in memories)
        nan_input = torch.full((1, 3, memories[0].dim), float("nan"))
        memories[0](nan_input)  # no "NaN or Inf" error while the checks are off
        with pytest.raises(ValueError, match="must be a \\(batch, time\\) tensor"):
            model(torch.ones(3, dtype=torch.long))
        raise RuntimeError("boom")
    assert model.config.check_inputs and all(m.check_inputs for m in memories)
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[1, 60]]))
