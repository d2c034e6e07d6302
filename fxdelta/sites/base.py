"""What every site is: how deltas are carried at run time, installed and taken out as one unit.

A site is planned (``fxdelta.compiler.plan`` or a method's ``plan_sites``), installed on the live
backbone, and uninstalled exactly; two sites with equal ``key`` behave the same, so a site whose
key survives a re-plan stays installed, and a cached site with that key is reused instead of a
new one being built.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from fxdelta.core.entries import Entry

if TYPE_CHECKING:
    import torch.fx as fx


class SiteKind(enum.Enum):
    """The kinds of site; the values are what views print."""

    TRACED_REGION = "traced region"  # a traced ancestor's fx graph, rewritten (sites/graph.py)
    OPAQUE_GRAPH = "opaque graph"  # the target as one node of a tiny fx graph (sites/graph.py)
    HOOKS = "hooks"  # a forward pre-hook / forward hook pair on the target (sites/hooks.py)
    INPUT_CARRIER = "input carrier"  # a source's input, handed to a pair delta's hook site (sites/carrier.py)
    PREFIX = "prefix"  # keys/values in front of an attention's own (sites/prefix.py)
    PREFIX_STACK = "prefix stack"  # the cache view and mask of a causal stack (sites/prefix.py)
    PREFIX_REFRESH = "prefix refresh"  # recomputes reparameterized prefixes per forward (sites/prefix.py)
    SOFT_PROMPT = "soft prompt"  # embeddings in front of the input's (sites/prompt.py)
    REGION_GUARD = "region guard"  # re-plans when a traced-through module gains hooks (sites/guard.py)


class Site(Protocol):
    kind: SiteKind
    path: str  # the module the site acts on ("" for the backbone itself)
    module: nn.Module
    entries: list[Entry]  # the deltas it carries (empty for helper sites such as carriers)

    @property
    def key(self) -> tuple: ...

    @property
    def hook_ids(self) -> list[int]:
        """Ids of the torch hooks it installed (the planner tells them from the user's)."""
        ...

    @property
    def replaces_forward(self) -> bool:
        """Whether it installs an instance ``forward`` on ``module``."""
        ...

    @property
    def graph_module(self) -> fx.GraphModule | None:
        """The rewritten graph it runs, for sites that run one."""
        ...

    def install(self) -> None: ...

    def uninstall(self) -> None: ...

    def describe(self) -> str: ...


class HookedSite:
    """Base of the sites made of torch hooks: ``_register`` adds them, uninstall removes them all."""

    kind: SiteKind
    replaces_forward = False
    graph_module = None

    def __init__(self, path: str, module: nn.Module, entries: list[Entry]) -> None:
        self.path, self.module, self.entries = path, module, entries
        self._handles: list[Any] = []

    def _register(self) -> list[Any]:
        """Register this site's hooks; returns their removable handles."""
        raise NotImplementedError

    @property
    def hook_ids(self) -> list[int]:
        return [h.id for h in self._handles]

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        if not self._handles:
            self._handles = self._register()

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._cleared()

    def _cleared(self) -> None:
        """Forget per-forward state once uninstalled (sites that keep some override this)."""


def entry_ids(entries: list[Entry]) -> tuple[int, ...]:
    """The part of a site key that names its deltas (entries live as long as their handle)."""
    return tuple(id(e) for e in entries)
