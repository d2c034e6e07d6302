"""fxdelta's bookkeeping on one backbone: attached deltas, installed sites, observation caches.

Every change (a new delta, attach, detach) goes through ``BackboneState.apply``: tear everything
down, register the attached deltas, re-plan, install. It is transactional: if any step fails, the
previous set of deltas is put back, so a failure never leaves a half-patched backbone. Traces and
observations are cached, so re-planning on attach/detach only regenerates code.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from torch import nn

from fxdelta.entries import DELTA_NAMESPACE, Entry
from fxdelta.examples import Example
from fxdelta.graph_site import GraphSite
from fxdelta.hooks import HookSite
from fxdelta.observe import CallRecord, observe
from fxdelta.plan import Planner, TraceCache, parent_paths

if TYPE_CHECKING:
    from fxdelta.handle import DeltaModel

logger = logging.getLogger(__name__)

STATE_ATTR = "_fxdelta_state"


class DeltaContainer(nn.ModuleDict):
    """The ``deltas`` child fxdelta adds to a patched module: one entry per attached delta."""


def backbone_module_names(backbone: nn.Module) -> list[str]:
    """Module names a selector may address: the backbone's own, never those inside fxdelta's deltas."""
    named = list(backbone.named_modules())
    inside = tuple(f"{path}." for path, m in named if isinstance(m, DeltaContainer))
    return [p for p, m in named if not isinstance(m, DeltaContainer) and not p.startswith(inside)]


class BackboneState:
    """Shared by every delta model on one backbone (stored as a plain attribute on it)."""

    @staticmethod
    def find(backbone: nn.Module) -> "BackboneState | None":
        return backbone.__dict__.get(STATE_ATTR)

    @classmethod
    def ensure(cls, backbone: nn.Module) -> "BackboneState":
        state = cls.find(backbone)
        if state is None:
            state = cls(backbone)
            object.__setattr__(backbone, STATE_ATTR, state)
        return state

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.handles: list[DeltaModel] = []  # every delta model created on this backbone
        self.sites: list[GraphSite | HookSite] = []
        self.records: dict[str, CallRecord] = {}
        self.extras: dict[str, dict] = {}  # {path: {delta_type: what that method's probe found}}
        self.hooks_needed: set[str] = set()
        self.failures: list[str] = []
        self.cache = TraceCache()
        self._serial = itertools.count()
        self._active: list[Entry] = []

    # -- names and order --------------------------------------------------------------------------
    def next_serial(self) -> int:
        return next(self._serial)

    def unique_name(self, base: str) -> str:
        taken = {h.name for h in self.handles}
        if base not in taken:
            return base
        return next(f"{base}_{i}" for i in itertools.count(1) if f"{base}_{i}" not in taken)

    @property
    def active(self) -> list[Entry]:
        return list(self._active)

    def forget_if_unused(self) -> None:
        """Remove the state attribute again if nothing was ever attached (failed first compile)."""
        if not self.handles and not self._active and self.find(self.backbone) is self:
            del self.backbone.__dict__[STATE_ATTR]

    # -- observation ------------------------------------------------------------------------------
    def observe(self, targets: Sequence[str], example: Example) -> None:
        """Record call patterns of ``targets`` and their ancestors (cached across deltas)."""
        wanted = {p for t in targets for p in [t, *parent_paths(t)]} - set(self.records)
        if not wanted:
            return
        with self._suspended():
            records, failure = observe(self.backbone, example, sorted(wanted))
            self.records.update(records)
            if failure:
                self.failures.append(failure)
            uncalled = [t for t in targets if t not in self.records]
            if uncalled and not failure:
                # Some parents call a submodule only when hooks are present (fused fast paths).
                hooked, _ = observe(self.backbone, example, uncalled, hooked=uncalled)
                self.hooks_needed |= set(hooked)
                self.records.update(hooked)

    def probe(self, method: Any, targets: Sequence[str], example: Example) -> None:
        """Run a method's own probe on the bare backbone, for targets it has not seen yet."""
        todo = [t for t in targets if method.delta_type not in self.extras.get(t, {})]
        if method.probe is None or not todo:
            return
        with self._suspended():
            found = method.probe(self.backbone, example, todo)
        for path, info in found.items():
            self.extras.setdefault(path, {})[method.delta_type] = info

    @contextmanager
    def _suspended(self) -> Iterator[None]:
        """Take the installed sites out while observing, so the backbone runs as it was."""
        for site in reversed(self.sites):
            site.uninstall()
        try:
            yield
        finally:
            for site in self.sites:
                site.install()

    # -- applying a set of deltas -----------------------------------------------------------------
    def apply(self, entries: Iterable[Entry]) -> None:
        """Make exactly ``entries`` attached, touching only the sites that change.

        Sites whose module, deltas and graph stay the same stay installed (their hooks keep their
        place); the others are swapped. On failure everything is put back and the error re-raised.
        """
        new_entries = sorted(entries, key=lambda e: e.order)
        old_entries = self._active
        planner = Planner(
            self.backbone, self.records, self.hooks_needed, self.cache, self.sites, self._suspended, self.extras
        )
        planned = planner.plan(new_entries)
        current = {s.key: s for s in self.sites}
        wanted = {s.key for s in planned}
        dropped = [s for s in self.sites if s.key not in wanted]
        added = [s for s in planned if s.key not in current]
        removed: list[GraphSite | HookSite] = []
        installed: list[GraphSite | HookSite] = []
        try:
            for site in reversed(dropped):
                site.uninstall()
                removed.append(site)
            self._register(old_entries, new_entries)
            for site in added:
                site.install()
                installed.append(site)
        except BaseException:
            for site in reversed(installed):
                site.uninstall()
            self._register(new_entries, old_entries)
            for site in reversed(removed):
                site.install()
            raise
        self.sites = [current.get(s.key, s) for s in planned]
        self._active = new_entries

    def _register(self, old: list[Entry], new: list[Entry]) -> None:
        """Make the ``deltas`` containers hold exactly ``new`` (in creation order), in place."""
        modules = dict(self.backbone.named_modules())
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
                module.add_module(DELTA_NAMESPACE, container)
            # In place: installed graphs hold this very container.
            container._modules.clear()
            container._modules.update(wanted)

    def site_for(self, path: str) -> GraphSite | HookSite | None:
        """The installed site whose graph or hooks carry the delta on ``path``."""
        for site in self.sites:
            if site.path == path or any(e.target == path for e in site.entries):
                return site
        return None
