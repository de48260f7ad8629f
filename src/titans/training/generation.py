"""Continue a prompt with a trained checkpoint (the memory carries through the prompt and every new token)."""

from __future__ import annotations

from pathlib import Path

import torch

from titans.training.checkpoint import read_checkpoint_config, resolve_checkpoint
from titans.training.corpus import run_tokenizer
from titans.training.distributed import choose_device
from titans.training.evaluate import load_model
from titans.training.precision import autocast


def generate_text(
    checkpoint_path: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> str:
    """The continuation (new text only) of ``prompt`` sampled from the checkpoint at ``checkpoint_path``.

    ``temperature`` 0 decodes greedily; ``seed`` makes sampling repeatable.
    """
    checkpoint = resolve_checkpoint(checkpoint_path)
    config = read_checkpoint_config(checkpoint)
    tokenizer = run_tokenizer(config)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one character")
    torch_device = choose_device(device if device != "auto" else config.train.device)
    model = load_model(checkpoint, config, torch_device)
    generator = None if seed is None else torch.Generator(torch_device).manual_seed(seed)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=torch_device)
    with autocast(config.train.precision, torch_device):
        generation = model.generate(
            input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
    return tokenizer.decode(generation.new_tokens[0].tolist())
