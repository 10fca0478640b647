"""Data parallelism with torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

Each rank gets its slice of every global batch (see EventLoader); losses are normalised by
global counts and gradients are summed over ranks, so a step equals the single-process step
on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_environment(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (no-op when alone)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over ranks in place (returned for chaining)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(parameters, context: DistributedContext) -> None:
    """Sum the gradients of ``parameters`` over ranks with one flat all-reduce."""
    if not context.enabled:
        return
    parameters = list(parameters)
    for parameter in parameters:  # every rank must send the same flat layout
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    grads = [p.grad for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def global_sum(local: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum of ``local`` over ranks, differentiable through this rank's share.

    The value is the global sum; the gradient flows into the local term only, so that after
    :func:`sum_gradients` every rank holds the gradient of the global quantity.
    """
    if not context.enabled:
        return local
    total = local.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total + local - local.detach()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
