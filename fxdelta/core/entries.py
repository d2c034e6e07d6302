"""One delta module on one target: the unit that plans, sites and handles pass around."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta.core.routes import Route

DELTA_NAMESPACE = "deltas"  # attached deltas live at <target>.deltas.<name>

# A method's own planner, for deltas that do not sit on a module's edge: (backbone, entries) -> sites.
SitePlanner = Callable[[nn.Module, Sequence["Entry"]], list[Any]]


class DeltaContainer(nn.ModuleDict):
    """The ``deltas`` child fxdelta adds to a patched module: one entry per attached delta.

    Called, it is the identity: a patched module that runs all its children in turn (an
    ``nn.Sequential``) runs this one last, and must compute what it computed before.
    """

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


@dataclass(eq=False)
class Entry:
    """Delta ``delta`` of the handle named ``name`` on the module at ``target``, joined by ``route``.

    ``order`` is the handle's creation serial: several deltas on one module compose in that
    order whatever the order of attach() calls, so results never depend on attach history.
    ``hooks_only`` forces the hook fallback for this entry (used for parity checks and by users
    who want it). ``source``, for a route that spans two modules (a parallel adapter), is the
    module whose input the delta reads; its output is added at ``target``. ``plan_sites`` is set
    for deltas whose method plans its own sites (prefixes, prompts), and ``probed`` is what that
    method's probe found at ``target``.
    """

    target: str
    route: Route
    delta: nn.Module
    name: str
    order: int
    hooks_only: bool = False
    source: str | None = None
    plan_sites: SitePlanner | None = None
    probed: Any = None
    backbone_dtype: torch.dtype | None = None

    @property
    def reads(self) -> str:
        """The module whose input is the delta's ``h_in``."""
        return self.source if self.source is not None else self.target

    @property
    def qualified_name(self) -> str:
        """Where the delta sits in the backbone while attached."""
        prefix = f"{self.target}." if self.target else ""
        return f"{prefix}{DELTA_NAMESPACE}.{self.name}"
