"""``TitansHFConfig``: a Hugging Face configuration (``model_type = "titans"``) that carries every field of
:class:`~titans.models.TitansConfig`, so ``config.json`` written by ``save_pretrained`` rebuilds the model."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

from titans.models import TitansConfig
from titans.models.config import config_fields


class TitansHFConfig(PretrainedConfig):
    """The fields of :class:`TitansConfig` as attributes (defaults: TitansConfig's), plus the usual Hugging Face
    options (``use_cache``, token ids, ...). ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` and
    ``tie_word_embeddings`` are aliases of ``dim``, ``depth``, ``heads`` and ``tie_embeddings``.

    Build one with ``TitansHFConfig(variant="mac", dim=64, ...)`` or :meth:`from_titans_config`; read the
    native configuration back with :attr:`titans_config`.
    """

    model_type = "titans"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "dim",
        "num_hidden_layers": "depth",
        "num_attention_heads": "heads",
        "tie_word_embeddings": "tie_embeddings",
    }

    def __init__(self, use_cache: bool = True, **kwargs: Any) -> None:
        # A plain __init__ (not dataclass fields) works with the classic and the dataclass-based configs of
        # transformers 5.x alike; the Titans fields are ordinary attributes, serialised from __dict__.
        defaults = TitansConfig().to_dict()
        for name in sorted(config_fields()):
            value = kwargs.pop(name, defaults[name])
            setattr(self, name, list(value) if isinstance(value, tuple) else value)
        self.use_cache = use_cache
        super().__init__(**kwargs)
        self.titans_config.validate()

    @property
    def titans_config(self) -> TitansConfig:
        """The native :class:`TitansConfig` these attributes describe."""
        return TitansConfig.from_dict({name: getattr(self, name) for name in config_fields()})

    @classmethod
    def from_titans_config(cls, config: TitansConfig, **kwargs: Any) -> TitansHFConfig:
        """A Hugging Face configuration for ``config``; ``kwargs`` are further Hugging Face options."""
        return cls(**config.to_dict(), **kwargs)


__all__ = ["TitansHFConfig"]
