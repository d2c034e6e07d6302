"""What a merge into the backbone's weights keeps, and what a delta model offers for it.

``fxdelta.deltas.merging`` does the merging; this file holds its records (``MergeReport``, the
``Merged`` record a handle keeps while merged) and what merging needs of a delta model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.compiler.verify import Check
from fxdelta.core.entries import Entry
from fxdelta.core.errors import MergeError
from fxdelta.core.handles import DeltaHandle
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method


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
    """What merging needs of a delta model (``fxdelta.deltas.handle.DeltaModel``)."""

    method: Method
    config: DeltaConfig
    entries: list[Entry]
    backbone: nn.Module
    _state: BackboneState
    _merge_record: Merged | None

    def _sync_state_dict_hook(self) -> None: ...


def refuse_attach(handle: Handle) -> None:
    """Attaching a merged delta would apply it twice: refused, naming the way back."""
    record = handle._merge_record
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
