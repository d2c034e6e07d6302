"""Hot-swapping: another delta's tensors copied into an attached delta's own, in place.

``torch.compile`` guards on the code a forward ran and the modules it read. Attaching another delta
brings other modules and other generated code, so dynamo compiles once for each delta it meets (as
for PEFT's ``set_adapter``) and runs eagerly past its recompile limit (8 by default). Copying a new
task's values into the very tensors the compiled graph already reads changes neither: no recompile,
however many tasks take turns. So the source must be the same delta in all but its values: method,
config (apart from its name), targets, tensor names, shapes and a lossless dtype; everything is
checked before the first tensor is copied, and the copy happens between forwards (the thread gate).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import CheckpointError, ConfigError, StateError
from fxdelta.deltas import heads, meta
from fxdelta.deltas.handle import Handle
from fxdelta.deltas.values import Placement, check_values, write_values
from fxdelta.formats.folders import read_folder
from fxdelta.methods.registry import config_from_dict

# Config fields a swap may differ in: where the delta was selected from (its targets are compared instead),
# what trained with it, and its name.
_FREE_FIELDS = ("name", "modified_modules", "exclude_modules", "unfrozen_modules", "delta_dtype")


@dataclass
class Incoming:
    """The values to copy in: per entry, its tensors by the delta module's state_dict names; head tensors by
    backbone parameter name (None: the source computes with the backbone's own head)."""

    label: str
    config: dict[str, Any]
    targets: list[str]
    sources: list[str | None]
    tensors: list[dict[str, torch.Tensor]]
    heads: dict[str, torch.Tensor] | None


def from_handle(source: Handle) -> Incoming:
    own_heads = {n: p.detach() for n, p in source.heads.items()} if source.heads is not None else None
    return Incoming(
        f"delta model {source.name!r}",
        source.config.to_dict(),
        list(source.targets),
        list(source.sources),
        [dict(e.delta.state_dict()) for e in source.entries],
        own_heads,
    )


def from_folder(directory: str | os.PathLike[str], handle: Handle) -> Incoming:
    meta, tensors = read_folder(directory, handle.backbone)
    if len(meta["deltas"]) != 1:
        raise CheckpointError(
            f"{directory} holds {len(meta['deltas'])} deltas; a hot-swap copies one delta into one (fxdelta.load "
            f"attaches several)"
        )
    entry = meta["deltas"][0]
    try:
        config = config_from_dict(entry["config"]).to_dict()
    except ConfigError as e:
        raise CheckpointError(f"{directory}: its config is malformed: {e}") from e
    head_names = set(heads.head_parameter_names(handle.backbone))
    unfrozen = list(entry.get("unfrozen", []))
    trained = sorted(set(unfrozen) - head_names)
    if trained:
        raise CheckpointError(
            f"{directory} holds trained backbone tensors (e.g. {trained[:3]}), not only a delta: a hot-swap copies "
            f"delta tensors; use fxdelta.load for it"
        )
    targets = list(entry["targets"])
    per_entry: list[dict[str, torch.Tensor]] = []
    for target in targets:
        prefix = f"{target}.{DELTA_NAMESPACE}.{entry['name']}.".lstrip(".")
        per_entry.append({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    saved_heads = {n: tensors[n] for n in unfrozen if n in head_names and n in tensors}
    return Incoming(
        str(directory),
        config,
        targets,
        list(entry.get("sources", [None] * len(targets))),
        per_entry,
        saved_heads or None,
    )


def _check(handle: Handle, incoming: Incoming) -> None:
    where = incoming.label
    mine = handle.config.to_dict()
    fields = [k for k in mine if k not in _FREE_FIELDS and incoming.config.get(k) != mine[k]]
    differ = [f"{k}={incoming.config.get(k)!r} (here {mine[k]!r})" for k in fields]
    if differ:
        raise ConfigError(
            f"{where} is not the same delta as {handle.name!r} apart from its values: {'; '.join(differ)}. A hot-swap "
            f"keeps the compiled code, so only tensor values may change; attach it as a delta of its own instead"
        )
    if incoming.targets != handle.targets or incoming.sources != handle.sources:
        raise ConfigError(
            f"{where} sits on {len(incoming.targets)} modules, {handle.name!r} on {len(handle.targets)} "
            f"(or on others): a hot-swap needs the same targets"
        )
    stuck = meta.on_meta(handle)
    if stuck:  # a copy into a meta tensor keeps no value
        raise StateError(f"{handle.name!r} is on the meta device (e.g. {stuck[0]}): {meta.MATERIALISE}, then hot-swap")
    names = [e.qualified_name for e in handle.entries]
    check_values(handle.entries, incoming.tensors, where, names=names, source="its tensors")


def _head_values(handle: Handle, incoming: Incoming) -> tuple[heads.HeadSet, Mapping[str, torch.Tensor]] | None:
    """The head copy to write into and what to write (the source's head, or the backbone's own)."""
    slots = heads.slots_of(handle.state)
    if slots is None:
        return None
    own = handle.heads if handle.heads is not None else slots.fresh_copy()
    if incoming.heads is None:
        return own, slots.base or slots.installed()
    if set(incoming.heads) != set(own) or any(v.shape != own[n].shape for n, v in incoming.heads.items()):
        raise CheckpointError(f"{incoming.label}: its task head does not match this backbone's {sorted(own)}")
    return own, incoming.heads


def swap_in(handle: Handle, source: Any) -> None:
    """Copy ``source`` (a checkpoint folder, fxdelta's or PEFT's, or another delta model) into ``handle``."""
    if handle.merged:
        raise StateError(f"{handle.name} is merged into the backbone's weights; unmerge it before a hot-swap")
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_dir():
            raise CheckpointError(f"{str(source)!r} is not a checkpoint folder")
        incoming = from_folder(source, handle)
    elif isinstance(source, Handle):
        if source is handle:
            return
        incoming = from_handle(source)
    else:
        raise ConfigError(f"hotswap takes a checkpoint folder or a delta model, got {type(source).__name__}")
    _check(handle, incoming)
    head = _head_values(handle, incoming)
    with handle.state.gate.changing(), torch.no_grad():  # no forward sees half of each task
        write_values(handle.state, handle.entries, incoming.tensors, Placement.LIVE)
        if head is not None:
            own, values = head
            for name, p in own.items():
                p.copy_(values[name])
            handle.heads = own
    meta.initialised(handle)  # built on meta, it holds real values now


def named(handles: Mapping[str, Handle], name: str | None) -> str:
    """The delta ``fxdelta.hotswap`` copies into: ``name``, or the only attached one."""
    if name is None:
        live = [h.name for h in handles.values() if h.attached]
        if len(live) != 1:
            raise ConfigError(
                f"hotswap copies into one attached delta; this model has {len(live)} attached "
                f"({live}): pass name= (one of {sorted(handles)})"
            )
        return live[0]
    if name not in handles:
        raise ConfigError(f"hotswap: no delta model named {name!r} on this model (it has {sorted(handles)})")
    return name
