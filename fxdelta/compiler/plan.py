"""Plan: decide, for every attached delta, which site (graph or hooks) carries it.

For each target the planner tries, from the top down, the ancestors that may be traced through
to reach it: the highest one that traces and matches eager becomes the target's *region*, and
targets sharing a region are rewritten in one graph. A target with no such region becomes an
opaque node in a tiny graph of its own; a target that is not a single-tensor module (attention
blocks, layers, tuple outputs) or that its parent only calls when hooks are present gets the
hook fallback.

An ancestor is never traced *through* (inlined) when doing so would skip code that runs today:
hooks on it, an instance ``forward`` someone installed, another region's root, or another target.
Such a module may still be a region's root, since its own ``__call__`` still runs. Deltas whose
method plans its own sites (``Entry.plan_sites``) are handed to it; their modules stay real calls.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch.fx as fx
from torch import nn

from fxdelta.compiler.trace import TraceCache
from fxdelta.core.entries import Entry, SitePlanner
from fxdelta.core.paths import parent_paths, relative
from fxdelta.core.records import CallRecord
from fxdelta.core.torch_internals import global_module_hooks
from fxdelta.sites.base import Site
from fxdelta.sites.carrier import InputCarrier
from fxdelta.sites.graph import GraphSite, opaque_supported
from fxdelta.sites.guard import Checks, RegionGuard
from fxdelta.sites.hooks import HookSite

S = TypeVar("S", bound=Site)


def _foreign_hooks(m: nn.Module, ours: set[int]) -> bool:
    """Whether ``m`` has hooks that are not fxdelta's own hook sites."""
    ids = [*m._forward_hooks, *m._forward_pre_hooks, *m._backward_hooks, *getattr(m, "_backward_pre_hooks", {})]
    return any(i not in ours for i in ids)


@functools.cache
def _fixed_arity(forward: Callable[..., Any]) -> int | None:
    """How many arguments a class's ``forward`` takes besides ``self``, or None for ``*args``/``**kwargs``."""
    try:
        params = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return len(params)


def _takes_exactly(m: nn.Module, record: CallRecord) -> bool:
    """The call passed every parameter of forward, so no default (often ``None``) gets baked in."""
    arity = _fixed_arity(type(m).forward)
    return arity is not None and arity == len(record.args) + len(record.kwargs)


@dataclass
class _Region:
    root: str
    targets: list[str]
    inline: set[str]
    gm: fx.GraphModule  # the pristine traced graph, shared with the trace cache

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph


