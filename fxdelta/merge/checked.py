"""Merging checked: fold attached deltas into the backbone's own weights, compared before and after.

Each delta merges on its own, in creation order (the order deltas on one module compose in): its
method's ``fold`` gives new values for its targets' parameters; the sites carrying it run on probe
inputs (``fxdelta.compiler.verify``), the delta is taken out, the values are written in place (the
parameter objects stay, so optimizers keep them; tied weights are refused), the sites run again, and a max abs error
above the dtype's bound puts everything back and raises ``MergeError``. What was overwritten is kept
on the handle (``fxdelta.deltas.merge_record``), whose ``unmerge`` writes back exactly the bits that were
there and attaches the delta again. A merge of several deltas is all or none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from fxdelta.compiler.install import apply
from fxdelta.compiler.state import BackboneState
from fxdelta.compiler.verify import Check, Probe, compare
from fxdelta.core.errors import MergeError
from fxdelta.core.torch_internals import version_of
from fxdelta.deltas.merge_record import Handle, Merged, MergeReport, Write, carry_versions, unmerge
from fxdelta.merge.writes import planned_writes

logger = logging.getLogger(__name__)


def merge(handles: Sequence[Handle]) -> MergeReport:
    """Merge ``handles`` (attached, of methods that fold) into their backbone, in creation order, all or none."""
    if not handles:
        return MergeReport()
    state = handles[0].state
    report = MergeReport()
    with state.gate.changing():
        done: list[Handle] = []
        try:
            for h in sorted(handles, key=lambda h: h.entries[0].order if h.entries else 0):
                if h.merge_record is None:
                    report += _merge_one(state, h)
                    done.append(h)
        except BaseException:
            unmerge(done)
            raise
    return report


def _merge_one(state: BackboneState, handle: Handle) -> MergeReport:
    fold = handle.method.fold
    if fold is None:
        raise MergeError(
            f"{handle.name} ({handle.method.delta_type}) cannot be merged into the backbone's weights: "
            f"{handle.method.fold_refusal}; keep it attached"
        )
    if not handle.attached:
        raise MergeError(f"{handle.name} is detached: attach it first (merging folds what an attached delta adds)")
    found = planned_writes(state, handle)
    writes, ours = found.writes, {id(e) for e in handle.entries}
    probe = Probe(state, found.probes)
    before = probe.run()
    previous = list(state.active)
    kept = [(p, p.detach().clone()) for _, p, _ in writes]
    start = {id(p): version_of(p) for _, p, _ in writes}
    try:
        apply(state, [e for e in previous if id(e) not in ours])
        with torch.no_grad():
            for _, p, value in writes:
                p.copy_(value)
        checks = compare(before, probe.run())
        bad = [c for c in checks if not c.ok]
        if bad:
            raise MergeError(_too_far(handle, bad, state))
    except BaseException:
        with torch.no_grad():
            for p, original in kept:
                p.copy_(original)
        carry_versions(state, start)
        apply(state, previous)
        raise
    report = MergeReport((handle.name,), tuple(checks))
    pairs = zip(writes, kept, strict=True)
    record = [Write(n, p, original, start[id(p)], version_of(p)) for (n, p, _), (_, original) in pairs]
    handle.merge_record = Merged(state.next_serial(), record, report, names={n for n, _, _ in writes})
    handle.attached = False
    handle.sync_state_dict_hook()
    logger.info(
        "fxdelta: merged %s into %d parameters; max abs error %.3g over %d sites",
        handle.name,
        len(writes),
        report.max_error,
        len(checks),
    )
    return report


def _too_far(handle: Handle, bad: list[Check], state: BackboneState) -> str:
    worst = max(bad, key=lambda c: c.error)
    mine = {e.target for e in handle.entries}
    others = sorted({e.name for e in state.active if e.target in mine and e.name != handle.name})
    hint = f" (it shares modules with {others}, which stay attached: merge those first)" if others else ""
    return (
        f"merging {handle.name} would change the output of {worst.path or '<root>'} by {worst.error:.3g}, above "
        f"the bound {worst.bound:.3g} for its dtype{hint}; nothing was changed, the delta stays attached"
    )


def merge_into_backbone(handle: Handle) -> MergeReport:
    """Merge one delta (``DeltaModel.merge_into_backbone``); already merged, its first report, nothing changed."""
    if handle.merge_record is not None:
        return handle.merge_record.report
    return merge([handle])
