"""Distributed engines take over a model's parameters when they wrap it: deltas are compiled before.

DDP registers the parameters it averages when it is built, FSDP (``FullyShardedDataParallel``) flattens
them and FSDP2's ``fully_shard`` turns them into ``DTensor`` shards. A delta added afterwards is a
parameter none of them knows: under DDP its gradients are never averaged (the ranks drift apart
silently), under FSDP the backbone cannot even run on the observer's FakeTensors. So building a delta on
a model an engine already wraps is refused, and the error gives the order that works.

Wrappers that keep the model's own parameters (DataParallel, ``torch.compile``'s) are looked through instead
(``unwrap``). One list (``_wrappers``) names every wrapper and says which are engines.
"""

from __future__ import annotations

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import UnsupportedModelError
from fxdelta.core.torch_internals import compiled_module_type
from fxdelta.io.distributed import is_sharded

_ORDER = "compile the deltas first, then wrap: fxdelta.compile(model, spec), then {wrap}"


def _wrappers() -> list[tuple[type[nn.Module], bool]]:
    """The one list of modules that wrap a model and hold it as an attribute, each with whether it is a
    distributed engine (one that took over the model's parameters when it was built)."""
    kinds: list[tuple[type[nn.Module], bool]] = [
        (nn.DataParallel, False),
        (nn.parallel.DistributedDataParallel, True),
        (compiled_module_type(), False),  # torch.compile's wrapper: the model's own parameters, as they were
    ]
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        kinds.append((FullyShardedDataParallel, True))
    return kinds


def wrapper_types() -> tuple[type[nn.Module], ...]:
    """Modules that wrap a model and hold it as an attribute: DataParallel, DDP, FSDP (1), torch.compile's."""
    return tuple(kind for kind, _ in _wrappers())


def _engine_wrappers() -> tuple[type[nn.Module], ...]:
    return tuple(kind for kind, engine in _wrappers() if engine)


def unwrap(model: nn.Module) -> nn.Module:
    """The backbone inside a DDP / DataParallel / FSDP / ``torch.compile`` wrapper (``model`` itself if it is
    none, or already holds deltas). FSDP2's ``fully_shard`` shards a module in place: it is its own backbone."""
    wrappers = wrapper_types()
    while isinstance(model, wrappers) and BackboneState.find(model) is None:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


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
