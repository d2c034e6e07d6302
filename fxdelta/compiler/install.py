"""Install: make exactly a given set of deltas attached on the live backbone, transactionally.

Every change (a new delta, attach, detach, merge) goes through ``apply``: re-plan for the entries
wanted, uninstall the sites that go, put the delta modules in the ``deltas`` containers, install
the sites that come. Sites whose key survives stay installed (their hooks keep their place). If
any step fails, the previous deltas are put back and the error re-raised, so a failure never
leaves a half-patched backbone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from fxdelta.compiler.plan import Planner
from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import DELTA_NAMESPACE, DeltaContainer, Entry
from fxdelta.core.precision import own_parameter
from fxdelta.sites.base import Site


def apply(state: BackboneState, entries: Iterable[Entry]) -> None:
    """Make exactly ``entries`` attached on ``state.backbone``, touching only the sites that change.

    Waits for the backbone's running forwards, and holds new ones back, while it changes anything.
    """
    with state.gate.changing():
        try:
            _apply(state, entries)
        finally:
            state.gate.keep_outermost(state.backbone)


def _apply(state: BackboneState, entries: Iterable[Entry]) -> None:
    new_entries = sorted(entries, key=lambda e: e.order)
    old_entries = state.active
    planner = Planner(
        state.backbone,
        state.records,
        state.hooks_needed,
        state.traces,
        state.sites,
        state.suspended,
        state.reuse,
        refresh=_Replan(state),
        gate=state.gate,
    )
    planned = planner.plan(new_entries)
    current = {s.key: s for s in state.sites}
    wanted = {s.key for s in planned}
    dropped = [s for s in state.sites if s.key not in wanted]
    added = [s for s in planned if s.key not in current]
    removed: list[Site] = []
    installed: list[Site] = []
    try:
        for site in reversed(dropped):
            site.uninstall()
            removed.append(site)
        register(planner.modules, old_entries, new_entries)
        for site in added:
            site.install()
            installed.append(site)
    except BaseException:
        for site in reversed(installed):
            site.uninstall()
        register(planner.modules, new_entries, old_entries)
        for site in reversed(removed):
            site.install()
        raise
    state.sites = [current.get(s.key, s) for s in planned]
    state.active = new_entries


class _Replan:
    """Re-plans a backbone for the deltas attached now (an object, not a closure: a deepcopy of the
    backbone must re-plan the copy)."""

    def __init__(self, state: BackboneState) -> None:
        self.state = state

    def __call__(self) -> None:
        apply(self.state, self.state.active)


def register(modules: Mapping[str, nn.Module], old: list[Entry], new: list[Entry]) -> None:
    """Make the ``deltas`` containers of ``modules`` (by path) hold exactly ``new`` (in creation order), in place."""
    by_target: dict[str, list[Entry]] = {}
    for e in new:
        by_target.setdefault(e.target, []).append(e)
    for target in {e.target for e in old} | set(by_target):
        module = modules[target]
        container = module._modules.get(DELTA_NAMESPACE)
        wanted = {e.name: e.delta for e in by_target.get(target, [])}
        if not wanted:
            if isinstance(container, DeltaContainer):
                del module._modules[DELTA_NAMESPACE]
            continue
        if container is None:
            container = DeltaContainer()
            container.train(module.training)  # the deltas' own modes are matched on attach
            module.add_module(DELTA_NAMESPACE, container)
        # In place: installed graphs hold this very container.
        container._modules.clear()
        container._modules.update(wanted)


def match_backbone(backbone: nn.Module, entries: Sequence[Entry]) -> None:
    """Make deltas about to be attached follow what happened to the backbone while they were out (or
    before they existed): ``.to(device)`` calls, ``.to(dtype)`` calls (which cast attached deltas too; a
    delta kept in its own dtype on an unchanged backbone keeps it) and the train/eval mode."""
    modules = dict(backbone.named_modules())
    for e in entries:
        target = modules[e.target]
        ref = own_parameter(target)
        if ref is not None:
            if e.backbone_dtype is not None and e.backbone_dtype != ref.dtype:
                e.delta.to(device=ref.device, dtype=ref.dtype)
            else:
                e.delta.to(device=ref.device)
            e.backbone_dtype = ref.dtype
        e.delta.train(target.training)
