"""Data-parallel training without a framework: one process per device (started by ``torchrun``),
each on its own shard of the data (the loader splits by rank), gradients averaged with one
all-reduce per step, so every rank takes the same optimizer step and the replicas stay identical.

Parameters changed outside the optimizer (VQ dead-code restarts draw from the local batch) are
re-broadcast from rank 0 after the step: ``broadcast_module``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT): NCCL when
    this process has a GPU, gloo otherwise. A no-op when WORLD_SIZE is unset or 1."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return world()


def sync_gradients(params) -> None:
    """Average the gradients of ``params`` over all ranks (in place). Call after backward."""
    rank, size = world()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce, not one per tensor
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank."""
    if world()[1] == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
