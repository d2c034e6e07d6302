"""What merging a delta writes into the weights, and where it is checked; nothing is written here.

A method's fold gives new values for its target's own parameters, or (``ScaleReader``) a per-feature
scale that the target cannot hold: an activation's output scaled, as IA3 does on ``ff.act``. That
scale folds into the input columns of the layer that reads the output, the FFN's down projection
(``ff.w2`` of the common structure map, in the same block). Such a fold changes two modules, so it is
checked on a module holding both: their nearest common ancestor whose recorded call takes tensors
only (on BERT, whose layers take optional arguments, the whole backbone), else the nearest one
observed, with its other arguments left to their defaults (BART's and OPT's layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import MergeError
from fxdelta.core.paths import parent_paths
from fxdelta.deltas.merge_record import Handle
from fxdelta.methods.folding import out_in, wide
from fxdelta.spec.method import ScaleReader, is_linear_like
from fxdelta.spec.selectors import resolve
from fxdelta.spec.structure import common_selectors

READER = "ff.w2"  # the common-structure name of the layer that reads the FFN's activation


@dataclass(frozen=True)
class PlannedWrites:
    """(name, parameter, new value) per parameter written, and the module paths to run before and after."""

    writes: list[tuple[str, nn.Parameter, torch.Tensor]]
    probes: list[str]


def _parts(path: str) -> list[str]:
    return path.split(".") if path else []


def _shared(a: str, b: str) -> int:
    n = 0
    for x, y in zip(_parts(a), _parts(b), strict=False):
        if x != y:
            break
        n += 1
    return n


def _reader(backbone: nn.Module, target: str, features: int) -> str:
    """The linear layer that reads ``target``'s output (``ff.w2`` nearest to it), or a ``MergeError``."""
    selectors = common_selectors(backbone, READER) or ()
    names = [n for n, _ in backbone.named_modules()]
    found = {n for s in selectors for n in resolve(names, s)}
    if not found:
        raise MergeError(
            f"fxdelta finds the layer that reads it as the FFN's down projection ({READER} of the common structure "
            f"map), and {type(backbone).__name__} has none"
        )
    best = max(_shared(n, target) for n in found)
    nearest = sorted(n for n in found if _shared(n, target) == best)
    if best == 0 or len(nearest) > 1:
        raise MergeError(f"no single {READER} sits in the same block as it (nearest: {nearest})")
    module = backbone.get_submodule(nearest[0])
    weight = getattr(module, "weight", None)
    if (
        not is_linear_like(module)
        or not isinstance(weight, torch.Tensor)
        or out_in(module, weight).shape[1] != features
    ):
        raise MergeError(f"{nearest[0]}, the {READER} nearest to it, is no linear layer reading {features} features")
    return nearest[0]


def _checked_at(state: BackboneState, paths: list[str]) -> str:
    """The nearest common ancestor of ``paths`` whose recorded call takes only tensors, else the nearest one
    recorded at all (its other arguments left to their defaults)."""
    common = paths[0]
    for p in paths[1:]:
        common = ".".join(_parts(common)[: _shared(common, p)])
    recorded = [p for p in [common, *parent_paths(common)] if p in state.records]
    if not recorded:
        raise MergeError(f"no module holding {paths} was observed, to check the merge on")
    return next((p for p in recorded if state.records[p].all_tensor_inputs), recorded[0])


def planned_writes(state: BackboneState, handle: Handle) -> PlannedWrites:
    """What merging ``handle`` writes (checked: shapes, ties, finite values) and where it is checked."""
    fold = handle.method.fold
    backbone = state.backbone
    modules = dict(backbone.named_modules())
    names: dict[int, list[str]] = {}
    for n, p in backbone.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    pending: dict[int, tuple[str, nn.Parameter, torch.Tensor]] = {}  # by parameter: folds may write one twice
    probes: list[str] = []  # the sites carrying the deltas, and where a fold into a reader is checked
    covered: set[str] = set()  # sites whose output a fold into a reader changes: checked further out only
    readers: set[str] = set()
    for e in handle.entries:
        module = modules[e.target]
        where = f"{handle.name} ({handle.method.delta_type}) on {e.target or '<root>'} ({type(module).__name__})"
        sites = [s.path for s in state.sites if any(x is e for x in s.entries)]

        def current(m: nn.Module) -> dict[str, torch.Tensor]:
            own = {n: p for n, p in m._parameters.items() if p is not None}
            return {n: pending[id(p)][2] if id(p) in pending else p.detach() for n, p in own.items()}

        answer = fold(e.delta, module, current(module)) if fold else "it does not fold"
        if isinstance(answer, ScaleReader):
            try:
                reader = _reader(backbone, e.target, answer.scale.numel())
                probe = _checked_at(state, [*sites, reader])
            except MergeError as err:
                raise MergeError(
                    f"{where} cannot be merged into the backbone's weights: {answer.why}, and its scale has no layer "
                    f"to go to: {err}; keep it attached"
                ) from None
            module, where, probes = modules[reader], f"{where}, into {reader}", [*probes, probe]
            covered.update(sites)
            readers.add(probe)
            weight = current(module)["weight"]
            answer = {"weight": out_in(module, wide(out_in(module, weight)) * wide(answer.scale)[None, :])}
        else:
            probes.extend(sites)
        if isinstance(answer, str):
            raise MergeError(f"{where} cannot be merged into the backbone's weights: {answer}; keep it attached")
        own = {n: p for n, p in module._parameters.items() if p is not None}
        for n, value in answer.items():
            p = own[n]
            value = value.to(dtype=p.dtype, device=p.device)
            shared = names[id(p)]
            if len(shared) > 1:
                raise MergeError(
                    f"{where}: {shared[0]} is shared with {shared[1:]} (tied weights), so folding into it would change "
                    f"them too; keep the delta attached"
                )
            if not bool(torch.isfinite(value).all()):
                raise MergeError(f"{where}: folding gives values that are not finite in {p.dtype} for {shared[0]}")
            pending[id(p)] = (shared[0], p, value)
    # A reader's check runs the sites it covers; every other site is run on its own too (a check further
    # out may leave some branch unrun: a cross-attention without encoder states).
    return PlannedWrites(list(pending.values()), [p for p in dict.fromkeys(probes) if p not in covered or p in readers])
