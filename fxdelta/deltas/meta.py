"""Deltas built on the ``meta`` device: noticed at build, watched until they are given values.

A big backbone is built on ``meta`` (no memory), patched, then materialised: ``to_empty`` + ``load_state_dict``
(which leaves the deltas uninitialised memory, often NaN: the checkpoint has no delta tensors) or
``load_state_dict(..., assign=True)`` (which leaves them on ``meta``). ``fxdelta.reset_deltas`` gives them the
values compile gives on real weights. Until a delta built on ``meta`` is reset (or its values are loaded with
``load_state_dict``), a watch on the backbone's forwards catches what would otherwise go silently wrong: a
forward with a delta still on ``meta`` is a ``StateError``, one with a delta that was never initialised a
warning (once). The watch is one of the gate's checks (``fxdelta.compiler.gate``); it costs nothing on
backbones that were never on ``meta``, and goes once no delta is pending.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import FxDeltaWarning, StateError
from fxdelta.core.paths import parent_paths
from fxdelta.deltas import heads

PENDING = "_meta_pending"  # a delta model's flag: built on meta, not given values since
HOW = (
    "(model.to_empty(device=...) + model.load_state_dict(weights, strict=False), or "
    "model.load_state_dict(weights, strict=False, assign=True))"
)
MATERIALISE = f"materialise the backbone {HOW}, then call fxdelta.reset_deltas(model)"
BUILT_ON_META = (
    f"fxdelta built deltas on the meta device: they hold no values yet. Once the backbone is materialised {HOW}, "
    f"call fxdelta.reset_deltas(model), which initialises them as compile does on real weights"
)


# Frames a warning skips to point at the user's line: fxdelta's own, and torch's (a forward's module calls).
_LIBRARIES = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))


def _warn(message: str) -> None:
    """Warn at the user's line that led here (the compile or forward call): shown once per such line."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # stacklevel 2 is the frame that called _warn
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FxDeltaWarning, stacklevel=level)


def delta_tensors(handle: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``handle``'s delta modules and of its own task-head copy, by backbone name."""
    for e in handle.entries:
        for name, t in [*e.delta.named_parameters(), *e.delta.named_buffers()]:
            yield f"{e.qualified_name}.{name}", t
    slots = heads.slots_of(handle.state) if handle.heads and handle.attached else None
    if slots is not None:
        slots.sync()  # an attached copy is what the slots hold now (a detached one is its own)
    yield from (handle.heads or {}).items()


def on_meta(handle: Any) -> list[str]:
    """Names of ``handle``'s tensors that live on the meta device (no values)."""
    return [n for n, t in delta_tensors(handle) if t.is_meta]


def weight_near(modules: dict[str, nn.Module], path: str) -> torch.Tensor | None:
    """A floating weight of the module at ``path``, or of its nearest ancestor that has one (an activation has
    none), deltas aside: where the backbone's weights around that module live now, and in which dtype."""
    for p in [path, *parent_paths(path)]:
        own = (t for n, t in modules[p].named_parameters() if DELTA_NAMESPACE not in n.split("."))
        found = next((t for t in own if t.is_floating_point()), None)
        if found is not None:
            return found
    return None


def targets_on_meta(handle: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether the backbone's weights at every target of ``handle`` are still on meta."""
    return all(getattr(weight_near(modules, e.target), "is_meta", True) for e in handle.entries)


def meta_parameter(backbone: nn.Module) -> str | None:
    """The name of a backbone parameter (deltas aside) on the meta device, if there is one."""
    for name, p in backbone.named_parameters():
        if p.is_meta and DELTA_NAMESPACE not in name.split("."):
            return name
    return None


def noted_at_build(handle: Any) -> None:
    """A new delta model: if its deltas were built on meta, say what comes next (once) and watch the backbone."""
    if not on_meta(handle):
        return
    setattr(handle, PENDING, True)
    _warn(BUILT_ON_META)
    state = handle.state
    if getattr(state, "meta_watch", None) is None:
        state.meta_watch = MetaWatch(state)


def initialised(handle: Any) -> None:
    """``handle``'s deltas hold real values now (reset, or loaded); the watch goes when nothing is pending."""
    handle.__dict__.pop(PENDING, None)
    watch = getattr(handle.state, "meta_watch", None)
    if watch is not None and not watch.pending():
        watch.stop()


def refuse_attach(handle: Any) -> None:
    """Attaching a delta still on meta to a materialised backbone would fail in ``.to(device)``: say why."""
    stuck = on_meta(handle)
    if stuck and not targets_on_meta(handle, dict(handle.backbone.named_modules())):
        raise StateError(
            f"delta {handle.name!r} is on the meta device (no values; e.g. {stuck[0]}) but the backbone is not: "
            f"call fxdelta.reset_deltas(model) after materialising the backbone, then attach it"
        )


class MetaWatch:
    """Before each backbone forward: refuse deltas still on meta, warn once about deltas never given values.

    ``load_state_dict`` that fills all of a delta's tensors (a full state_dict saved with the deltas) gives it
    values too: a post-hook on the backbone notices, so that route raises no false alarm.
    """

    def __init__(self, state: Any) -> None:
        self.state = state
        state.gate.checks.append(self)
        self._loaded = state.backbone.register_load_state_dict_post_hook(self._after_load)

    def pending(self) -> list[Any]:
        return [h for h in self.state.handles if h.__dict__.get(PENDING)]

    def stop(self) -> None:
        if self in self.state.gate.checks:
            self.state.gate.checks.remove(self)
        self._loaded.remove()
        self.state.meta_watch = None

    def _after_load(self, module: nn.Module, incompatible: Any) -> None:
        missing = set(incompatible.missing_keys)
        for h in self.pending():
            names = [n for n, _ in delta_tensors(h)]
            if h.attached and not on_meta(h) and names and not missing.intersection(names):
                initialised(h)

    def __call__(self) -> None:
        pending = [h for h in self.pending() if h.attached]
        if not pending:
            return
        modules = dict(self.state.backbone.named_modules())
        if all(targets_on_meta(h, modules) for h in pending):
            return  # a forward on meta tensors (shape inference): nothing has values yet, nothing is wrong
        stuck = [(h.name, on_meta(h)) for h in pending if on_meta(h)]
        if stuck:
            name, tensors = stuck[0]
            raise StateError(
                f"delta {name!r} is still on the meta device (no values; e.g. {tensors[0]}) while the backbone it "
                f"patches is not: {MATERIALISE}"
            )
        _warn(
            f"the deltas {[h.name for h in pending]} were built on the meta device and never given values: they hold "
            f"what materialising left in them (to_empty: uninitialised memory). Call fxdelta.reset_deltas(model) to "
            f"initialise them as compile does (or load theirs: fxdelta.load, load_state_dict with their keys)"
        )
        for h in pending:
            initialised(h)
