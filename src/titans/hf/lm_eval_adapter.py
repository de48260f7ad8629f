"""An lm-evaluation-harness model ``titans``: ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``
for a Titans model (a Hugging Face folder written by ``save_pretrained``/``titans convert``, or a native
checkpoint folder).

lm-eval has no plugin discovery, so the model is registered when this module is imported. From the shell::

    python -m titans.hf.lm_eval_adapter run --model titans --model_args pretrained=PATH --tasks ... \\
        [--include_path my_tasks/]

(the lm_eval command line, after importing this module). From Python: ``import titans.hf.lm_eval_adapter``,
then ``lm_eval.simple_evaluate(model="titans", model_args="pretrained=PATH", ...)``.

``model_args``: ``pretrained`` (required), ``tokenizer`` (``bytes``, a ``tokenizer.json`` or a folder with a
Hugging Face tokenizer; default: the model folder's tokenizer if it has one, else bytes), ``device`` (``cpu``),
``piece_len`` (tokens per model call for long texts; the memory state carries between pieces, so the score is
the same as one call), ``max_gen_toks`` (default 256).

Every row is scored from the start of its own context: Titans models have no padding, and the memory
carries the whole context, so no sliding window is needed for ``loglikelihood_rolling``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import Tensor

from titans.hf.convert import from_titans_lm, is_hf_folder, load_native
from titans.hf.modeling import TitansForCausalLM
from titans.models import TitansLM, TitansState

logger = logging.getLogger(__name__)


class _Tokenizer:
    """encode/decode and the id that stands before an empty context."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], prefix_id: int):
        self.encode, self.decode, self.prefix_id = encode, decode, prefix_id


def load_eval_tokenizer(spec: str | None, model_dir: Path) -> _Tokenizer:
    """``spec`` as in the module docstring; ``None``: the model folder's HF tokenizer if any, else bytes."""
    folder = Path(spec) if spec is not None and Path(spec).is_dir() else None
    if spec is None and any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        folder = model_dir
    if folder is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return _Tokenizer(
            lambda text: list(tok(text, add_special_tokens=False)["input_ids"]),
            lambda ids: str(tok.decode(ids)),
            int(prefix if prefix is not None else 0),
        )
    from titans.tokenizer import load_tokenizer

    plain = load_tokenizer(spec)
    return _Tokenizer(plain.encode, plain.decode, 0)  # bytes: NUL stands before an empty context


def load_titans(pretrained: str | Path, device: str = "cpu") -> TitansForCausalLM:
    """A Hugging Face folder or a native checkpoint, as a :class:`TitansForCausalLM` in eval mode."""
    path = Path(pretrained).expanduser()
    model = TitansForCausalLM.from_pretrained(str(path)) if is_hf_folder(path) else from_titans_lm(load_native(path))
    model.requires_grad_(False)
    return model.to(torch.device(device)).eval()  # type: ignore[arg-type]  # (transformers types .to oddly)


def _available(device: str) -> str:
    """``device``, or ``cpu`` when CUDA is asked for (lm-eval's default) but there is none."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: evaluating on the CPU")
        return "cpu"
    return str(device)


@register_model("titans")
class TitansEvalLM(LM):
    """The lm-eval model ``titans`` (see the module docstring for ``model_args``)."""

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        device: str = "cpu",
        piece_len: int = 2048,
        max_gen_toks: int = 256,
        **_: Any,
    ):
        super().__init__()
        device = _available(device)
        self.hf_model = load_titans(pretrained, device)
        self.lm: TitansLM = self.hf_model.model
        self.tok = load_eval_tokenizer(tokenizer, Path(pretrained).expanduser())
        self._device = torch.device(device)
        self.piece_len = int(piece_len)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_tokens(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Σ log p(continuation | context) and whether greedy decoding would produce the continuation."""
        if not context or not continuation:
            raise ValueError("score_tokens needs a non-empty context and continuation")
        ids = torch.tensor([context + continuation[:-1]], device=self._device)
        logits = self._logits(ids)[0, len(context) - 1 :].float().log_softmax(dim=-1)
        target = torch.tensor(continuation, device=self._device)
        logprob = float(logits.gather(-1, target[:, None]).sum())
        greedy = bool((logits.argmax(dim=-1) == target).all())
        return logprob, greedy

    def _logits(self, ids: Tensor) -> Tensor:
        """Logits of ``ids`` (1, T), read in pieces of ``piece_len`` tokens carrying the state."""
        state: TitansState | None = None
        pieces = []
        for start in range(0, ids.shape[1], self.piece_len):
            out = self.lm(ids[:, start : start + self.piece_len], state=state)
            pieces.append(out.logits)
            state = out.state
        return torch.cat(pieces, dim=1)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the pair; trailing spaces of the context move to the continuation (as lm-eval's HF
        model does); an empty context becomes the prefix token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        context_ids = self.tok.encode(context)
        cont_ids = whole[len(context_ids) :]
        return (context_ids or [self.tok.prefix_id]), cont_ids

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return [self.score_tokens(*self._encode_pair(*request.args)) for request in requests]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Σ log p of every token of the text, the first one given the prefix token."""
        return [self.score_tokens([self.tok.prefix_id], self.tok.encode(request.args[0]))[0] for request in requests]

    # ------------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_text(self, context: str, until: list[str], max_tokens: int, temperature: float = 0.0) -> str:
        """Greedy (or sampled, ``temperature`` > 0) text after ``context``, cut before the first stop string."""
        ids = torch.tensor([self.tok.encode(context) or [self.tok.prefix_id]], device=self._device)
        out = self.lm(ids, last_logits_only=True)
        generated: list[int] = []
        text = ""
        for _ in range(max_tokens):
            logits = out.logits[:, -1].float()
            token = (
                logits.argmax(-1)
                if temperature == 0
                else torch.multinomial((logits / temperature).softmax(-1), 1)[:, 0]
            )
            generated.append(int(token))
            text = self.tok.decode(generated)
            if any(stop in text for stop in until):
                break
            out = self.lm(token.view(1, 1), state=out.state)
        for stop in until:
            text = text.split(stop)[0]
        return text

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in requests:
            context, options = request.args
            until = options.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(options.get("max_gen_toks", self.max_gen_toks))
            temperature = float(options.get("temperature", 0.0)) if options.get("do_sample", False) else 0.0
            results.append(self.generate_text(context, until, max_tokens, temperature))
        return results


def main(argv: list[str] | None = None) -> None:
    """The lm_eval command line with the ``titans`` model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()

__all__ = ["TitansEvalLM", "load_eval_tokenizer", "load_titans", "main"]
