"""Loading checkpoints: build every delta a checkpoint describes, fill in its tensors, attach all or none."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import CheckpointError, FxDeltaError
from fxdelta.deltas.classes import model_class_for
from fxdelta.deltas.handle import DeltaModel, discard
from fxdelta.io import checkpoint
from fxdelta.methods.registry import config_from_dict


def load_deltas(directory: str | os.PathLike, backbone: nn.Module, **options: Any) -> list[DeltaModel]:
    """Build every delta of a checkpoint on ``backbone``, fill in its tensors, then attach them all.

    Everything is checked before the backbone changes; if anything fails, the backbone is left
    exactly as it was (deltas removed, unfrozen backbone tensors restored).
    """
    meta = checkpoint.read_meta(directory)
    checkpoint.check_backbone(meta, backbone, directory)
    tensors = checkpoint.read_tensors(directory)
    params = dict(backbone.named_parameters())
    handles: list[DeltaModel] = []
    restore: dict[str, Any] = {}
    used: set[str] = set()
    try:
        for entry in meta["deltas"]:
            handle = _build_detached(entry, backbone, options, directory)
            handles.append(handle)
            used |= _fill(handle, entry, tensors, directory)
            for name in entry.get("unfrozen", []):
                if name not in params or name not in tensors or params[name].shape != tensors[name].shape:
                    raise CheckpointError(f"{directory}: backbone tensor {name!r} is missing or has the wrong shape")
                restore[name] = params[name].detach().clone()
                used.add(name)
        extra = sorted(set(tensors) - used)
        if extra:
            raise CheckpointError(
                f"{directory}: {len(extra)} tensors belong to no delta (e.g. {extra[:3]}); "
                f"the file does not match its config"
            )
        for name in restore:
            params[name].data.copy_(tensors[name])
        for handle in handles:
            handle.attach()
    except BaseException:
        for handle in handles:
            discard(handle)
        for name, value in restore.items():
            params[name].data.copy_(value)
        raise
    return handles


def _build_detached(entry: Mapping[str, Any], backbone: nn.Module, options: dict, directory: Any) -> DeltaModel:
    try:
        config = config_from_dict(entry["config"])
        saved_name, targets = entry["name"], list(entry["targets"])
    except (KeyError, TypeError, FxDeltaError) as e:
        raise CheckpointError(f"{directory}: a delta entry of its config is malformed: {e}") from e
    state = BackboneState.find(backbone)
    taken = {h.name for h in state.handles} if state else set()
    config = config.replace(name=None if saved_name in taken else saved_name)
    handle = model_class_for(config.delta_type)(backbone, config, attach=False, **options)
    if handle.targets != targets or handle.sources != list(entry.get("sources", [None] * len(targets))):
        discard(handle)
        raise CheckpointError(
            f"{directory}: its selectors pick {len(handle.targets)} modules on this backbone, not the "
            f"{len(targets)} it was saved with; load it onto the architecture it was trained on"
        )
    handle._unfrozen = list(entry.get("unfrozen", []))
    return handle


def _fill(handle: DeltaModel, entry: Mapping[str, Any], tensors: Mapping[str, Any], directory: Any) -> set[str]:
    """Copy the saved tensors into ``handle``'s (detached) delta modules; returns the keys used."""
    used = set()
    for e in handle.entries:
        prefix = f"{e.target}." if e.target else ""
        for pname, p in e.delta.state_dict().items():
            key = f"{prefix}{DELTA_NAMESPACE}.{entry['name']}.{pname}"
            if key not in tensors:
                raise CheckpointError(f"{directory}: tensor {key!r} is missing from {checkpoint.TENSORS_FILE}")
            if tensors[key].shape != p.shape:
                raise CheckpointError(
                    f"{directory}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                    f"the delta expects {tuple(p.shape)}"
                )
            p.copy_(tensors[key])
            used.add(key)
    return used
