"""Merging every delta of a backbone at once: ``fxdelta.merge``, ``fxdelta.unmerge``, ``fxdelta.merge_and_unload``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from fxdelta.core.errors import FxDeltaWarning, MergeError
from fxdelta.deltas.merge_record import Handle, Merged, MergeReport, unmerge
from fxdelta.merge import checked


def _refusal(h: Handle) -> str:
    return f"{h.name} ({h.method.delta_type}): {h.method.fold_refusal}"


def merge_all(backbone: nn.Module, handles: Sequence[Handle]) -> MergeReport:
    """Merge every attached delta whose method folds; the others stay attached (a warning names them).

    Nothing new to merge while some delta is merged is a no-op (an empty report); no delta at all to
    merge is a ``MergeError``.
    """
    attached = [h for h in handles if h.attached]
    foldable = [h for h in attached if h.method.fold is not None]
    rest = [h for h in attached if h.method.fold is None]
    if not foldable:
        if any(h.merge_record is not None for h in handles):
            return MergeReport()
        why = "; ".join(_refusal(h) for h in rest) if rest else "it has no attached deltas"
        raise MergeError(f"nothing on this {type(backbone).__name__} can be merged into its weights: {why}")
    report = checked.merge(foldable)
    if rest:
        warnings.warn(
            FxDeltaWarning(f"these deltas stay attached, unmerged: {'; '.join(_refusal(h) for h in rest)}"),
            stacklevel=3,
        )
    return report


def unmerge_all(backbone: nn.Module, handles: Sequence[Handle]) -> list[str]:
    """Unmerge every merged delta (latest first) and attach it again; returns their names (none: a no-op)."""
    if not handles:
        raise MergeError(f"this {type(backbone).__name__} has no deltas, so nothing is merged into it")
    return unmerge(handles)


def merge_and_unload(backbone: nn.Module, handles: Sequence[Handle]) -> MergeReport:
    """Merge every attached delta for good and take fxdelta off the backbone: a plain model is left.

    Refused (nothing changed) while a delta that cannot fold is attached: unloading would drop it.
    """
    blocking = [h for h in handles if h.attached and h.method.fold is None]
    if blocking:
        raise MergeError(
            f"merge_and_unload would drop deltas that cannot be merged: {'; '.join(_refusal(h) for h in blocking)}. "
            f"Detach them first, or keep the model patched"
        )
    if not handles:
        raise MergeError(f"this {type(backbone).__name__} has no deltas to merge and unload")
    state = handles[0].state
    with state.gate.changing():
        report = checked.merge([h for h in handles if h.attached])
        for h in handles:
            if h.merge_record is not None:
                h.merge_record.final = True
                for w in h.merge_record.writes:
                    w.original = None  # nothing to go back to: the merge is the model now
            else:  # detached: its delta goes with fxdelta; attaching it again is refused
                h.merge_record = Merged(-1, [], MergeReport(), final=True)
            state.forget(h)  # the last one drops fxdelta's state, and what it added to the backbone with it
    return report
