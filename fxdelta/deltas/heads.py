"""Per-delta task heads: each delta trains, saves and brings back its own copy of the backbone's task heads.

A ``*For<Task>`` model has one head slot (``classifier``, ``score``, ...: ``fxdelta.spec.heads``), but
a backbone that serves several tasks needs one head per task. So the head parameters a delta trains
are its own: while the delta is attached they sit in the head modules (same names, same module
objects, so traced graphs and state_dict keys are unchanged); detached, the head it replaced comes
back. Deltas attached together share one copy (a compile of several specs trains one head); two
attached deltas with different heads are refused, since a model computes with one head at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import StateError
from fxdelta.spec.heads import task_heads

HeadSet = dict[str, nn.Parameter]  # backbone parameter name -> the parameter in that slot


def head_parameter_names(backbone: nn.Module) -> list[str]:
    """The backbone's parameter names that belong to a task head."""
    heads = task_heads(backbone)
    return [n for n, _ in backbone.named_parameters() if any(n.startswith(h + ".") for h in heads)]


class HeadSlots:
    """The task-head slots of one backbone: what sits in them now, and what sat there before any delta."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.names = head_parameter_names(backbone)
        self.base: HeadSet = {}  # the backbone's own head parameters, kept while a delta's copy is in
        self.current: HeadSet | None = None  # the copy installed now (None: the backbone's own)

    def _slots(self) -> Iterator[tuple[str, nn.Module, str]]:
        modules = dict(self.backbone.named_modules())
        for name in self.names:
            owner, _, leaf = name.rpartition(".")
            yield name, modules[owner], leaf

    def installed(self) -> HeadSet:
        return {name: module._parameters[leaf] for name, module, leaf in self._slots()}  # type: ignore[misc]

    def sync(self) -> None:
        """While a delta's copy is in, the slots are that copy: ``to_empty`` or ``load_state_dict(assign=True)``
        put new parameter objects there, which the attached deltas' head set (shared, in place) then names."""
        if self.current is not None:
            self.current.update(self.installed())

    def fresh_copy(self) -> HeadSet:
        """A new copy of the backbone's own head (the base), placed and typed as the slots are now."""
        own = self.base or self.installed()
        now = self.installed()
        for n, p in own.items():
            _refuse_meta(n, p, now[n])
        return {
            n: nn.Parameter(p.detach().to(now[n].device, now[n].dtype).clone(), requires_grad=now[n].requires_grad)
            for n, p in own.items()
        }

    def put(self, heads: HeadSet | None) -> None:
        """Install ``heads`` (None: the backbone's own) into the slots."""
        now = self.installed()
        if self.current is not None:
            self.current.update(now)  # sync(), from the one look at the slots
        if heads is self.current:
            return
        if self.current is None:
            self.base = now
        wanted = self.base if heads is None else heads
        for name, module, leaf in self._slots():
            p = wanted[name]
            _refuse_meta(name, p, now[name])
            if p.device != now[name].device or p.dtype != now[name].dtype:  # the backbone moved meanwhile
                p.data = p.data.to(now[name].device, now[name].dtype)
            module._parameters[leaf] = p
        self.current = heads
        if heads is None:
            self.base = {}


def slots_of(state: Any) -> HeadSlots | None:
    """The backbone's head slots (kept on its fxdelta state), or None when it has no task heads."""
    slots = getattr(state, "head_slots", None)
    if slots is None:
        slots = HeadSlots(state.backbone)
        state.head_slots = slots
    return slots if slots.names else None


def on_attach(state: Any, heads: HeadSet | None, others: Iterable[HeadSet | None]) -> HeadSet | None:
    """Install the heads of a delta being attached; returns its heads (a new copy, or the attached ones it shares)."""
    slots = slots_of(state)
    if slots is None:
        return None
    in_use = [h for h in others if h is not None]
    if heads is None:
        heads = slots.current if slots.current is not None and in_use else slots.fresh_copy()
    elif in_use and any(h is not heads for h in in_use):
        raise StateError(
            f"this delta brings its own {', '.join(task_heads(state.backbone))} head, and an attached delta uses "
            f"another: a model computes with one head at a time. Detach the other delta first"
        )
    slots.put(heads)
    return heads


def on_detach(state: Any, heads: HeadSet | None, others: Iterable[HeadSet | None]) -> None:
    """A delta was detached: its heads leave the slots unless another attached delta shares them."""
    slots = slots_of(state)
    if slots is None or heads is None or slots.current is not heads:
        return
    if not any(h is heads for h in others):
        slots.put(None)


def own_head(state: Any) -> HeadSet | None:
    """The backbone's own head as it is now (None: no task heads), for ``recopy``; refused while on meta.

    That is the slots' values when they hold it, or when the kept own head is still on meta (the slots then
    hold what was loaded into the attached copy: the same names); else the kept own head.
    """
    slots = slots_of(state)
    if slots is None:
        return None
    slots.sync()
    kept = slots.current is not None and not any(p.is_meta for p in slots.base.values())
    own = slots.base if kept else slots.installed()
    on_meta = [n for n, p in own.items() if p.is_meta]
    if on_meta:
        raise StateError(f"the task head {on_meta[0]} is still on the meta device: materialise the backbone first")
    return own


def recopy(state: Any, owners: Sequence[Any], own: HeadSet) -> None:
    """Every head set as at compile time, from ``own`` (``own_head``): the deltas' copies equal it, and the
    backbone's own head is real (``fxdelta.reset_deltas``, after a ``meta`` backbone was materialised).
    ``owners`` are the delta models (their ``heads``). The parameters in the slots stay (the model's
    parameters, which an optimizer may hold)."""
    slots = slots_of(state)
    if slots is None:
        return
    installed = slots.installed()
    with torch.no_grad():
        if slots.current is not None:
            if all(own[n] is p for n, p in installed.items()):
                # The kept own head was on meta: a copy of the loaded one replaces it.
                slots.base = {n: _copy(p, p, slots.base.get(n)) for n, p in installed.items()}
            else:
                for name, p in installed.items():
                    p.copy_(own[name])
        for owner in owners:
            if owner.heads is not None and owner.heads is not slots.current:
                owner.heads = {n: _copy(own[n], installed[n], p) for n, p in owner.heads.items()}


def _refuse_meta(name: str, p: nn.Parameter, slot: nn.Parameter) -> None:
    if p.is_meta and not slot.is_meta:  # taken on meta and never materialised (reset_deltas does that)
        raise StateError(
            f"the task head {name} kept for this is on the meta device (no values) while the model is not: call "
            f"fxdelta.reset_deltas(model) after materialising the backbone"
        )


def _copy(value: torch.Tensor, like: torch.Tensor, flags: torch.Tensor | None = None) -> nn.Parameter:
    """A new parameter holding ``value``, placed and typed as ``like``, trainable as ``flags`` (default: ``like``)."""
    grad = (flags if flags is not None else like).requires_grad
    return nn.Parameter(value.detach().to(like.device, like.dtype).clone(), requires_grad=grad)
