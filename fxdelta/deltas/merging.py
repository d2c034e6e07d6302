"""Merging: fold attached deltas into the backbone's own weights, and put the weights back.

Each delta merges on its own, in creation order (the order deltas on one module compose in): its
method's ``fold`` gives new values for its targets' parameters; the sites carrying it run on probe
inputs (``fxdelta.compiler.verify``), the delta is taken out, the values are written in place (the
parameter objects stay, so optimizers keep them; tied weights are refused), the sites run again, and a max abs error
above the dtype's bound puts everything back and raises ``MergeError``. What was overwritten is kept
(a copy per written parameter), so unmerging writes back exactly the bits that were there, never a
subtraction, and attaches the delta again. A merge of several deltas is all or none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from fxdelta.compiler.install import apply, match_backbone
from fxdelta.compiler.state import BackboneState
from fxdelta.compiler.verify import Check, Probe, compare
from fxdelta.core.errors import FxDeltaError, MergeError
from fxdelta.deltas.folds import folded
from fxdelta.deltas.merged import Handle, Merged, MergeReport, Write, refuse_attach
from fxdelta.methods.registry import METHODS

logger = logging.getLogger(__name__)


def merge(handles: Sequence[Handle]) -> MergeReport:
    """Merge ``handles`` (attached, of methods that fold) into their backbone, in creation order, all or none."""
    if not handles:
        return MergeReport()
    state = handles[0]._state
    report = MergeReport()
    with state.gate.changing():
        done: list[Handle] = []
        try:
            for h in sorted(handles, key=lambda h: h.entries[0].order if h.entries else 0):
                if h._merge_record is None:
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
    found = folded(state, handle)
    writes, ours = found.writes, {id(e) for e in handle.entries}
    probe = Probe(state, found.probes)
    before = probe.run()
    previous = list(state.active)
    kept = [(p, p.detach().clone()) for _, p, _ in writes]
    start = {id(p): p._version for _, p, _ in writes}
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
        _carry(state, start)
        apply(state, previous)
        raise
    report = MergeReport((handle.name,), tuple(checks))
    record = [
        Write(n, p, original, start[id(p)], p._version) for (n, p, _), (_, original) in zip(writes, kept, strict=True)
    ]
    handle._merge_record = Merged(state.next_serial(), record, report, names={n for n, _, _ in writes})
    handle.attached = False
    handle._sync_state_dict_hook()
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


def unmerge(handles: Iterable[Handle], *, attach: bool = True) -> list[str]:
    """Write back what merging ``handles`` overwrote (bit for bit) and, with ``attach``, attach them again.

    Latest merge first; a merge into a parameter a later merge (not unmerged here) wrote again is refused,
    and so is one whose parameters were written since (training the merged weights): that would be lost.
    """
    todo = [h for h in handles if h._merge_record is not None]
    if not todo:
        return []
    state = todo[0]._state
    with state.gate.changing():
        todo.sort(key=lambda h: _record(h).serial, reverse=True)
        params = {id(w.param): w.param for h in todo for w in _record(h).writes}
        current = [(p, p.detach().clone()) for p in params.values()]
        start = {i: p._version for i, p in params.items()}
        previous = list(state.active)
        try:
            for h in todo:
                _check_unmergeable(state, h, todo)
                with torch.no_grad():
                    for w in _record(h).writes:
                        w.param.copy_(w.original)  # type: ignore[arg-type]  # checked: kept
                _carry(state, {id(w.param): w.before for w in _record(h).writes})
            if attach:
                entries = [e for h in todo for e in h.entries]
                match_backbone(state.backbone, entries)
                apply(state, previous + entries)
        except BaseException:
            with torch.no_grad():
                for p, value in current:
                    p.copy_(value)
            _carry(state, start)
            raise
        for h in todo:
            h._merge_record = None
            h.attached = attach
            h._sync_state_dict_hook()
    logger.info("fxdelta: unmerged %s", [h.name for h in todo])
    return [h.name for h in todo]


def _carry(state: BackboneState, versions: dict[int, int]) -> None:
    """Parameters (by id) that fxdelta just wrote, whose version counter read ``versions[id]`` before: a merge
    recorded at that version still holds (the values it wrote are there), at the new version."""
    for h in _merged_handles(state):
        for w in _record(h).writes:
            if versions.get(id(w.param)) == w.version:
                w.version = w.param._version


def _record(handle: Handle) -> Merged:
    record = handle._merge_record
    if record is None:
        raise MergeError(f"internal: {handle.name} is not merged")
    return record


def _merged_handles(state: BackboneState) -> list[Handle]:
    return [h for h in state.handles if getattr(h, "_merge_record", None) is not None]  # type: ignore[misc]


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
        if w.param._version != w.version:
            raise MergeError(
                f"{w.name} was written while {handle.name} was merged (an optimizer step or load_state_dict); "
                f"unmerging would throw that away. Save the model as it is, or load the original weights"
            )


def fold_training_parts(handle: Handle) -> None:
    """``DeltaModel.merge()``: fold what only serves training into the delta itself (prefix tuning's MLP into
    its prefixes); the config then records ``exported()``. Methods with nothing to fold raise."""
    merge = handle.method.merge
    if merge is None:
        mergeable = sorted(m.delta_type for m in METHODS.values() if m.merge is not None)
        raise FxDeltaError(
            f"{handle.config.delta_type} has nothing to merge: only {mergeable} fold something into their deltas "
            f"(to fold a delta into the backbone's weights: merge_into_backbone() or fxdelta.merge(model))"
        )
    for e in handle.entries:
        merge(e.delta)
    handle.config = handle.config.exported()
    if handle.attached:  # the sites that served the folded part go
        apply(handle._state, handle._state.active)


class Mergeable:
    """The merge methods of a delta model (``fxdelta.deltas.handle.DeltaModel``)."""

    _merge_record: Merged | None = None  # while merged into the backbone's weights

    @property
    def merged(self) -> bool:
        """Whether the delta is folded into the backbone's weights (``merge_into_backbone``)."""
        return self._merge_record is not None

    def merge_into_backbone(self: Handle) -> MergeReport:
        """Fold this attached delta into its targets' weights and take its sites out (``fxdelta.merge`` does every
        delta). The merge is checked: the sites carrying it run on probe inputs before and after, and a max abs
        error above the dtype's bound is a ``MergeError`` that changes nothing. Returns what was checked
        (``report.max_error``); already merged, returns the first report and changes nothing."""
        if self._merge_record is not None:
            return self._merge_record.report
        return merge([self])

    def unmerge_from_backbone(self: Handle) -> Handle:
        """Write back the exact weights the merge overwrote and attach the delta again (a no-op if not merged)."""
        unmerge([self])
        return self
