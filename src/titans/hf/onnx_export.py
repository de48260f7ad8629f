"""Export the single-token decode step of a :class:`~titans.models.TitansLM` to ONNX and run it with
onnxruntime.

The graph is :class:`~titans.hf.decode_step.DecodeStep`: inputs ``input_ids`` (B, 1) int64 and the state tensors
(``state.<name>``: memory weights, momentum, chunk-start weights, offsets, convolution caches, attention slot
buffers, the position), outputs ``logits`` (B, vocab) and the new state tensors (``new.<name>``) in the same
order. The state names are stored in the model's metadata (``titans.state_names``), so
:class:`OnnxDecoder` needs only the file. The batch size and the cache sizes are fixed at export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from titans.hf.decode_step import State, decode_step_for, flatten_state
from titans.models import TitansLM, TitansState

STATE_NAMES_KEY = "titans.state_names"
MAX_CACHE_KEY = "titans.max_cache_len"


def export_decode_step(
    model: TitansLM,
    path: str | Path,
    batch_size: int = 1,
    max_cache_len: int | None = None,
    opset: int = 17,
    dynamo: bool = False,
) -> Path:
    """Write the decode step of ``model`` (float32) to ``path``; ``max_cache_len`` is needed only by the
    Transformer++ baseline (its cache grows). ``dynamo``: use the ``torch.export`` exporter (opset 18 or
    later, needs ``onnxscript``; slower) instead of the TorchScript one."""
    import onnx

    path = Path(path)
    model = model.eval()
    step, state = decode_step_for(model, batch_size, max_cache_len)
    token = torch.zeros(batch_size, 1, dtype=torch.long)
    names = list(state)
    with torch.no_grad(), model.input_checks_off(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: intended
        torch.onnx.export(
            step,
            (token, *state.values()),
            str(path),
            input_names=["input_ids", *(f"state.{n}" for n in names)],
            output_names=["logits", *(f"new.{n}" for n in names)],
            opset_version=max(opset, 18) if dynamo else opset,
            dynamo=dynamo,
        )
    proto = onnx.load(str(path))
    for key, value in ((STATE_NAMES_KEY, json.dumps(names)), (MAX_CACHE_KEY, json.dumps(max_cache_len))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


class OnnxDecoder:
    """Run an exported decode step with onnxruntime, carrying the state tensors between calls."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if STATE_NAMES_KEY not in meta:
            raise ValueError(f"{path}: not a Titans decode step (no {STATE_NAMES_KEY} in its metadata)")
        self.state_names: list[str] = json.loads(meta[STATE_NAMES_KEY])
        self.max_cache_len: int | None = json.loads(meta.get(MAX_CACHE_KEY, "null"))

    def initial_state(self, model: TitansLM, batch_size: int = 1) -> State:
        """The state tensors before the first token (from the PyTorch model that was exported)."""
        return self.state_from(model, model.initial_state(batch_size))

    def state_from(self, model: TitansLM, state: TitansState) -> State:
        """The tensors of a PyTorch ``TitansState`` (e.g. after reading a prompt with the PyTorch model)."""
        flat = flatten_state(model, state, self.max_cache_len)
        if list(flat) != self.state_names:
            raise ValueError("the model does not match the exported graph (its state tensors differ)")
        return flat

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """Logits (B, vocab) of the token after ``token`` (B, 1) and the new state."""
        feeds = {"input_ids": token.to(torch.long).numpy()}
        feeds.update({f"state.{n}": state[n].detach().numpy() for n in self.state_names})
        logits, *tensors = self.session.run(None, feeds)
        return torch.from_numpy(logits), {n: torch.from_numpy(t) for n, t in zip(self.state_names, tensors)}

    def greedy(self, prompt: Tensor, state: State, max_new_tokens: int) -> tuple[Tensor, list[Tensor], State]:
        """Read ``prompt`` (B, T) token by token, then decode greedily: (new tokens, logits of every step, state)."""
        all_logits = []
        logits = None
        for t in range(prompt.shape[1]):
            logits, state = self.step(prompt[:, t : t + 1], state)
            all_logits.append(logits)
        new_tokens = []
        for _ in range(max_new_tokens):
            assert logits is not None
            token = logits.argmax(dim=-1, keepdim=True)
            new_tokens.append(token)
            logits, state = self.step(token, state)
            all_logits.append(logits)
        tokens = torch.cat(new_tokens, dim=1) if new_tokens else prompt.new_zeros(prompt.shape[0], 0)
        return tokens, all_logits, state


__all__ = ["OnnxDecoder", "export_decode_step"]
