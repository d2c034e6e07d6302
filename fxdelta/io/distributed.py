"""Saving from inside a process group: gather what is sharded, write once, on rank 0.

FSDP2 (``torch.distributed.fsdp.fully_shard``) holds every parameter as a ``DTensor`` shard; a checkpoint
holds full tensors. Gathering a shard is a collective, so a save of sharded deltas is called on every
rank: each gathers, rank 0 writes, and the others wait until it has (rank 0 tells them how it went, so a
failed write raises on every rank instead of leaving the others waiting). Replicated deltas (DDP) are the
same on every rank: rank 0 writes them and no rank waits, so calling save on rank 0 only keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fxdelta.core.errors import CheckpointError


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a shard or replica placed on a device mesh)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor  # not cached by a decorator: dynamo warns about those

    return isinstance(tensor, DTensor)


def model_class(module: torch.nn.Module) -> type:
    """The class a checkpoint names: FSDP2's ``fully_shard`` swaps in a subclass of its own (``FSDPBertModel``)."""
    cls = type(module)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if isinstance(module, FSDPModule):
            return next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def write_once(tensors: Mapping[str, torch.Tensor], write: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Call ``write(full_tensors)`` on rank 0 only (or in a process of its own), with every ``DTensor`` gathered.

    Sharded tensors make this a collective: every rank must call it, the others return once rank 0 has
    written, and a failure on rank 0 raises on every rank.
    """
    sharded = any(is_sharded(v) for v in tensors.values())
    full = {k: v.full_tensor() if is_sharded(v) else v for k, v in tensors.items()}  # type: ignore[attr-defined]
    rank, world = _rank_and_world()
    if world == 1 or not sharded:
        if rank == 0:
            write(full)
        return
    failure: BaseException | None = None
    if rank == 0:
        try:
            write(full)
        except Exception as e:
            failure = e
    outcome: list[str | None] = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    torch.distributed.broadcast_object_list(outcome, src=0)  # the barrier: rank 0 has written (or failed)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise CheckpointError(f"rank 0 could not write the checkpoint (so no rank did): {outcome[0]}")
