"""MemoryAugmentedLM: a Titans memory on a tiny random Llama (and GPT-2) — the memory changes while reading,
training makes it recall a fact stated segments earlier, save/load, distillation and ``titans distill``."""

from __future__ import annotations

import argparse
import json
import math

import pytest

pytest.importorskip("transformers")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from test_hf_helpers import one_thread  # noqa: F401  (fixture)
from titans.hf.augmented import MemoryAugmentConfig, MemoryAugmentedLM
from titans.hf.commands import add_hf_commands
from titans.hf.distill import DistillConfig, distill, distillation_loss

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def tiny_llama(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def augmented(mode: str = "gate", seed: int = 0, **options: object) -> MemoryAugmentedLM:
    config = MemoryAugmentConfig(mode=mode, **{"segment_len": 8, "chunk_size": 4, **options})  # type: ignore[arg-type]
    torch.manual_seed(seed + 1)
    return MemoryAugmentedLM(tiny_llama(seed), config)


def tokens(batch: int = 2, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["gate", "context"])
def test_memory_weights_change_while_reading(mode):
    model = augmented(mode)
    before = model.initial_state(2)
    with torch.no_grad():
        out = model(tokens())
    assert out.logits.shape == (2, 24, VOCAB) and out.state.position == 24
    for w0, w1 in zip(before.memory.recurrent.weights, out.state.memory.recurrent.weights):
        assert (w1 - w0).abs().max() > 1e-3
    with torch.no_grad():  # the state carries the document: continuing equals reading at once
        first = model(tokens()[:, :16])
        rest = model(tokens()[:, 16:], state=first.state)
    assert torch.allclose(torch.cat([first.logits, rest.logits], 1), out.logits, atol=1e-5)


def test_gate_zero_leaves_the_base_model_unchanged_and_memory_matters_later():
    model = augmented("gate", gate_init=0.0)
    ids = tokens(length=8)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model.base(ids).logits, atol=1e-6)
        model.gate.fill_(1.0)
        assert not torch.allclose(model(ids).logits, model.base(ids).logits, atol=1e-3)


def test_frozen_base_trains_only_the_memory():
    model = augmented("context", freeze_base=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("base.") for n in names)
    model(tokens(), labels=tokens()).loss.backward()
    assert model.memory.to_keys.weight.grad is not None and model.memory.to_keys.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_other_model_families_work(family):
    torch.manual_seed(0)
    if family == "gpt2":
        base = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    else:
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
        base = Qwen2ForCausalLM(config)
    model = MemoryAugmentedLM(base, MemoryAugmentConfig(segment_len=8, chunk_size=4))
    out = model(tokens(), labels=tokens())
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("mode", ["gate", "context"])
def test_save_and_load(tmp_path, mode):
    model = augmented(mode)
    with torch.no_grad():
        model.gate.fill_(0.5)
    model.save_pretrained(tmp_path)
    loaded = MemoryAugmentedLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)


# ------------------------------------------------------------------------------------------------ recall

SEGMENT, VALUES = 8, 8


def recall_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment 0: "k v" then filler; segment 1: filler; segment 2: filler then "k v". Only the final v is scored:
    the base model sees one segment at a time, so without the memory the best loss is log(VALUES)."""
    key = torch.randint(10, 26, (batch, 1), generator=generator)
    value = torch.randint(30, 30 + VALUES, (batch, 1), generator=generator)

    def filler(n: int) -> torch.Tensor:
        return torch.randint(40, VOCAB, (batch, n), generator=generator)

    ids = torch.cat([key, value, filler(2 * SEGMENT - 2 + SEGMENT - 2), key, value], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    return ids, labels


def test_training_makes_the_memory_recall_a_fact_from_two_segments_back():
    model = augmented("gate", memory_depth=1, gate_init=1.0, freeze_base=False, segment_len=SEGMENT, chunk_size=SEGMENT)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    train, held_out = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    eval_ids, eval_labels = recall_batch(64, held_out)

    def recall_loss() -> float:
        with torch.no_grad():
            return float(model(eval_ids, eval_labels).loss)

    before = recall_loss()
    for _ in range(100):
        ids, labels = recall_batch(16, train)
        loss = model(ids, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = recall_loss()
    chance = math.log(VALUES)  # the best any model without a memory across segments can do
    assert before > chance
    assert after < 0.5 * chance, f"recall loss {before:.3f} → {after:.3f} (no-memory floor {chance:.3f})"


# ------------------------------------------------------------------------------------------------ distillation


def test_distillation_reduces_the_kl_to_the_teacher():
    teacher = tiny_llama(seed=5)
    student = augmented("gate", gate_init=1.0)
    rows = tokens(batch=8, length=24, seed=3)
    with torch.no_grad():
        start = float(distillation_loss(student(rows).logits, teacher(rows).logits, 2.0))
    losses = distill(student, teacher, rows, DistillConfig(steps=40, batch_size=4, lr=1e-2, temperature=2.0))
    with torch.no_grad():
        end = float(distillation_loss(student(rows).logits, teacher(rows).logits, 2.0))
    assert len(losses) == 40 and end < 0.8 * start
    assert not any(p.requires_grad for p in student.base.parameters())


def test_distill_command_end_to_end(tmp_path):
    base_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_llama(seed=0, vocab=256).save_pretrained(base_dir)
    tiny_llama(seed=1, vocab=256).save_pretrained(teacher_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"document {i}: " + "the sky is blue. " * 8}) for i in range(6)))
    parser = argparse.ArgumentParser()
    add_hf_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["distill", "--student", str(base_dir), "--teacher", str(teacher_dir), "--data", str(data),
                              "--out", str(tmp_path / "out"), "--steps", "3", "--batch-size", "2", "--seq-len", "32",
                              "--segment-len", "16"])  # fmt: skip
    assert args.run(args) == 0
    model = MemoryAugmentedLM.from_pretrained(tmp_path / "out")
    assert model.config.segment_len == 16
    again = ["distill", "--student", str(tmp_path / "out"), "--teacher", str(teacher_dir), "--data", str(data)]
    args = parser.parse_args([*again, "--out", str(tmp_path / "out2"), "--steps", "1", "--seq-len", "32"])
    assert args.run(args) == 0
