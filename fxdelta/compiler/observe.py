"""Observe how the backbone calls its modules, with FakeTensors: shapes, dtypes, call patterns.

This replaces OpenDelta's real dummy forward. The backbone runs once under ``FakeTensorMode``
(no real compute) in eval mode without autograd, the mode in which fused inference fast paths
(e.g. ``nn.TransformerEncoderLayer``) skip calling their submodules. Each module of interest has
its ``forward`` wrapped by a recorder, not hooked, because torch disables some fast paths when
hooks are present; a module that is not called here would silently never see its delta.
Everything the forward touched is restored afterwards (``fxdelta.compiler.restore``). A layer that
would see what an observed sibling saw (same class and structure, equal attributes but ones the sibling
never read, alike inputs) replays the sibling's observation instead of running (``repeats``): on a
``meta`` backbone of 80 identical layers that is most of the forward.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.examples import Example
from fxdelta.compiler.likeness import OBSERVING
from fxdelta.compiler.repeats import Repeats
from fxdelta.compiler.restore import hooks_set_aside, restored_after
from fxdelta.core.calls import OutKind, first_hidden, first_param_name, hidden_slot
from fxdelta.core.records import CallRecord, TensorSpec
from fxdelta.core.torch_internals import FakeTensorMode

logger = logging.getLogger(__name__)


def as_fake(value: Any, mode: FakeTensorMode) -> Any:
    if isinstance(value, torch.Tensor):
        return mode.from_tensor(value)
    if isinstance(value, (tuple, list)):
        return type(value)(as_fake(v, mode) for v in value)
    if isinstance(value, dict):
        return {k: as_fake(v, mode) for k, v in value.items()}
    return value


Undo = Callable[[], None]


def run_on_fakes(backbone: nn.Module, example: Example, prepare: Callable[[list[Undo]], None]) -> None:
    """One eval-mode, no-grad forward of ``backbone`` on FakeTensors, leaving it as it was.

    ``prepare(undo)`` instruments the backbone first and appends to ``undo`` what takes its
    instruments out again; they run even when the forward raises (which propagates).
    """
    undo: list[Undo] = []
    with restored_after(backbone), hooks_set_aside(backbone):
        try:
            prepare(undo)
            backbone.eval()
            with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
                for module, call in example.calls(backbone):
                    module(*as_fake(call.args, mode), **as_fake(call.kwargs, mode))
        finally:
            for u in reversed(undo):
                u()


def _spec(value: Any) -> TensorSpec | None:
    return TensorSpec.of(value) if isinstance(value, torch.Tensor) else None


def _capture(args: tuple, kwargs: Mapping[str, Any], out: Any, first_param: str | None) -> CallRecord:
    slot = hidden_slot(args, kwargs, first_param)
    h_in = None if slot is None else (args[slot] if isinstance(slot, int) else kwargs[slot])
    kind, hidden = first_hidden(out)
    outputs: tuple[TensorSpec, ...] | None = None
    if kind is OutKind.TENSOR:
        outputs = (TensorSpec.of(out),)
    elif isinstance(out, tuple) and all(isinstance(o, torch.Tensor) for o in out):
        outputs = tuple(TensorSpec.of(o) for o in out)
    return CallRecord(
        args=tuple(_spec(a) for a in args),
        kwargs=tuple((k, _spec(v)) for k, v in kwargs.items()),
        h_in_slot=slot,
        h_in=_spec(h_in),
        out_kind=kind,
        h_out=_spec(hidden),
        outputs=outputs,
    )


def observe(
    backbone: nn.Module,
    example: Example,
    paths: Iterable[str],
    *,
    hooked: Iterable[str] = (),
    replay: bool = True,
) -> tuple[dict[str, CallRecord], str | None]:
    """Run ``backbone`` once on FakeTensors and record the first call of each module in ``paths``.

    ``hooked`` modules get a no-op forward hook during the run, to learn whether a module that
    is skipped without hooks is called once hooks are present. Returns the records and, if the
    forward failed, the reason (the records are then partial). ``replay``: a layer that would see
    what an observed sibling saw replays its observation (``fxdelta.compiler.repeats``) instead of
    running; the records are the same.
    """
    observed = list(dict.fromkeys(paths))
    modules = dict(backbone.named_modules())
    records: dict[str, CallRecord] = {}
    counts: dict[str, int] = {}
    started: dict[str, int] = {}
    repeats = Repeats(backbone, observed, records, counts, started) if replay else None

    def recorder(path: str, module: nn.Module, original: Any, recorded: bool) -> Any:
        first = first_param_name(module) if recorded else None  # of the forward it wraps
        replayed = repeats.call if repeats is not None and path in repeats.stacks else None

        def forward(*args: Any, **kwargs: Any) -> Any:
            if recorded:
                started.setdefault(path, len(started))
            out = replayed(path, module, original, args, kwargs) if replayed else original(*args, **kwargs)
            if recorded:
                counts[path] = counts.get(path, 0) + 1
                if path not in records:
                    records[path] = _capture(args, kwargs, out, first)
            return out

        # Ours only if it wraps the class's forward: likeness tells it from a forward someone else installed.
        setattr(forward, OBSERVING, getattr(original, "__func__", None) is type(module).forward)
        return forward

    def prepare(undo: list[Undo]) -> None:
        recorded = set(observed)
        for path in dict.fromkeys([*observed, *(repeats.stacks if repeats else ())]):
            module = modules[path]  # restored_after puts the class forwards back
            module.forward = recorder(path, module, module.forward, path in recorded)
        for path in hooked:
            undo.append(modules[path].register_forward_hook(lambda *_: None).remove)

    failure = None
    try:
        run_on_fakes(backbone, example, prepare)
    except Exception as e:  # any failure only means less information; the caller decides
        failure = f"{type(e).__name__}: {e}"
        logger.info("fxdelta: FakeTensor observation of %s failed: %s", type(backbone).__name__, failure)
    return {p: dataclasses.replace(r, calls=counts[p], order=started[p]) for p, r in records.items()}, failure
