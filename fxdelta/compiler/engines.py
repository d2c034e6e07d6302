"""Distributed engines take over a model's parameters when they wrap it: deltas are compiled before.

DDP registers the parameters it averages when it is built, FSDP (``FullyShardedDataParallel``) flattens
them and FSDP2's ``fully_shard`` turns them into ``DTensor`` shards. A delta added afterwards is a
parameter none of them knows: under DDP its gradients are never averaged (the ranks drift apart
silently), under FSDP the backbone cannot even run on the observer's FakeTensors. So building a delta on
a model an engine already wraps is refused, and the error gives the order that works.
"""

from __future__ import annotations

import torch
from torch import nn

from fxdelta.core.errors import UnsupportedModelError
from fxdelta.io.distributed import is_sharded

_ORDER = "compile the deltas first, then wrap: fxdelta.compile(model, spec), then {wrap}"


def _engine_wrappers() -> tuple[type, ...]:
    kinds: list[type] = [nn.parallel.DistributedDataParallel]
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        kinds.append(FullyShardedDataParallel)
    return tuple(kinds)


def refuse_wrapped(model: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` if a distributed engine already wraps or shards ``model`` (or a module
    inside it): deltas added now would not be synchronized (DDP) or sharded (FSDP) with the rest."""
    if not isinstance(model, nn.Module):
        return  # not a model at all: the caller says so
    engines = _engine_wrappers()
    for path, module in model.named_modules():
        if isinstance(module, engines):
            kind = type(module).__name__
            where = f" (at {path!r})" if path else ""
            raise UnsupportedModelError(
                f"the model is already wrapped in {kind}{where}, which took over its parameters when it was built: "
                f"deltas added now would not be synchronized across ranks. "
                + _ORDER.format(wrap=f"model = {kind}(model)")
            )
    for name, p in model.named_parameters():
        if is_sharded(p):
            raise UnsupportedModelError(
                f"the model is already sharded by FSDP2's fully_shard (parameter {name!r} is a DTensor): deltas "
                f"added now would not be sharded with it. "
                + _ORDER.format(wrap="fully_shard(...) each layer / the model")
            )
