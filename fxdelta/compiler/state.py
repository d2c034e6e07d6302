"""What fxdelta keeps on one backbone between calls: its delta models, installed sites, and caches.

Observations, probe results and traced regions are cached for the backbone's lifetime; built
sites are cached by key, so re-attaching a delta reuses the sites (and their generated code)
built for it before. Changes go through ``fxdelta.compiler.install.apply``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from fxdelta.compiler.examples import Example
from fxdelta.compiler.gate import Gate
from fxdelta.compiler.observe import observe
from fxdelta.compiler.trace import TraceCache
from fxdelta.core.entries import DELTA_NAMESPACE, Entry
from fxdelta.core.handles import DeltaHandle
from fxdelta.core.paths import parent_paths
from fxdelta.core.records import CallRecord
from fxdelta.sites.base import Site

STATE_ATTR = "_fxdelta_state"
BUILT_LIMIT = 256  # built sites kept for reuse, beyond the installed ones


class BackboneState:
    """Shared by every delta model on one backbone (stored as a plain attribute on it)."""

    @staticmethod
    def find(backbone: nn.Module) -> BackboneState | None:
        return backbone.__dict__.get(STATE_ATTR)

    @classmethod
    def ensure(cls, backbone: nn.Module) -> BackboneState:
        state = cls.find(backbone)
        if state is None:
            state = cls(backbone)
            object.__setattr__(backbone, STATE_ATTR, state)
        return state

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.handles: list[DeltaHandle] = []  # every delta model created on this backbone
        self.sites: list[Site] = []  # installed, in plan order
        self.active: list[Entry] = []  # the attached entries, in creation order
        self.records: dict[str, CallRecord] = {}
        self.probed: dict[tuple[Any, str], Any] = {}  # {(a method's probe, path): what it found}
        self.hooks_needed: set[str] = set()
        self.failures: list[str] = []
        self.traces = TraceCache()
        self.built: OrderedDict[tuple, Site] = OrderedDict()  # by key, least recently planned first
        self._serial = itertools.count()
        self.gate = Gate()  # counts the backbone's forwards for as long as it has delta models
        self.gate.watch(backbone)
        # What the layers above added to the backbone (a save_pretrained), taken off with this state.
        self.on_drop: list[Callable[[nn.Module], None]] = []

    def __getstate__(self) -> dict[str, Any]:
        # A deep copy's entries are new objects: built sites are keyed by the originals' ids.
        return {**self.__dict__, "built": OrderedDict()}

    # -- names and order --------------------------------------------------------------------------
    def next_serial(self) -> int:
        return next(self._serial)

    def unique_name(self, base: str) -> str:
        taken = {h.name for h in self.handles}
        if base not in taken:
            return base
        return next(f"{base}_{i}" for i in itertools.count(1) if f"{base}_{i}" not in taken)

    def forget(self, handle: DeltaHandle) -> None:
        """Drop a detached handle, the built sites that may hold its deltas, and, if nothing is
        left, the state itself (a failed first compile leaves no trace on the backbone)."""
        if handle in self.handles:
            self.handles.remove(handle)
        installed = {id(s) for s in self.sites}
        for key in [k for k, s in self.built.items() if id(s) not in installed]:
            del self.built[key]
        if not self.handles and not self.active and self.find(self.backbone) is self:
            self.gate.unwatch()
            del self.backbone.__dict__[STATE_ATTR]
            for undo in self.on_drop:
                undo(self.backbone)

    # -- observation ------------------------------------------------------------------------------
    def observe(self, targets: Sequence[str], example: Example) -> None:
        """Record call patterns of ``targets`` and their ancestors (cached across deltas)."""
        wanted = {p for t in targets for p in [t, *parent_paths(t)]}
        if wanted <= set(self.records):
            return
        with self.suspended():
            # Everything recorded so far again, too: call order is only comparable within one run.
            records, failure = observe(self.backbone, example, sorted(wanted | set(self.records)))
            self.records.update(records)
            if failure:
                self.failures.append(failure)
            uncalled = [t for t in targets if t not in self.records]
            if uncalled and not failure:
                # Some parents call a submodule only when hooks are present (fused fast paths).
                hooked, _ = observe(self.backbone, example, uncalled, hooked=uncalled)
                self.hooks_needed |= set(hooked)
                self.records.update(hooked)

    def probe(self, probe: Any, targets: Sequence[str], example: Example) -> dict[str, Any]:
        """What a method's ``probe`` finds at ``targets``, run on the bare backbone once per target."""
        todo = [t for t in targets if (probe, t) not in self.probed]
        if todo:
            with self.suspended():
                found = probe(self.backbone, example, todo)
            self.probed.update(((probe, path), info) for path, info in found.items())
        return {t: self.probed[(probe, t)] for t in targets if (probe, t) in self.probed}

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Take the installed sites out for a moment, so the backbone runs as it was (no forward of
        another thread sees that moment: it waits at the gate)."""
        with self.gate.changing():
            for site in reversed(self.sites):
                site.uninstall()
            children = self._take_out_deltas()  # a module that runs all its children would run them
            try:
                yield
            finally:
                for module, kept in children:
                    module._modules.clear()
                    module._modules.update(kept)
                for site in self.sites:
                    site.install()
                self.gate.keep_outermost(self.backbone)

    def _take_out_deltas(self) -> list[tuple[nn.Module, dict[str, nn.Module]]]:
        """Remove the ``deltas`` containers; returns each module's children as they were, in order."""
        modules = dict(self.backbone.named_modules())
        out = []
        for path in dict.fromkeys(e.target for e in self.active):
            module = modules[path]
            if DELTA_NAMESPACE in module._modules:
                out.append((module, dict(module._modules)))
                del module._modules[DELTA_NAMESPACE]
        return out

    # -- built sites ------------------------------------------------------------------------------
    def reuse(self, site: Site) -> Site:
        """The built site with ``site``'s key, if there is one; else ``site``, now kept for reuse."""
        key = site.key
        found = self.built.get(key)
        if found is not None:
            self.built.move_to_end(key)
            return found
        self.built[key] = site
        installed = {id(s) for s in self.sites}
        excess = len(self.built) - BUILT_LIMIT - len(installed)
        for old in [k for k, s in self.built.items() if id(s) not in installed][: max(excess, 0)]:
            del self.built[old]
        return site

    def site_for(self, path: str) -> Site | None:
        """The installed site whose graph or hooks carry the delta on ``path``."""
        for site in self.sites:
            if site.path == path or any(e.target == path for e in site.entries):
                return site
        return None
