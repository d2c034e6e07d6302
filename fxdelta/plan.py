"""Plan sites: decide, for every attached delta, which graph (or hook) carries it.

For each target the planner tries, from the top down, the ancestors that may be traced through
to reach it: the highest one that traces and matches eager becomes the target's *region*, and
targets sharing a region are rewritten in one graph. A target with no such region becomes an
opaque node in a tiny graph of its own; a target that is not a single-tensor module (attention
blocks, layers, tuple outputs) or that its parent only calls when hooks are present gets the
hook fallback.

An ancestor is never traced *through* (inlined) when doing so would skip code that runs today:
hooks on it, an instance ``forward`` someone installed, another region's root, or another target.
Such a module may still be a region's root, since its own ``__call__`` still runs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch.fx as fx
from torch import nn

from fxdelta.entries import Entry
from fxdelta.graph_site import GraphSite
from fxdelta.hooks import HookSite
from fxdelta.observe import CallRecord
from fxdelta.trace import graph_module, trace_region, validate_region

logger = logging.getLogger(__name__)


def parent_paths(path: str) -> list[str]:
    """Proper ancestors of ``path``, nearest first, ending with the root ``""``."""
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _foreign_hooks(m: nn.Module, ours: set[int]) -> bool:
    """Whether ``m`` has hooks that are not fxdelta's own hook sites."""
    ids = [*m._forward_hooks, *m._forward_pre_hooks, *m._backward_hooks, *getattr(m, "_backward_pre_hooks", {})]
    return any(i not in ours for i in ids)


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


