"""``TitansForCausalLM``: a :class:`~titans.models.TitansLM` as a Hugging Face ``PreTrainedModel`` with
``save_pretrained`` / ``from_pretrained`` (safetensors), ``AutoModelForCausalLM`` registration and
``generate()`` (greedy, sampling, beam search) that carries the neural memory in a :class:`TitansCache`.

How generation carries the state. Like Mamba's cache in ``transformers`` 5, the model builds its own cache on the
first call (``_supports_default_dynamic_cache`` is False) and returns it as ``past_key_values``; ``generate``
then feeds only the new token with it. The cache holds one :class:`~titans.models.TitansState`: the memory
weights and momentum of every block, the convolution caches and the bounded attention caches (sliding window,
MAC segment). It cannot be cropped (a memory that has learned a token cannot unlearn it), so assisted decoding
is not supported; beam search works through :meth:`TitansCache.reorder_cache`, which reorders every tensor of
the state by beam index.

Titans models have no padding: every row is read from its first token, so an ``attention_mask`` with zeros is
refused with an error (generate rows of different lengths separately).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from titans.hf.configuration import TitansHFConfig
from titans.hf.state_tree import repeat_batch, select_batch
from titans.models import TitansLM, TitansState
from titans.models.lm import IGNORE_INDEX, language_model_loss


class TitansCache(Cache):
    """The running :class:`TitansState` of a batch of sequences (None before the first token).

    It is a ``transformers`` ``Cache`` without per-layer key/value lists: the state is one object whose
    tensors all have the batch as their first dimension, so beam search and batch expansion are row selections.
    """

    def __init__(self, state: TitansState | None = None):
        super().__init__(layers=[])
        self.state = state

    def __repr__(self) -> str:
        where = "empty" if self.state is None else f"position={self.state.position}, batch={self.state.batch_size}"
        return f"TitansCache({where})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens read so far."""
        return 0 if self.state is None else self.state.position

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no maximum: the state has a fixed size (bounded caches) or grows (Transformer++ baseline)

    @property
    def batch_size(self) -> int:
        return -1 if self.state is None else self.state.batch_size

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def is_croppable(self) -> bool:
        return False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the new state is row ``beam_idx[i]`` of the old one."""
        if self.state is not None:
            self.state = select_batch(self.state, beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.reorder_cache(indices)  # type: ignore[arg-type]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self.state = repeat_batch(self.state, repeats)

    def reset(self) -> None:
        """Forget everything read: the next call starts new sequences."""
        self.state = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a Titans memory state cannot be cropped (the memory has already learned the tokens)")

    def update(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("TitansCache is updated by TitansForCausalLM as a whole, not per attention layer")


class TitansPreTrainedModel(PreTrainedModel):
    """Common Hugging Face plumbing of the Titans models."""

    config_class = TitansHFConfig
    config: TitansHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]  # noqa: RUF012

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: :class:`TitansLM` initialises its own parameters when it is built (its scheme, not HF's)."""


class TitansForCausalLM(TitansPreTrainedModel, GenerationMixin):
    """A Titans language model (any variant) for ``transformers``: ``self.model`` is the native
    :class:`TitansLM`, whose ``state_dict`` keys appear under ``model.``.

    ``forward`` follows the Hugging Face conventions: ``labels`` are *not* shifted (``labels[:, t]`` is the
    token at position t; the loss predicts it from the tokens before), ``past_key_values`` is a
    :class:`TitansCache` that continues the sequences exactly.
    """

    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}  # noqa: RUF012

    def __init__(self, config: TitansHFConfig):
        super().__init__(config)
        self.model = TitansLM(config.titans_config)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own TitansCache on the first call (as Mamba does)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.lm_head = value

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: TitansCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        logits_to_keep: int | Tensor = 0,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple[Any, ...]:
        """Logits (B, T, vocab) of ``input_ids`` continuing ``past_key_values``; the updated cache when
        ``use_cache`` (default: the config's) or when a cache was given; a tuple when ``return_dict`` is False."""
        if inputs_embeds is not None:
            raise NotImplementedError("TitansForCausalLM reads token ids only (inputs_embeds is not supported)")
        if input_ids is None:
            raise ValueError("TitansForCausalLM.forward needs input_ids")
        _check_no_padding(attention_mask)
        cache = _as_cache(past_key_values)
        keep_last = isinstance(logits_to_keep, int) and logits_to_keep == 1
        out = self.model(input_ids, state=None if cache is None else cache.state, last_logits_only=keep_last)
        logits = out.logits if keep_last else _keep_logits(out.logits, logits_to_keep)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            cache = TitansCache()
        if cache is not None:
            cache.state = out.state
        loss = None if labels is None else self._loss(out.logits, labels)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()

    @staticmethod
    def _loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of ``labels[:, t + 1]`` given the logits at t (labels ≠ -100)."""
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        return language_model_loss(logits, shifted)

    # ------------------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int = 1) -> TitansCache:
        """A cache holding the state before the first token (memories primed with the persistent tokens)."""
        return TitansCache(self.model.initial_state(batch_size))

    @torch.no_grad()
    def read(self, input_ids: Tensor, cache: TitansCache | None = None) -> TitansCache:
        """Read a document (B, T) into the memory and return the cache after it (continuing ``cache``)."""
        cache = cache if cache is not None else TitansCache()
        cache.state = self.model(input_ids, state=cache.state, last_logits_only=True).state
        return cache


def _as_cache(past_key_values: Any) -> TitansCache | None:
    if past_key_values is None or isinstance(past_key_values, TitansCache):
        return past_key_values
    if isinstance(past_key_values, Cache) and past_key_values.get_seq_length() == 0:
        return TitansCache()  # an empty generic cache someone made for us: replace it
    raise TypeError(f"past_key_values must be a TitansCache (or None); got {type(past_key_values).__name__}")


def _check_no_padding(attention_mask: Tensor | None) -> None:
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            "TitansForCausalLM does not support padding (the memory reads every token of a row): pass rows of "
            "equal length without padding, or generate them one at a time"
        )


def _keep_logits(logits: Tensor, logits_to_keep: int | Tensor) -> Tensor:
    if isinstance(logits_to_keep, Tensor):
        return logits[:, logits_to_keep]
    return logits if logits_to_keep == 0 else logits[:, -logits_to_keep:]


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``model_type = "titans"`` (idempotent)."""
    AutoConfig.register("titans", TitansHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(TitansHFConfig, TitansForCausalLM, exist_ok=True)


register()

__all__ = ["TitansCache", "TitansForCausalLM", "TitansPreTrainedModel", "register"]