class Planner:
    """Plans sites for a set of entries, given what is installed now.

    ``installed`` sites are fxdelta's own: their forwards and hooks do not count as the user's
    (so a plan never depends on which deltas were attached before), and ``suspend`` takes them
    out while a new region is traced and checked against eager: both must see the bare backbone.
    ``reuse(site)`` returns the already-built site with the same key, if there is one, else ``site``;
    ``refresh()`` re-plans the live backbone, which the region guard calls when a module a region
    traces through gains hooks or a forward.
    """

    def __init__(
        self,
        backbone: nn.Module,
        records: Mapping[str, CallRecord],
        hooks_needed: set[str],
        cache: TraceCache,
        installed: Sequence[Site] = (),
        suspend: Callable[[], AbstractContextManager] = nullcontext,
        reuse: Callable[[Site], Site] = lambda site: site,
        refresh: Callable[[], None] | None = None,
        gate: Checks | None = None,
    ) -> None:
        self.backbone = backbone
        self.modules = dict(backbone.named_modules(remove_duplicate=False))
        self.records = records
        self.hooks_needed = hooks_needed
        self.cache = cache
        self.suspend = suspend
        self._reuse = reuse
        self._refresh = refresh  # re-plans the backbone as it is now (for the region guard)
        self._gate = gate  # where the region guard runs its check, before each forward
        self.our_forwards = {id(s.module) for s in installed if s.replaces_forward}
        self.our_hooks = {i for s in installed for i in s.hook_ids}

    def reuse(self, site: S) -> S:
        return cast(S, self._reuse(site))  # equal keys include the class

    # -- which modules may be inlined / be a root ---------------------------------------------
    def _foreign_forward(self, m: nn.Module) -> bool:
        return "forward" in m.__dict__ and id(m) not in self.our_forwards

    def _inlinable(self, path: str, targets: set[str], roots: set[str]) -> bool:
        m = self.modules[path]
        return not (path in targets or path in roots or _foreign_hooks(m, self.our_hooks) or self._foreign_forward(m))

    def _can_root(self, path: str) -> bool:
        m = self.modules[path]
        record = self.records.get(path)
        return (
            record is not None
            and record.calls >= 1
            and record.outputs is not None
            and record.all_tensor_inputs
            and all(s.floating for s in record.args if s is not None)
            and not self._foreign_forward(m)
            and not isinstance(m, (nn.ModuleList, nn.ModuleDict))
            and _takes_exactly(m, record)
        )

    def _candidates(self, target: str, targets: set[str], roots: set[str]) -> list[str]:
        """Ancestors that could be ``target``'s region root, highest first."""
        out = []
        for ancestor in parent_paths(target):
            if self._can_root(ancestor):
                out.append(ancestor)
            if not self._inlinable(ancestor, targets, roots):
                break
        return out[::-1]

    @staticmethod
    def _path_between(root: str, target: str) -> set[str]:
        """Modules strictly between ``root`` and ``target``: those a trace of ``root`` must inline."""
        return {p for p in parent_paths(target) if p != root and (not root or p.startswith(root + "."))}

    # -- tracing ----------------------------------------------------------------------------------
    def _trace(self, root: str, targets: Sequence[str], inline: set[str]) -> fx.GraphModule | None:
        # A new region is traced and checked on the backbone as it is without fxdelta: tracing
        # through an inlined module calls its current forward, which may be one of our graphs.
        return self.cache.region(
            root,
            self.modules[root],
            targets,
            [self.modules[p] for p in inline],
            inline,
            self.records[root],
            self.suspend,
        )

    # -- the plan ---------------------------------------------------------------------------------
    def plan(self, entries: Sequence[Entry]) -> list[Site]:
        """Sites for ``entries``. All deltas on one module share one site, so they always compose in
        creation order: a module with any delta on hooks has all its deltas on hooks. Deltas whose
        method plans its own sites go to that planner, all of one method's together."""
        own: dict[SitePlanner, list[Entry]] = {}
        for e in entries:
            if e.plan_sites is not None:
                own.setdefault(e.plan_sites, []).append(e)
        routed = [e for e in entries if e.plan_sites is None]
        sites = self._plan_routes(routed, {e.target for es in own.values() for e in es})
        for plan_sites, es in own.items():
            sites += [self.reuse(site) for site in plan_sites(self.backbone, es)]
        return sites

    def _plan_routes(self, entries: Sequence[Entry], hooked_elsewhere: set[str]) -> list[Site]:
        by_target: dict[str, list[Entry]] = {}
        for e in entries:
            by_target.setdefault(e.target, []).append(e)
        pairs = [e for e in entries if e.source is not None]
        hooked = {
            t for t, es in by_target.items() if any(self._needs_hooks(p, es) for p in {t, *(e.reads for e in es)})
        }
        # Calls that must stay real calls (never traced through): every target and source, and the
        # modules other sites hook (prefixed attentions).
        sources = {e.source for e in pairs if e.source is not None}
        boundaries = set(by_target) | sources | hooked_elsewhere
        while True:  # the hooked modules only grow: this ends
            regions: dict[str, _Region] = {}
            region_of: dict[str, str] = {}
            if not any(global_module_hooks()):  # they would not run on modules traced through
                for e in pairs:
                    if e.target not in hooked:
                        self._assign_region([e.reads, e.target], boundaries, regions, region_of)
                for t in by_target:
                    if t not in hooked and t not in region_of:
                        self._assign_region([t], boundaries, regions, region_of)
            split = {e.target for e in pairs if e.target not in hooked and not self._same_region(e, region_of)}
            if not split:
                break
            hooked |= split

        site_entries: dict[str, list[Entry]] = {root: [] for root in regions}
        opaque: dict[str, list[Entry]] = {}
        for e in entries:
            if e.target in hooked:
                continue
            # A target that is itself a region's root (and in no region above) joins that graph.
            root = region_of[e.target] if e.target in region_of else (e.target if e.target in regions else None)
            (site_entries[root] if root is not None else opaque.setdefault(e.target, [])).append(e)
        sites: list[Site] = [
            self.reuse(GraphSite(root, self.modules[root], regions[root].graph, es, self.cache.codes))
            for root, es in site_entries.items()
        ]
        sites += [self.reuse(GraphSite(t, self.modules[t], None, es, self.cache.codes)) for t, es in opaque.items()]
        carriers: dict[tuple, InputCarrier] = {}
        for t in [t for t in by_target if t in hooked]:
            mine = {}
            for e in by_target[t]:
                if e.source is not None:
                    # Hook sites hold their carriers: a kept carrier is the very object they pop from.
                    carrier = self.reuse(InputCarrier(self.backbone, e.source, self.modules[e.source], t))
                    mine[e.source] = carriers.setdefault(carrier.key, carrier)
            sites.append(self.reuse(HookSite(t, self.modules[t], by_target[t], mine)))
        inlined = sorted({p for r in regions.values() for p in r.inline})
        if inlined and self._refresh is not None and self._gate is not None:
            guard = RegionGuard(self.backbone, [self.modules[p] for p in inlined], self._refresh, self._gate)
            sites.append(self.reuse(guard))
        return sites + list(carriers.values())

    @staticmethod
    def _same_region(e: Entry, region_of: dict[str, str]) -> bool:
        return e.source in region_of and region_of.get(e.target) == region_of[e.source]

    def _needs_hooks(self, target: str, entries: Sequence[Entry]) -> bool:
        record = self.records.get(target)
        return (
            target in self.hooks_needed
            or not opaque_supported(self.modules[target])
            or any(e.hooks_only for e in entries)
            or record is None
            or not record.single_tensor
        )

    def _assign_region(
        self, group: list[str], boundaries: set[str], regions: dict[str, _Region], region_of: dict[str, str]
    ) -> None:
        """Put every module of ``group`` in one region: the highest common candidate that traces."""
        group = [m for i, m in enumerate(group) if m not in group[:i]]
        inlined_elsewhere = set().union(set(), *(r.inline for r in regions.values()))
        candidates = [self._candidates(m, boundaries, set(regions)) for m in group]
        for root in [c for c in candidates[0] if all(c in others for others in candidates[1:])]:
            if root in inlined_elsewhere:
                continue  # another region traces through it: its forward would be skipped
            inline = set().union(*(self._path_between(root, m) for m in group))
            if inline & set(regions):
                continue  # would trace through another region's root
            existing = regions.get(root)
            members = (existing.targets if existing else []) + [
                m for m in group if not existing or m not in existing.targets
            ]
            inline_all = inline | (existing.inline if existing else set())
            gm = self._trace(root, members, inline_all)
            if gm is None or not _calls_in_order(gm.graph, root, group):
                continue
            regions[root] = _Region(root, members, inline_all, gm)
            for m in group:
                region_of[m] = root
            return


def _calls_in_order(graph: fx.Graph, root: str, group: list[str]) -> bool:
    """Each module of ``group`` is called in the graph, and (for a pair) the source before the target."""
    rel = [relative(m, root) for m in group]
    order: dict[object, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.op == "call_module" and node.target in rel:
            order.setdefault(node.target, i)
    return all(r in order for r in rel) and [order[r] for r in rel] == sorted(order[r] for r in rel)