def _takes_exactly(m: nn.Module, record: CallRecord) -> bool:
    """The call passed every parameter of forward, so no default (often ``None``) gets baked in."""
    try:
        params = list(inspect.signature(type(m).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return False
    return len(params) == len(record.args) + len(record.kwargs)


@dataclass
class TraceCache:
    """Traced-and-validated region graphs, keyed by root and the modules kept as leaves."""

    graphs: dict[tuple, fx.Graph | None] = field(default_factory=dict)
    validated: dict[tuple, bool] = field(default_factory=dict)  # (class, generated code, call record)


@dataclass
class _Region:
    root: str
    targets: list[str]
    inline: set[str]
    graph: fx.Graph


class Planner:
    """Plans sites for a set of entries, given what is installed now.

    ``installed`` sites are fxdelta's own: their forwards and hooks do not count as the user's
    (so a plan never depends on which deltas were attached before), and ``suspend`` takes them
    out while a new region is traced and checked against eager: both must see the bare backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        records: Mapping[str, CallRecord],
        hooks_needed: set[str],
        cache: TraceCache,
        installed: Sequence[GraphSite | HookSite] = (),
        suspend: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.backbone = backbone
        self.modules = dict(backbone.named_modules(remove_duplicate=False))
        self.records = records
        self.hooks_needed = hooks_needed
        self.cache = cache
        self.suspend = suspend
        self.our_forwards = {id(s.module) for s in installed if isinstance(s, GraphSite)}
        self.our_hooks = {i for s in installed if isinstance(s, HookSite) for i in s.hook_ids}

    # -- which modules may be inlined / be a root ---------------------------------------------
    def _foreign_forward(self, m: nn.Module) -> bool:
        return "forward" in m.__dict__ and id(m) not in self.our_forwards

    def _inlinable(self, path: str, targets: set[str], roots: set[str]) -> bool:
        m = self.modules[path]
        return not (
            path in targets or path in roots or _foreign_hooks(m, self.our_hooks) or self._foreign_forward(m)
        )

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
    def _trace(self, root: str, targets: Sequence[str], inline: set[str]) -> fx.Graph | None:
        key = (root, frozenset(targets), frozenset(inline))
        if key not in self.cache.graphs:
            self.cache.graphs[key] = self._trace_uncached(root, targets, inline)
        return self.cache.graphs[key]

    def _trace_uncached(self, root: str, targets: Sequence[str], inline: set[str]) -> fx.Graph | None:
        # Trace and check the backbone as it is without fxdelta: tracing through an inlined module
        # calls its current forward, which may be one of our graphs.
        with self.suspend():
            return self._trace_pristine(root, targets, inline)

    def _trace_pristine(self, root: str, targets: Sequence[str], inline: set[str]) -> fx.Graph | None:
        module = self.modules[root]
        graph = trace_region(module, [self.modules[p] for p in inline])
        if graph is None:
            return None
        if any(n.op == "get_attr" for n in graph.nodes):
            # A direct tensor read would go stale after model.to() or load_state_dict(assign=True),
            # which replace tensors; call_module leaves always see their module's current ones.
            logger.debug("fxdelta: %s reads tensors directly; not used as a region", root)
            return None
        rel = {t[len(root) + 1:] if root else t for t in targets}
        called = {n.target for n in graph.nodes if n.op == "call_module"}
        if not rel <= called:
            logger.debug("fxdelta: %s traces but does not call %s as modules", root, sorted(rel - called))
            return None
        gm = graph_module(module, graph, type(module).__name__)
        # Identical code of the same class was already checked (one layer of many, typically).
        key = (type(module), gm.code, self.records[root])
        if key not in self.cache.validated:
            self.cache.validated[key] = validate_region(module, gm, self.records[root])
        return graph if self.cache.validated[key] else None

    # -- the plan ---------------------------------------------------------------------------------
    def plan(self, entries: Sequence[Entry]) -> list[GraphSite | HookSite]:
        targets: dict[str, list[Entry]] = {}
        for e in entries:
            targets.setdefault(e.target, []).append(e)
        all_targets = set(targets)
        hook_targets = [t for t, es in targets.items() if self._needs_hooks(t, es)]
        graph_targets = [t for t in targets if t not in hook_targets]

        regions: dict[str, _Region] = {}
        region_of: dict[str, str] = {}
        if not _global_hooks():
            for t in graph_targets:
                self._assign_region(t, all_targets, regions, region_of)

        site_entries: dict[str, list[Entry]] = {root: [] for root in regions}
        opaque: dict[str, list[Entry]] = {}
        for e in entries:
            if e.target in hook_targets:
                continue
            # A target that is itself a region's root (and in no region above) joins that graph.
            root = region_of[e.target] if e.target in region_of else (e.target if e.target in regions else None)
            (site_entries[root] if root is not None else opaque.setdefault(e.target, [])).append(e)
        sites: list[GraphSite | HookSite] = [
            GraphSite(root, self.modules[root], regions[root].graph, es) for root, es in site_entries.items()
        ]
        sites += [GraphSite(t, self.modules[t], None, es) for t, es in opaque.items()]
        sites += [HookSite(t, self.modules[t], targets[t]) for t in hook_targets]
        return sites

    def _needs_hooks(self, target: str, entries: Sequence[Entry]) -> bool:
        record = self.records.get(target)
        return (
            target in self.hooks_needed
            or any(e.hooks_only for e in entries)
            or record is None
            or not record.single_tensor
        )

    def _assign_region(self, t: str, targets: set[str], regions: dict[str, _Region], region_of: dict[str, str]) -> None:
        inlined_elsewhere = set().union(*(r.inline for r in regions.values())) if regions else set()
        for root in self._candidates(t, targets, set(regions)):
            if root in inlined_elsewhere:
                continue  # another region traces through it: its forward would be skipped
            inline = self._path_between(root, t)
            if inline & set(regions):
                continue  # would trace through another region's root
            existing = regions.get(root)
            members = (existing.targets if existing else []) + [t]
            inline_all = inline | (existing.inline if existing else set())
            graph = self._trace(root, members, inline_all)
            if graph is None:
                continue
            regions[root] = _Region(root, members, inline_all, graph)
            region_of[t] = root
            return
