"""Loading a checkpoint folder (either format): build every delta it describes, fill in its tensors
(``fxdelta.deltas.values``), attach all or none."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import CheckpointError, FxDeltaError, UnsupportedModelError
from fxdelta.deltas import heads
from fxdelta.deltas.handle import Handle, discard
from fxdelta.deltas.meta import meta_parameter
from fxdelta.deltas.values import Placement, check_dtype, check_values, write_values
from fxdelta.formats import peft
from fxdelta.formats.folders import read_folder
from fxdelta.io import checkpoint
from fxdelta.methods.registry import config_from_dict, method_for
from fxdelta.spec.config import DeltaConfig

H = TypeVar("H", bound=Handle)  # the face's delta-model class


def load_deltas(
    directory: str | os.PathLike[str],
    backbone: nn.Module,
    make: Callable[[str], type[H]],  # delta_type -> its delta-model class
    *,
    tensors: Mapping[str, torch.Tensor] | None = None,
    check_fingerprint: bool = True,
    config: DeltaConfig | None = None,
    **options: Any,
) -> list[H]:
    """Build every delta of a checkpoint on ``backbone``, fill in its tensors, then attach them all.

    ``tensors`` replaces the file's (keys it holds beyond the deltas' are ignored); ``config`` the
    (single) delta's saved config, of the same method;
    ``check_fingerprint=False`` skips the backbone fingerprint check (names and shapes are still checked).
    Everything is checked before the backbone changes; if anything fails, the backbone is left
    exactly as it was (deltas removed, unfrozen backbone tensors restored).
    """
    if not isinstance(backbone, nn.Module):
        raise UnsupportedModelError(f"deltas are loaded onto a torch.nn.Module, got {type(backbone).__name__}")
    on_meta = meta_parameter(backbone)
    if on_meta is not None:  # deltas built there would hold no values: the checkpoint's would be lost
        raise CheckpointError(
            f"{directory}: the backbone is on the meta device (e.g. {on_meta}), where a checkpoint's values cannot "
            f"be held; materialise it (to_empty + load_state_dict, or load_state_dict(assign=True)), then load"
        )
    given = tensors is not None  # the user's own dict may hold more than the deltas (a whole state_dict)
    if given and peft.is_peft_folder(directory):
        raise CheckpointError(f"{directory} is a PEFT adapter folder: state_dict= replaces fxdelta's tensors only")
    if given:
        meta = checkpoint.read_meta(directory)
        if check_fingerprint:
            checkpoint.check_backbone(meta, backbone, directory)
    else:  # PEFT's adapter folder too: its tensors, renamed as fxdelta's
        meta, tensors = read_folder(directory, backbone, check_fingerprint=check_fingerprint)
    if config is not None:
        _use_config(meta, config, directory)
    tensors = dict(tensors or {})
    params = dict(backbone.named_parameters())
    handles: list[H] = []
    restore: dict[str, Any] = {}
    used: set[str] = set()
    head_names = set(heads.head_parameter_names(backbone))
    loaded_heads: heads.HeadSet | None = None  # the deltas of one checkpoint share the head it holds
    try:
        for entry in meta["deltas"]:
            handle = _build_detached(entry, backbone, make, options, directory, handles)
            used |= _fill(handle, entry, tensors, directory)
            _refuse_a_second_copy(handle, directory)
            for name in entry.get("unfrozen", []):
                if name not in params or name not in tensors or params[name].shape != tensors[name].shape:
                    raise CheckpointError(f"{directory}: backbone tensor {name!r} is missing or has the wrong shape")
                check_dtype(directory, name, tensors[name], params[name])
                used.add(name)
                if name not in head_names:
                    restore[name] = params[name].detach().clone()
            if head_names & set(entry.get("unfrozen", [])):
                loaded_heads = loaded_heads or _heads_from(handle, tensors)
                handle.heads = loaded_heads
        extra = sorted(set(tensors) - used)
        if extra and not given:
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


def _heads_from(handle: Handle, tensors: Mapping[str, torch.Tensor]) -> heads.HeadSet | None:
    """A new copy of the backbone's task heads holding the checkpoint's head tensors (the rest as the backbone's)."""
    slots = heads.slots_of(handle.state)
    if slots is None:
        return None
    own = slots.fresh_copy()
    with torch.no_grad():
        for name, p in own.items():
            if name in tensors:
                p.copy_(tensors[name])
    return own


def _use_config(meta: dict[str, Any], config: DeltaConfig, directory: Any) -> None:
    (entry,) = meta["deltas"] if len(meta["deltas"]) == 1 else (None,)
    if entry is None or entry["config"].get("delta_type") != config.delta_type:
        raise CheckpointError(f"{directory}: delta_config= replaces one saved {config.delta_type} delta's config only")
    entry["config"] = config.to_dict()


def _build_detached(
    entry: Mapping[str, Any],
    backbone: nn.Module,
    make: Callable[[str], type[H]],
    options: dict[str, Any],
    directory: Any,
    built: list[H],
) -> H:
    """The (detached) delta an entry describes, appended to ``built`` as soon as it exists. It is built
    on the very modules it was saved from (its recorded targets), whatever the defaults are now."""
    saved_name, targets = entry["name"], entry["targets"]  # types checked by read_meta
    sources = entry.get("sources", [None] * len(targets))
    state = BackboneState.find(backbone)
    taken = {h.name for h in state.handles} if state else set()
    try:
        saved = config_from_dict(entry["config"]).replace(name=None if saved_name in taken else saved_name)
        config = saved
        method = method_for(config.delta_type)
        if method.locate is None:  # a method that finds its place finds it again
            pairs = zip(sources, targets, strict=True)
            exact = ["re:" + re.escape(p) for s, t in pairs for p in ([s or t, t] if method.pairs else [t])]
            config = config.replace(modified_modules=exact, exclude_modules=())
    except FxDeltaError as e:
        raise CheckpointError(f"{directory}: a delta entry of its config is malformed: {e}") from e
    handle = make(config.delta_type)(backbone, config, attach=False, **options)
    built.append(handle)
    handle.config = saved  # built on the recorded modules; the user sees the selectors they saved
    if handle.targets != targets or handle.sources != entry.get("sources", [None] * len(targets)):
        raise CheckpointError(
            f"{directory}: its selectors pick {len(handle.targets)} modules on this backbone, not the "
            f"{len(targets)} it was saved with; load it onto the architecture it was trained on"
        )
    handle.unfrozen = list(entry.get("unfrozen", []))
    return handle


def _refuse_a_second_copy(handle: Handle, directory: Any) -> None:
    """Loading what is already on the backbone (a re-run cell) would apply the same delta twice."""
    state = BackboneState.find(handle.backbone)
    ignored = {"name": None, "modified_modules": None, "exclude_modules": None}  # targets are compared instead
    mine = handle.config.exported().to_dict() | ignored
    for other in state.handles if state else []:
        if other is handle or not isinstance(other, Handle) or other.targets != handle.targets:
            continue
        if other.config.exported().to_dict() | ignored != mine:
            continue
        ours, theirs = _exported(handle), _exported(other)
        if ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k].to(ours[k].device)) for k in ours):
            raise CheckpointError(
                f"{directory} is already on this {type(handle.backbone).__name__} as delta {other.name!r}: loading "
                f"it again would apply it twice. Use fxdelta.delta_models(model)[{other.name!r}], or discard it first"
            )


def _exported(handle: Handle) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, e in enumerate(handle.entries) for k, v in handle.method.state_of(e.delta).items()}


def _fill(handle: Handle, entry: Mapping[str, Any], tensors: Mapping[str, Any], directory: Any) -> set[str]:
    """Copy the saved tensors into ``handle``'s (detached) delta modules; returns the keys used."""
    names = [f"{e.target}.{DELTA_NAMESPACE}.{entry['name']}".lstrip(".") for e in handle.entries]
    values = [
        {k: tensors[f"{n}.{k}"] for k in e.delta.state_dict() if f"{n}.{k}" in tensors}
        for e, n in zip(handle.entries, names, strict=True)
    ]
    check_values(handle.entries, values, directory, names=names, source=checkpoint.TENSORS_FILE)
    write_values(handle.state, handle.entries, values, Placement.LIVE)
    return {f"{n}.{k}" for n, v in zip(names, values, strict=True) for k in v}
