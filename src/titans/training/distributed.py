"""Several processes, one model: ``torchrun`` set-up, DistributedDataParallel or FSDP2, and full state dicts.

Launch with ``torchrun --standalone --nproc_per_node N -m titans.cli train ...``. Each process reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, joins a process group (NCCL on CUDA,
gloo on the CPU) and takes rows ``rank::world_size`` of every global batch. Without those variables
everything runs in one process and none of this code talks to anyone.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and draws the progress bar."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(requested_device: str) -> DistributedContext:
    """Join the process group that ``torchrun`` described in the environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, device)


def teardown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum of ``value`` over all processes (``value`` itself in a single process)."""
    if context.is_distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def wrap_model(model: nn.Module, context: DistributedContext, fsdp: bool) -> nn.Module:
    """The model as trained: itself (one process), DistributedDataParallel, or sharded with FSDP2.

    FSDP2 shards every parameter, gradient and optimizer state over the processes. Each block's MLP is its own
    unit (gathered only while that MLP runs); everything else forms the root unit, gathered for the whole
    forward pass, because :class:`~titans.models.TitansLM` reads the blocks' persistent tokens and initial
    memory weights before it runs the blocks (``persistent_prefixes``, ``initial_state``).
    """
    if not context.is_distributed and not fsdp:
        return model
    if fsdp:
        if not context.is_distributed:
            raise RuntimeError("train.fsdp needs several processes (launch with torchrun)")
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # type: ignore[union-attr]
            fully_shard(block.mlp)
        fully_shard(model)
        # The model returns views (logits, state); the loop never changes them in place, which is the warning's
        # only concern.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel or ``torch.compile`` wrapper."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "module", inner)


def is_sharded(model: nn.Module) -> bool:
    """True when the parameters are FSDP2 DTensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap(model).parameters())


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Let the next backward pass reduce gradients across processes (the last micro batch) or not (the others)."""
    target = getattr(model, "_orig_mod", model)
    if hasattr(target, "require_backward_grad_sync"):  # DistributedDataParallel
        target.require_backward_grad_sync = enabled
        return
    set_sync = getattr(target, "set_requires_gradient_sync", None)  # FSDP2
    if callable(set_sync):
        set_sync(enabled)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The complete (unsharded) model state dict on the CPU, identical on every rank."""
    if not is_sharded(model):
        return {name: t.detach().cpu() for name, t in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The complete optimizer state dict (gathered from every shard under FSDP)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(unwrap(model), optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Put back a state dict made by :func:`full_optimizer_state` (each rank keeps its own shard)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
