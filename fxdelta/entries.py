"""One delta module on one target: the unit that plans, sites and handles pass around."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fxdelta.routes import Route

DELTA_NAMESPACE = "deltas"  # attached deltas live at <target>.deltas.<name>


@dataclass(eq=False)
class Entry:
    """Delta ``delta`` of the handle named ``name`` on the module at ``target``, joined by ``route``.

    ``order`` is the handle's creation serial: several deltas on one module compose in that
    order whatever the order of attach() calls, so results never depend on attach history.
    ``hooks_only`` forces the hook fallback for this entry (used for parity checks and by users
    who want it). ``source``, for a route that spans two modules (a parallel adapter), is the
    module whose input the delta reads; its output is added at ``target``.
    """

    target: str
    route: Route
    delta: nn.Module
    name: str
    order: int
    hooks_only: bool = False
    source: str | None = None

    @property
    def reads(self) -> str:
        """The module whose input is the delta's ``h_in``."""
        return self.source if self.source is not None else self.target

    @property
    def qualified_name(self) -> str:
        """Where the delta sits in the backbone while attached."""
        prefix = f"{self.target}." if self.target else ""
        return f"{prefix}{DELTA_NAMESPACE}.{self.name}"
