"""What a merge into the backbone's weights leaves on a handle, and the exact write-back that undoes it.

``fxdelta.merge`` (the merge wing) folds deltas into the weights; the handle keeps the record here while
merged (``Merged``: a copy of every parameter a merge overwrote, with its version counter), because
``detach()`` must undo a merge bit for bit: ``unmerge`` writes back exactly the bits that were there,
never a subtraction, and refuses when that would throw away a later write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from fxdelta.compiler.install import apply, match_backbone
from fxdelta.compiler.state import BackboneState
from fxdelta.compiler.verify import Check
from fxdelta.core.entries import Entry
from fxdelta.core.errors import MergeError
from fxdelta.core.handles import DeltaHandle
from fxdelta.core.torch_internals import version_of
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeReport:
    """What a merge checked: per site run (by module path), the max abs error of its output, and the bound."""

    deltas: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()

    @property
    def errors(self) -> dict[str, float]:
        return {c.path: c.error for c in self.checks}

    @property
    def max_error(self) -> float:
        return max((c.error for c in self.checks), default=0.0)

    def __add__(self, other: MergeReport) -> MergeReport:
        return MergeReport(self.deltas + other.deltas, self.checks + other.checks)


@dataclass
class Write:
    """One parameter a merge overwrote: what was there (None once merged for good), and its version counter."""

    name: str  # its backbone state_dict name
    param: nn.Parameter
    original: torch.Tensor | None
    before: int  # the version counter before the write, and after it (a change since means another write)
    version: int


@dataclass
class Merged:
    """A handle's merge: when (a serial of its backbone), what it wrote, what it checked; ``final`` after
    ``merge_and_unload`` (nothing kept, the delta cannot come back)."""

    serial: int
    writes: list[Write]
    report: MergeReport
    final: bool = False
    names: set[str] = field(default_factory=set)


class Handle(DeltaHandle, Protocol):
    """What merging needs of a delta model (``fxdelta.deltas.handle.Handle``, which imports this file)."""

    method: Method
    config: DeltaConfig
    entries: list[Entry]
    backbone: nn.Module
    state: BackboneState
    merge_record: Merged | None

    def sync_state_dict_hook(self) -> None: ...


def refuse_attach(handle: Handle) -> None:
    """Attaching a merged delta would apply it twice: refused, naming the way back."""
    record = handle.merge_record
    if record is not None and record.final:
        raise MergeError(
            f"{handle.name} is gone with fxdelta's state: merge_and_unload folded the deltas into the backbone for "
            f"good and kept no original weights; build a new delta model to train another delta"
        )
    if record is not None:
        raise MergeError(
            f"{handle.name} is merged into the backbone's weights: attaching it too would apply it twice; "
            f"unmerge it first (fxdelta.unmerge(model) or {handle.name}.unmerge_from_backbone())"
        )


def unmerge(handles: Iterable[Handle], *, attach: bool = True) -> list[str]:
    """Write back what merging ``handles`` overwrote (bit for bit) and, with ``attach``, attach them again.

    Latest merge first; a merge into a parameter a later merge (not unmerged here) wrote again is refused,
    and so is one whose parameters were written since (training the merged weights): that would be lost.
    """
    todo = [h for h in handles if h.merge_record is not None]
    if not todo:
        return []
    state = todo[0].state
    with state.gate.changing():
        todo.sort(key=lambda h: _record(h).serial, reverse=True)
        params = {id(w.param): w.param for h in todo for w in _record(h).writes}
        current = [(p, p.detach().clone()) for p in params.values()]
        start = {i: version_of(p) for i, p in params.items()}
        previous = list(state.active)
        try:
            for h in todo:
                _check_unmergeable(state, h, todo)
                with torch.no_grad():
                    for w in _record(h).writes:
                        w.param.copy_(w.original)  # type: ignore[arg-type]  # checked: kept
                carry_versions(state, {id(w.param): w.before for w in _record(h).writes})
            if attach:
                entries = [e for h in todo for e in h.entries]
                match_backbone(state.backbone, entries)
                apply(state, previous + entries)
        except BaseException:
            with torch.no_grad():
                for p, value in current:
                    p.copy_(value)
            carry_versions(state, start)
            raise
        for h in todo:
            h.merge_record = None
            h.attached = attach
            h.sync_state_dict_hook()
    logger.info("fxdelta: unmerged %s", [h.name for h in todo])
    return [h.name for h in todo]


def carry_versions(state: BackboneState, versions: dict[int, int]) -> None:
    """Parameters (by id) that fxdelta just wrote, whose version counter read ``versions[id]`` before: a merge
    recorded at that version still holds (the values it wrote are there), at the new version."""
    for h in _merged_handles(state):
        for w in _record(h).writes:
            if versions.get(id(w.param)) == w.version:
                w.version = version_of(w.param)


def _record(handle: Handle) -> Merged:
    record = handle.merge_record
    if record is None:
        raise MergeError(f"internal: {handle.name} is not merged")
    return record


def _merged_handles(state: BackboneState) -> list[Handle]:
    return [h for h in state.handles if getattr(h, "merge_record", None) is not None]  # type: ignore[misc]


def _check_unmergeable(state: BackboneState, handle: Handle, todo: list[Handle]) -> None:
    record = _record(handle)
    if record.final:
        refuse_attach(handle)
    later = [
        h
        for h in _merged_handles(state)
        if h not in todo and _record(h).serial > record.serial and _record(h).names & record.names
    ]
    if later:
        raise MergeError(
            f"{later[0].name} was merged after {handle.name} into the same weights "
            f"({sorted(_record(later[0]).names & record.names)}); unmerge it first (fxdelta.unmerge(model) does all)"
        )
    params = dict(state.backbone.named_parameters())
    for w in record.writes:
        kept = w.original
        if (
            params.get(w.name) is not w.param
            or kept is None
            or (w.param.dtype, w.param.device) != (kept.dtype, kept.device)
        ):
            raise MergeError(
                f"{w.name} was replaced, or moved to another dtype or device, while {handle.name} was merged; "
                f"unmerging would not restore it bit for bit"
            )
        if version_of(w.param) != w.version:
            raise MergeError(
                f"{w.name} was written while {handle.name} was merged (an optimizer step or load_state_dict); "
                f"unmerging would throw that away. Save the model as it is, or load the original weights"
            )
