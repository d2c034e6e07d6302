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
from typing import TYPE_CHECKING, Iterator

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
        """Make exactly ``entries`` attached; on failure restore the previous ones and re-raise."""
        new = sorted(entries, key=lambda e: e.order)
        old = self._active
        self._teardown()
        try:
            self._setup(new)
        except BaseException:
            self._teardown()
            self._setup(old)
            raise

    def _setup(self, entries: list[Entry]) -> None:
        modules = dict(self.backbone.named_modules())
        for e in entries:
            target = modules[e.target]
            container = target._modules.get(DELTA_NAMESPACE)
            if container is None:
                container = DeltaContainer()
                target.add_module(DELTA_NAMESPACE, container)
            container[e.name] = e.delta
        self._active = entries
        planner = Planner(self.backbone, self.records, self.hooks_needed, self.cache)
        for site in planner.plan(entries):
            site.install()
            self.sites.append(site)

    def _teardown(self) -> None:
        while self.sites:
            self.sites[-1].uninstall()
            self.sites.pop()
        modules = dict(self.backbone.named_modules())
        for e in self._active:
            target = modules.get(e.target)
            container = None if target is None else target._modules.get(DELTA_NAMESPACE)
            if isinstance(container, DeltaContainer):
                container._modules.pop(e.name, None)
                if not len(container):
                    del target._modules[DELTA_NAMESPACE]
        self._active = []

    def site_for(self, path: str) -> GraphSite | HookSite | None:
        """The installed site whose graph or hooks carry the delta on ``path``."""
        for site in self.sites:
            if site.path == path or any(e.target == path for e in site.entries):
                return site
        return None
