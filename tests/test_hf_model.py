"""TitansForCausalLM: save/load, AutoModel registration, generate() against the native decoder, beam search,
conversion from/to native checkpoints."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("transformers")

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from test_hf_helpers import SMALL, one_thread  # noqa: F401  (fixture)
from titans.hf.commands import add_hf_commands
from titans.hf.configuration import TitansHFConfig
from titans.hf.convert import hf_to_native, load_native, native_to_hf
from titans.hf.modeling import TitansCache, TitansForCausalLM
from titans.models import TitansConfig, TitansLM

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(variant: str = "mac", seed: int = 0, **extra: object) -> TitansForCausalLM:
    torch.manual_seed(seed)
    config = TitansHFConfig(variant=variant, **{**SMALL, **extra})
    return TitansForCausalLM(config).eval()


def prompt(batch: int = 2, length: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def test_config_round_trips_every_titans_field(tmp_path):
    config = TitansHFConfig.from_titans_config(TitansConfig(**SMALL, variant="mag", memory_layers=(1,)))
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TitansHFConfig)
    assert loaded.titans_config == config.titans_config
    assert loaded.hidden_size == SMALL["dim"] and loaded.num_hidden_layers == SMALL["depth"]


def test_bad_config_is_refused_with_the_field_name():
    with pytest.raises(ValueError, match="heads"):
        TitansHFConfig(dim=30, heads=4)


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_give_equal_logits(tmp_path, tie):
    model = make_model("mag", tie_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, TitansForCausalLM)
    ids = prompt()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    if tie:
        assert loaded.model.lm_head.weight.data_ptr() == loaded.model.embed.weight.data_ptr()


def test_forward_matches_the_native_model_and_hf_label_convention():
    model = make_model("mac")
    ids = prompt()
    with torch.no_grad():
        out = model(ids, labels=ids)
        native = model.model(ids[:, :-1], labels=ids[:, 1:])
    assert torch.allclose(out.logits[:, :-1], native.logits, atol=1e-6)
    assert torch.allclose(out.loss, native.loss, atol=1e-6)
    assert isinstance(out.past_key_values, TitansCache) and out.past_key_values.get_seq_length() == ids.shape[1]


def test_cache_continues_the_sequence_exactly():
    model = make_model("mal")
    ids = prompt(length=14)
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :9], use_cache=True)
        rest = model(ids[:, 9:], past_key_values=first.past_key_values)
    assert torch.allclose(torch.cat([first.logits, rest.logits], 1), whole, atol=1e-5)


@pytest.mark.parametrize("variant", ["mac", "mag", "lmm", "transformer"])
def test_greedy_generate_equals_native_streaming_decode(variant):
    model = make_model(variant)
    ids = prompt()
    generated = model.generate(ids, max_new_tokens=12, do_sample=False)
    native = model.model.generate(ids, 12, temperature=0.0)
    assert torch.equal(generated, native.sequences)


def test_beam_search_with_the_memory_cache_equals_beam_search_without_cache():
    model = make_model("mac")
    ids = prompt()
    options = dict(max_new_tokens=7, num_beams=3, do_sample=False, num_return_sequences=2)
    with_cache = model.generate(ids, use_cache=True, **options)
    recomputed = model.generate(ids, use_cache=False, **options)
    assert with_cache.shape == (4, ids.shape[1] + 7)
    assert torch.equal(with_cache, recomputed)


def test_sampling_with_the_cache_equals_sampling_without():
    model = make_model("mag")
    ids = prompt()
    options = dict(max_new_tokens=8, do_sample=True, top_k=10, temperature=0.9)
    torch.manual_seed(3)
    with_cache = model.generate(ids, **options)
    torch.manual_seed(3)
    recomputed = model.generate(ids, use_cache=False, **options)
    assert torch.equal(with_cache, recomputed)


def test_padding_is_refused():
    model = make_model("mac")
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        model(prompt(), attention_mask=mask)


def _native_checkpoint(tmp_path, variant: str = "mag"):
    from titans.training.checkpoint import save_checkpoint
    from titans.training.config import RunConfig

    torch.manual_seed(0)
    native = TitansLM(TitansConfig(variant=variant, **SMALL)).eval()
    directory = save_checkpoint(tmp_path / "run" / "last", native.state_dict(), RunConfig(model=native.config), step=5)
    return native, directory


def test_native_checkpoint_converts_to_hf_and_back(tmp_path):
    pytest.importorskip("titans.training.checkpoint")
    native, _ = _native_checkpoint(tmp_path)
    model = native_to_hf(tmp_path / "run", tmp_path / "hf")
    ids = prompt()
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "hf")(ids).logits, native(ids).logits)
    hf_to_native(tmp_path / "hf", tmp_path / "back")
    back = load_native(tmp_path / "back")
    for name, tensor in native.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert model.config.titans_config == native.config


def test_tokenizer_travels_with_the_conversion(tmp_path):
    pytest.importorskip("titans.training.checkpoint")
    from titans.config_io import read_yaml

    make_model("lmm").save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    hf_to_native(tmp_path / "hf", tmp_path / "native")
    assert (tmp_path / "native" / "tokenizer.json").read_text() == "{}"
    assert read_yaml(tmp_path / "native" / "config.yaml")["data"]["tokenizer"] == str(
        tmp_path / "native" / "tokenizer.json"
    )


def test_importing_titans_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, titans, titans.hf, titans.hf.commands; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_plain_titans_config_yaml_is_accepted(tmp_path):
    import yaml
    from safetensors.torch import save_file

    torch.manual_seed(0)
    native = TitansLM(TitansConfig(variant="lmm", **SMALL))
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(native.config.to_dict()))
    assert load_native(tmp_path).config == native.config


def test_convert_command(tmp_path):
    pytest.importorskip("titans.training.checkpoint")
    native, directory = _native_checkpoint(tmp_path, "mac")
    parser = argparse.ArgumentParser()
    add_hf_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(directory), str(tmp_path / "hf")])
    assert args.run(args) == 0
    converted = TitansForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.equal(converted.model.embed.weight, native.embed.weight)
