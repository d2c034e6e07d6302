"""The hook fallback: the edge routes on a module fxdelta cannot express as a graph node.

Used for modules that take several arguments or return tuples (attention blocks, layers, the
``hidden_states=`` keyword), and for modules their parent only calls when hooks are present.
``h_in`` and ``h_out`` follow ``fxdelta.core.calls``; everything else passes through untouched.
Deltas are called through ``fxdelta.core.precision.run`` (in their own dtype, back in the module's).
The numbers equal the graph path's (tests/test_parity.py keeps them equal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fxdelta.core.calls import OutKind, first_hidden, first_param_name, hidden_slot, repack, replace_slot
from fxdelta.core.entries import Entry
from fxdelta.core.errors import StateError
from fxdelta.core.precision import run
from fxdelta.core.routes import Route
from fxdelta.sites.base import HookedSite, SiteKind, entry_ids
from fxdelta.sites.carrier import InputCarrier

_FORMULAS = {
    Route.INPUT: "h_in <- h_in + d(h_in)   [forward pre-hook]",
    Route.OUTPUT: "h_out <- h_out + d(h_out)   [forward hook]",
    Route.PARALLEL: "h_out <- h_out + d(h_in)   [forward hook]",
    Route.IN_OUT: "h_out <- h_out + d(h_in, h_out)   [forward hook]",
}


class HookSite(HookedSite):
    """Deltas on one module, applied by a forward pre-hook (input route) and a forward hook."""

    kind = SiteKind.HOOKS

    def __init__(
        self, path: str, module: nn.Module, entries: Sequence[Entry], carriers: Mapping[str, InputCarrier] | None = None
    ) -> None:
        super().__init__(path, module, list(entries))
        # Pair entries (source != target) read their input from the carrier on their source.
        self.carriers = dict(carriers or {})
        self._first_param = first_param_name(module)

    def _slot(self, args: tuple, kwargs: dict) -> int | str:
        slot = hidden_slot(args, kwargs, self._first_param)
        if slot is None:
            raise StateError(
                f"fxdelta: {self.path or 'the backbone'} ({type(self.module).__name__}) was called without a "
                f"tensor as first positional argument or 'hidden_states' keyword, so its delta has no h_in"
            )
        return slot

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        slot = self._slot(args, kwargs)
        h = args[slot] if isinstance(slot, int) else kwargs[slot]
        for entry in self.entries:
            if entry.route is Route.INPUT:
                h = h + run(entry.delta, h, h)
        return replace_slot(args, kwargs, slot, h)

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any):
        kind, h = first_hidden(out)
        if kind is OutKind.OTHER:
            raise StateError(
                f"fxdelta: {self.path or 'the backbone'} returned {type(out).__name__}, "
                f"which holds no hidden-state tensor"
            )
        h_in = None
        carried = {source: carrier.pop() for source, carrier in self.carriers.items()}  # one pop per call
        for entry in self.entries:
            if entry.route is Route.INPUT:
                continue  # applied by the pre-hook
            if entry.route is Route.OUTPUT:
                h = h + run(entry.delta, h, h)
            elif entry.source is not None:
                h = h + run(entry.delta, h, carried[entry.source])
            else:
                if h_in is None:
                    slot = self._slot(args, kwargs)
                    h_in = args[slot] if isinstance(slot, int) else kwargs[slot]
                h = h + (run(entry.delta, h, h_in, h) if entry.route is Route.IN_OUT else run(entry.delta, h, h_in))
        return repack(out, kind, h)

    @property
    def key(self) -> tuple:
        # The carrier objects themselves: this site pops from those very stacks.
        carriers = tuple(sorted((src, id(c)) for src, c in self.carriers.items()))
        return (HookSite, self.path, entry_ids(self.entries), carriers)

    def _register(self) -> list[Any]:
        routes = {e.route for e in self.entries}
        handles = []
        # Pre-hook last among pre-hooks, forward hook first among hooks: like the graph path, user
        # hooks see the module's unpatched input and its patched output.
        if Route.INPUT in routes:
            handles.append(self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        if routes - {Route.INPUT}:
            handles.append(self.module.register_forward_hook(self._post_hook, with_kwargs=True, prepend=True))
        return handles

    def describe(self) -> str:
        lines = [f"hook fallback on {self.path or '<root>'} ({type(self.module).__name__}):"]
        for e in self.entries:
            formula = _FORMULAS[e.route]
            if e.source is not None:
                formula = f"h_out <- h_out + d(h_in of {e.source})   [forward hook; input carried from {e.source}]"
            lines.append(f"  {e.qualified_name}: {formula}")
        return "\n".join(lines)
