"""``reset_deltas``: every delta of a backbone initialised again, as its method builds it on the weights held now.

Made for big models: a backbone built on the ``meta`` device gets deltas on ``meta`` (no values), and
materialising it (``to_empty`` + ``load_state_dict``, or ``load_state_dict(assign=True)``) leaves them
uninitialised or still on ``meta``. Resetting builds each delta again with its method, on the device and in
the dtype the method picks for the target as it is now, so what depends on the backbone's weights (DoRA's
magnitude, soft prompts drawn from the vocabulary) comes from the real ones, and the random draws come from
torch's global generator in compile's order: ``torch.manual_seed(s); reset_deltas(model)`` gives the deltas
``torch.manual_seed(s); compile(...)`` gives on the same real weights.

The new values go into the existing delta modules (``fxdelta.deltas.values``, placement ``GIVEN``): a real
tensor of the same shape, dtype and device is overwritten in place (the parameter objects stay, so optimizers
and compiled graphs keep them); a tensor on ``meta`` (or of another dtype or device) is replaced by the new
one. Task-head copies are copied again from the backbone's head (``fxdelta.deltas.heads.recopy``). Everything
is built and checked before anything changes; forwards of other threads wait at the gate meanwhile.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import Entry
from fxdelta.core.errors import FxDeltaError, StateError
from fxdelta.core.precision import own_parameter
from fxdelta.core.records import TensorSpec
from fxdelta.deltas import heads, meta
from fxdelta.deltas.handle import Handle
from fxdelta.deltas.values import Placement, check_values, write_values
from fxdelta.spec.method import TargetInfo


def reset_deltas(backbone: nn.Module) -> list[str]:
    """Initialise every delta of ``backbone`` (attached or not) again; returns their names, in creation order."""
    state = BackboneState.find(backbone)
    handles = [h for h in state.handles if isinstance(h, Handle)] if state is not None else []
    if state is None or not handles:
        return []
    merged = [h.name for h in handles if h.merged]
    if merged:
        raise StateError(
            f"delta {merged[0]!r} is merged into the backbone's weights, which resetting it would leave as they are; "
            f"unmerge it first (fxdelta.unmerge(model))"
        )
    modules = dict(backbone.named_modules())
    with state.gate.changing():  # no forward sees half-reset deltas
        fresh = [_rebuilt(state, h, modules) for h in handles]  # all of them before anything changes
        head = heads.own_head(state)
        for h, values in zip(handles, fresh, strict=True):
            write_values(state, h.entries, values, Placement.GIVEN)
            for e in h.entries:
                ref = own_parameter(modules[e.target])
                e.backbone_dtype = ref.dtype if ref is not None else e.backbone_dtype
        if head is not None:
            heads.recopy(state, handles, head)
        for h in handles:
            meta.initialised(h)
    return [h.name for h in handles]


def _rebuilt(state: BackboneState, handle: Handle, modules: dict[str, nn.Module]) -> list[dict[str, torch.Tensor]]:
    """The values of ``handle``'s delta modules as its method builds them on the backbone now (the order compile
    builds in), checked against the live ones."""
    method, config = handle.method, handle.config
    infos = [_target_info(state, handle, e, modules) for e in handle.entries]
    deltas = [method.build(config, info) for info in infos]
    if method.link is not None and deltas:
        method.link(config, deltas, dtype=infos[-1].dtype, device=infos[-1].device)
    for e, d in zip(handle.entries, deltas, strict=True):
        if any(t.is_meta for t in [*d.parameters(), *d.buffers()]):
            raise StateError(
                f"delta {handle.name!r} on {e.target or '<root>'} would be built on the meta device again: that "
                f"part of the backbone is still on meta. {meta.MATERIALISE}"
            )
        for name, t in [*d.named_parameters(), *d.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise StateError(
                    f"delta {handle.name!r} on {e.target or '<root>'} starts with non-finite values in {name}, "
                    f"computed from the backbone's weights there: load real weights into the backbone first"
                )
    values = [{**dict(d.named_parameters()), **dict(d.named_buffers())} for d in deltas]
    where = f"reset_deltas({handle.name!r})"
    names = [e.qualified_name for e in handle.entries]
    check_values(handle.entries, values, where, names=names, source="the rebuilt delta", placement=Placement.GIVEN)
    return values


def _target_info(state: BackboneState, handle: Handle, entry: Entry, modules: dict[str, nn.Module]) -> TargetInfo:
    """What compile saw of the target (shapes, the probe's findings), placed as the backbone's weights are now."""
    reads, target = state.records[entry.reads], state.records[entry.target]
    place = meta.weight_near(modules, entry.target)

    def now(spec: TensorSpec | None) -> TensorSpec | None:
        if spec is None or place is None:
            return spec
        dtype = place.dtype if spec.floating and place.is_floating_point() else spec.dtype
        return replace(spec, device=place.device, dtype=dtype)

    h_out = now(target.h_out)
    if h_out is None:  # compile built a delta here, so it saw a hidden state
        raise FxDeltaError(f"fxdelta: no observed output for {entry.target} (a reset bug; please report it)")
    return TargetInfo(
        path=entry.target,
        module=modules[entry.target],
        h_in=now(reads.h_in),
        h_out=h_out,
        probed=entry.probed,
        delta_dtype=handle.config.delta_dtype,
    )
