"""The region guard: a traced region stays right only while the modules it traces through stay bare.

A region's graph inlines the code of the modules between its root and its targets, so a hook or
a forward someone adds to one of them later would never run. The guard remembers, for each of
those modules, its hooks and instance forward as the plan found them, and at the start of every
backbone forward compares (a few tuple comparisons); if anything changed it has the backbone
re-planned first, which keeps the changed module out of any region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.nn.modules import module as torch_module

from fxdelta.sites.base import HookedSite, SiteKind


def _signature(m: nn.Module) -> tuple:
    tables = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
    return (*(tuple(t) for t in tables), m.__dict__.get("forward"))


def _global_signature() -> tuple:
    return tuple(tuple(t) for t in (torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks))


class RegionGuard(HookedSite):
    """Re-plans (``refresh()``) when a module some region traces through gains hooks or a forward."""

    kind = SiteKind.REGION_GUARD

    def __init__(self, backbone: nn.Module, inlined: Sequence[nn.Module], refresh: Callable[[], None]) -> None:
        super().__init__("", backbone, [])
        self.inlined = list(inlined)
        self._refresh = refresh
        self._expected: list[tuple] = []
        self._global: tuple = ()

    @property
    def key(self) -> tuple:
        return (RegionGuard, tuple(id(m) for m in self.inlined))

    def stale(self) -> bool:
        return _global_signature() != self._global or any(
            _signature(m) != expected for m, expected in zip(self.inlined, self._expected, strict=True)
        )

    def _check(self, module: nn.Module, args: tuple) -> None:
        if self.stale():
            self._refresh()

    def _register(self) -> list[Any]:
        self._expected = [_signature(m) for m in self.inlined]
        handle = self.module.register_forward_pre_hook(self._check, prepend=True)
        self._global = _global_signature()
        return [handle]

    def describe(self) -> str:
        return f"region guard: re-plans if any of {len(self.inlined)} traced-through modules gains hooks or a forward"
