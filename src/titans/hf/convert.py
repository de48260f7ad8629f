"""Conversion between native training checkpoints and Hugging Face model folders.

A native checkpoint (written by ``titans train``) is a folder with ``model.safetensors`` (the
:class:`~titans.models.TitansLM` ``state_dict``) and ``config.yaml`` (a run config whose ``model`` section is a
:class:`~titans.models.TitansConfig`, or a plain TitansConfig mapping); a run folder holding ``best/`` or
``last/`` is accepted too. A Hugging Face folder has ``config.json`` (``model_type: titans``) and
``model.safetensors`` with the same tensors under ``model.``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from titans.config_io import load_config, read_yaml
from titans.hf.configuration import TitansHFConfig
from titans.hf.modeling import TitansForCausalLM
from titans.models import TitansConfig, TitansLM

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def native_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder meant by ``path``: itself, or ``best/`` / ``last/`` of a run folder."""
    path = Path(path).expanduser()
    for candidate in (path, path / "best", path / "last"):
        if (candidate / MODEL_FILE).is_file() and _config_file(candidate) is not None:
            return candidate
    raise FileNotFoundError(
        f"no native Titans checkpoint at {path}: expected {MODEL_FILE} and {CONFIG_FILE} there or in best/ or last/"
    )


def _config_file(directory: Path) -> Path | None:
    for candidate in (directory / CONFIG_FILE, directory.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def model_config_from_mapping(data: Mapping[str, Any]) -> TitansConfig:
    """A TitansConfig from a run config mapping (its ``model`` section) or from a plain TitansConfig mapping."""
    section = data.get("model", data)
    if not isinstance(section, Mapping):
        raise ValueError(f"the 'model' section of the config must be a mapping; got {type(section).__name__}")
    return load_config(TitansConfig, section)


def read_native_config(path: str | Path) -> TitansConfig:
    """The model configuration of a native checkpoint."""
    directory = native_checkpoint_dir(path)
    config_file = _config_file(directory)
    assert config_file is not None
    return model_config_from_mapping(read_yaml(config_file))


def load_native(path: str | Path, device: str | torch.device = "cpu") -> TitansLM:
    """The :class:`TitansLM` of a native checkpoint, weights loaded (tied weights may be stored once)."""
    directory = native_checkpoint_dir(path)
    model = TitansLM(read_native_config(directory))
    tensors = load_file(str(directory / MODEL_FILE), device="cpu")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{directory / MODEL_FILE}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    return model.to(device).eval()


def native_to_hf(src: str | Path, dst: str | Path | None = None, **hf_options: Any) -> TitansForCausalLM:
    """A :class:`TitansForCausalLM` with the weights of the native checkpoint ``src`` (saved to ``dst`` if given)."""
    native = load_native(src)
    model = from_titans_lm(native, **hf_options)
    if dst is not None:
        model.save_pretrained(str(dst))
    return model


def from_titans_lm(native: TitansLM, **hf_options: Any) -> TitansForCausalLM:
    """Wrap a native model's weights (copied) into a :class:`TitansForCausalLM`."""
    config = TitansHFConfig.from_titans_config(native.config, **hf_options)
    model = TitansForCausalLM(config)
    model.model.load_state_dict(native.state_dict())
    return model.eval()


def hf_to_native(src: str | Path | TitansForCausalLM, dst: str | Path) -> Path:
    """Write the Hugging Face model ``src`` (a folder or a model) as a native checkpoint folder ``dst``, in the
    format of ``titans train`` (``model.safetensors`` with its metadata, ``config.yaml`` with a run config).
    A ``tokenizer.json`` in the folder ``src`` is copied along and named in the run config's ``data.tokenizer``."""
    from titans.training.checkpoint import save_checkpoint
    from titans.training.config import DataConfig, RunConfig

    model = src if isinstance(src, TitansForCausalLM) else TitansForCausalLM.from_pretrained(str(src))
    native = model.model
    dst = Path(dst).expanduser().resolve()
    tokenizer = None if isinstance(src, TitansForCausalLM) else Path(src) / "tokenizer.json"
    has_tokenizer = tokenizer is not None and tokenizer.is_file()
    data = DataConfig(tokenizer=str(dst / "tokenizer.json")) if has_tokenizer else DataConfig()
    save_checkpoint(dst, native.state_dict(), RunConfig(model=native.config, data=data), step=0)
    if has_tokenizer:
        assert tokenizer is not None
        shutil.copy(tokenizer, dst / "tokenizer.json")
    return dst


def is_hf_folder(path: str | Path) -> bool:
    """True for a Hugging Face model folder (``config.json`` present)."""
    return (Path(path) / "config.json").is_file()


def convert(src: str | Path, dst: str | Path, to: str | None = None) -> Path:
    """Convert ``src`` to the other format (``to``: ``"hf"`` or ``"native"``; default: the one ``src`` is not)."""
    target = to or ("native" if is_hf_folder(src) else "hf")
    if target == "hf":
        native_to_hf(src, dst)
    elif target == "native":
        hf_to_native(src, dst)
    else:
        raise ValueError(f"unknown target format {target!r}; choose 'hf' or 'native'")
    return Path(dst)


__all__ = [
    "convert",
    "from_titans_lm",
    "hf_to_native",
    "is_hf_folder",
    "load_native",
    "model_config_from_mapping",
    "native_checkpoint_dir",
    "native_to_hf",
    "read_native_config",
]
