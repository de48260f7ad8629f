"""A micro batch's forward and backward pass as one CUDA graph (``train.cuda_graph``).

A Titans model launches thousands of small kernels per step — MAC one attention and one memory update per segment
and block — and on a fast GPU the host cannot launch them as fast as they run (docs/benchmarks.md: MAC's step is
~4× its GPU time). Captured once per input shape and replayed, the whole pass is one launch.

What capture needs, and how it is met here:

* Every warm-up pass and the capture run on one side stream: autograd's leaf nodes remember the stream of earlier
  backward passes, and a remembered legacy default stream breaks the capture (``cudaErrorStreamCaptureImplicit``).
* No host sync inside: the model's data-dependent input checks are off during capture
  (:meth:`TitansLM.input_checks_off`; the warm-up passes check the first batch), and the caller's autocast must
  not cache weight casts (``torch.autocast(..., cache_enabled=False)``).
* Replays accumulate into the very ``.grad`` tensors that existed at capture, so gradients are cleared in place
  (``zero_grad(set_to_none=False)``); a replaced or dropped ``.grad`` raises instead of training silently wrong.
* The warm-up passes' gradients are undone, so the first step is the same as an eager one.
* Graphs of different shapes share one memory pool: they are replayed one at a time and their output (the loss) is
  copied out at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from titans.models import TitansLM

Pass = Callable[..., Tensor]  # (*inputs) -> a detached 0-d tensor; runs forward and backward


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]
    output: Tensor
    grads: list[Tensor | None]


class CudaGraphedPass:
    """``CudaGraphedPass(model, fn)(*inputs)`` runs ``fn(*inputs)`` — a forward and backward pass of ``model``
    returning a detached 0-d tensor — as a CUDA graph captured for the inputs' shapes and dtypes at first use.

    ``warmup`` eager passes precede each capture (their gradients are undone).
    """

    def __init__(self, model: TitansLM, fn: Pass, warmup: int = 3):
        if not any(p.is_cuda for p in model.parameters()):
            raise ValueError("CudaGraphedPass needs a model on a CUDA device")
        self.model, self.fn, self.warmup = model, fn, warmup
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.stream = torch.cuda.Stream(device=self.parameters[0].device)
        self.captured: dict[tuple[object, ...], _Captured] = {}
        self._pool: Any = None  # the first graph's memory pool, shared by the later ones

    def __call__(self, *inputs: Tensor) -> Tensor:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        entry = self.captured.get(key)
        if entry is None:
            entry = self.captured[key] = self._capture(inputs)
        if any(p.grad is not g for p, g in zip(self.parameters, entry.grads, strict=True)):
            raise RuntimeError(
                "a CUDA-graphed pass accumulates into the .grad tensors that existed at its capture, but a parameter's "
                ".grad was replaced or set to None since; clear gradients with zero_grad(set_to_none=False)"
            )
        for static, value in zip(entry.inputs, inputs, strict=True):
            static.copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, inputs: tuple[Tensor, ...]) -> _Captured:
        static = tuple(t.detach().clone() for t in inputs)
        before = [None if p.grad is None else p.grad.clone() for p in self.parameters]
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(self.warmup):
                self.fn(*static)
            for p, grad in zip(self.parameters, before, strict=True):  # undo the warm-up passes' gradients
                if p.grad is not None and grad is not None:
                    p.grad.copy_(grad)
                elif p.grad is not None:
                    p.grad.zero_()
            grads = [p.grad for p in self.parameters]
            graph = torch.cuda.CUDAGraph()
            try:
                with self.model.input_checks_off(), torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                    output = self.fn(*static)
            except RuntimeError as error:
                raise RuntimeError(
                    f"capturing the training pass as a CUDA graph failed ({error}); something in it is not capturable "
                    "(a host sync, a CPU-dependent branch); train without train.cuda_graph"
                ) from error
        torch.cuda.current_stream().wait_stream(self.stream)
        if any(p.grad is not g for p, g in zip(self.parameters, grads, strict=True)):
            raise RuntimeError("the captured backward pass replaced a .grad tensor instead of accumulating into it")
        self._pool = graph.pool() if self._pool is None else self._pool
        return _Captured(graph, static, output, grads)


__all__ = ["CudaGraphedPass"]
