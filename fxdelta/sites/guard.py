"""The region guard: a traced region stays right only while the modules it traces through stay bare.

A region's graph inlines the code of the modules between its root and its targets, so a hook or
a forward someone adds to one of them later would never run. The guard remembers, for each of
those modules, its hooks and instance forward as the plan found them, and before every backbone
forward compares (a few tuple comparisons); if anything changed it has the backbone re-planned
first, which keeps the changed module out of any region. It runs as one of the gate's checks
(``fxdelta.compiler.gate``): before the forward goes in, where the deltas may still change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import nn

from fxdelta.core.entries import Entry
from fxdelta.core.torch_internals import global_module_hooks
from fxdelta.sites.base import SiteKind


class Checks(Protocol):
    checks: list[Callable[[], None]]  # run before each backbone forward goes in


def _signature(m: nn.Module) -> tuple:
    tables = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
    return (*(tuple(t) for t in tables), m.__dict__.get("forward"))


class RegionGuard:
    """Re-plans (``refresh()``) when a module some region traces through gains hooks or a forward."""

    kind = SiteKind.REGION_GUARD
    replaces_forward = False
    graph_module = None

    def __init__(
        self, backbone: nn.Module, inlined: Sequence[nn.Module], refresh: Callable[[], None], gate: Checks
    ) -> None:
        self.path, self.module = "", backbone
        self.entries: list[Entry] = []  # carries no delta
        self.inlined = list(inlined)
        self._refresh, self._gate = refresh, gate
        self._expected: list[tuple] = []
        self._global: tuple = ()
        self._installed = False

    @property
    def key(self) -> tuple:
        return (RegionGuard, tuple(id(m) for m in self.inlined))

    @property
    def hook_ids(self) -> list[int]:
        return []

    def stale(self) -> bool:
        return global_module_hooks() != self._global or any(
            _signature(m) != expected for m, expected in zip(self.inlined, self._expected, strict=True)
        )

    def _check(self) -> None:
        if self._installed and self.stale():
            self._refresh()

    def install(self) -> None:
        if not self._installed:
            self._expected = [_signature(m) for m in self.inlined]
            self._global = global_module_hooks()
            self._gate.checks.append(self._check)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            self._gate.checks.remove(self._check)
            self._installed = False

    def describe(self) -> str:
        return f"region guard: re-plans if any of {len(self.inlined)} traced-through modules gains hooks or a forward"
