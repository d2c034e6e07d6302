"""Observe repeated layers once: a layer that would see what an observed sibling saw replays its observation.

A layer stack (``ModuleList``, ``Sequential``, ``ModuleDict``) holds many layers of one class, which on a
``meta`` backbone differ only in attributes their forward does not read when observed (``layer_idx``: used
with a KV cache, which observation does not pass). Observing each costs a FakeTensor forward (80 layers of
a 70B-shaped model: seconds); replaying costs a comparison. The first layer called is observed in full, as
the *representative*, while ``watch`` notes which of the attributes that set it apart from a sibling it reads.
A later sibling replays it (its modules get the representative's records: same calls, same order; the call
returns new FakeTensors of the representative's output shapes) only if:

- its tree has the representative's ``structure`` (classes, children, parameter and buffer metadata,
  attribute names; no hooks, no forward of someone else's, no module or tensor shared with it);
- each attribute equals the representative's at its call (``likeness.attributes``), except differing ones
  the representative did not read; its inputs are alike too (FakeTensors by metadata: they hold no values);
- the representative's call was each of its modules' first, ran no observed module outside it, changed
  nothing it could reach (its attributes, its inputs), and returned fresh tensors, inputs it was handed,
  tuples of them, or plain values.

Why that is sound: a forward is a function of the code it runs and the values it reads; the two calls run
the same code (same classes) and, step by step, read equal values (attributes equal or never read,
parameters and inputs with no values to differ in, tensors' metadata equal), so they compute alike. What it
cannot see is state outside the layer that changes between the two calls without the layer reading it
through its attributes (globals; objects deeper than ``restore.DEPTH``), which observation's undo already
takes as unwritten. Tensors that hold values (a backbone on a real device) are never compared: a layer
of such a backbone is observed in full.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.likeness import Incomparable, Memo, attributes, freeze, owned, structure
from fxdelta.compiler.watch import ALL, watching
from fxdelta.core.paths import parent_paths, relative
from fxdelta.core.records import CallRecord
from fxdelta.core.torch_internals import FakeTensor, StorageKey, global_module_hooks, maybe_get_fake_mode, storage_key

_STACKS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
_TRIES = 4  # representatives per stack: one per kind of layer (alternating kinds take two); then full runs
_UNSUPPORTED = object()


@dataclass(frozen=True)
class _Seen:
    """A representative's call: what it saw, and what it did, to replay for a sibling that sees the same."""

    structure: tuple
    attributes: dict[tuple[str, str], Hashable]  # at its call, but the differing ones it did not read
    inputs: Hashable
    events: tuple[tuple[str, int, CallRecord], ...]  # (relative path, calls, first record), in start order
    observed: frozenset[str]  # relative paths observation records in it
    owned: frozenset[int]
    output: Any  # a template (``_template``)


def _valueless(module: nn.Module) -> bool:
    return all(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _template(out: Any, inputs: list[torch.Tensor], taken: set[StorageKey]) -> Any:
    """How to make an output like ``out`` again: an input passed through as it is, else fresh FakeTensors
    (storages not in ``taken``, nor shared among them)."""
    if type(out) is FakeTensor:
        passed = next((i for i, t in enumerate(inputs) if t is out), None)
        if passed is not None:
            return ("input", passed)
        storage = storage_key(out)
        if storage in taken or out.storage_offset() or out.requires_grad or out.constant is not None:
            return _UNSUPPORTED
        taken.add(storage)
        return ("tensor", tuple(out.shape), out.stride(), out.dtype, out.device)
    if type(out) in (tuple, list):
        parts = [_template(o, inputs, taken) for o in out]
        return _UNSUPPORTED if any(p is _UNSUPPORTED for p in parts) else ("sequence", type(out), parts)
    if out is None or type(out) in (bool, int, float, str):
        return ("value", out)
    return _UNSUPPORTED


def _build(template: Any, inputs: list[torch.Tensor]) -> Any:
    kind = template[0]
    if kind == "value":
        return template[1]
    if kind == "input":
        return inputs[template[1]]
    if kind == "sequence":
        return template[1](_build(t, inputs) for t in template[2])
    _, shape, stride, dtype, device = template
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)  # a FakeTensor: the mode is on


class Repeats:
    """Replays observed layers for their siblings during one FakeTensor run of ``backbone``.

    ``records``, ``counts`` and ``started`` are observation's (first call, number of calls and first-start
    order of each ``observed`` path); a replay adds to them what the sibling's own run would have.
    """

    def __init__(
        self,
        backbone: nn.Module,
        observed: Collection[str],
        records: dict[str, CallRecord],
        counts: dict[str, int],
        started: dict[str, int],
    ) -> None:
        self.records, self.counts, self.started = records, counts, started
        self.observed = set(observed)
        self.modules = dict(backbone.named_modules())
        self.stacks: dict[str, str] = {}  # layer path -> its stack's path
        for path, m in self.modules.items():
            if isinstance(m, _STACKS):
                kinds = Counter(type(c) for c in m.children())
                for name, child in m.named_children():
                    layer = f"{path}.{name}" if path else name
                    # A leaf layer is cheaper to run than to compare; one with real weights is never compared;
                    # a module listed earlier elsewhere too has that path only.
                    if kinds[type(child)] > 1 and child._modules and _valueless(child) and layer in self.modules:
                        self.stacks[layer] = path
        self.inside: dict[str, set[str]] = {p: set() for p in self.stacks}  # layer -> observed relative paths
        for p in self.observed:
            for a in parent_paths(p):
                if a in self.inside:
                    self.inside[a].add(relative(p, a))
        self.seen: dict[str, list[_Seen]] = {}
        self.tries: Counter[str] = Counter()
        self.called: set[str] = set()
        self.busy = False  # a representative's call is running: what it calls runs in full

    def call(self, path: str, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``forward(*args, **kwargs)``, or a replay of a representative's call that it would match."""
        stack = self.stacks.get(path)
        first = path not in self.called
        self.called.add(path)
        if stack is None or not first or self.busy or any(global_module_hooks()):
            return forward(*args, **kwargs)
        try:
            inputs = freeze((args, kwargs))
        except Incomparable:
            return forward(*args, **kwargs)
        mine = self.inside[path]
        if not any(f"{path}.{rel}" in self.started for rel in mine):
            view = _View(module)
            for seen in self.seen.get(stack, ()):
                if seen.inputs == inputs and mine <= seen.observed and view.matches(seen):
                    return self._replay(seen, path, _tensors((args, kwargs)))
        if self.tries[stack] >= _TRIES:
            return forward(*args, **kwargs)
        self.tries[stack] += 1
        return self._represent(stack, path, module, forward, args, kwargs, inputs)

    def _replay(self, seen: _Seen, path: str, inputs: list[torch.Tensor]) -> Any:
        for rel, calls, record in seen.events:
            p = f"{path}.{rel}"
            if p in self.observed:
                self.started.setdefault(p, len(self.started))
                self.counts[p] = self.counts.get(p, 0) + calls
                self.records.setdefault(p, record)
        return _build(seen.output, inputs)

    def _represent(
        self, stack: str, path: str, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict, inputs
    ) -> Any:
        """Run ``module`` in full; keep what it saw and did if a sibling may replay it."""
        memo: Memo = {}  # no code runs during this pass
        shape = structure(module)
        before = attributes(module, memo) if shape is not None else None
        differing: set[tuple[str, str]] = set()
        alike = False
        for sibling in self.modules[stack].children():
            if sibling is module or before is None or structure(sibling) != shape:
                continue
            theirs = attributes(sibling, memo)
            if theirs is not None:  # what sets it apart from a sibling; one that differs in more runs itself
                alike = True
                differing = {k for k, v in before.items() if theirs[k] != v}
                break
        if not alike or shape is None or before is None:
            return forward(*args, **kwargs)
        tree = dict(module.named_modules(remove_duplicate=False))
        watched: dict[nn.Module, set[str]] = {}
        for rel, name in differing:
            watched.setdefault(tree[rel], set()).add(name)
        mark, counts, records = len(self.started), dict(self.counts), set(self.records)
        self.busy = True
        try:
            with watching(watched) as reads:
                out = forward(*args, **kwargs)
        finally:
            self.busy = False
        read = {
            (rel, name)
            for rel, name in differing
            if reads is None or name in reads[id(tree[rel])] or ALL in reads[id(tree[rel])]
        }
        new = list(self.started)[mark:]
        changed = {p for p, c in self.counts.items() if counts.get(p, 0) != c} | (set(self.records) - records)
        if (
            not all(p.startswith(f"{path}.") for p in new)
            or not changed <= set(new)
            or structure(module) != shape
            or attributes(module) != before
            or not _unchanged(inputs, args, kwargs)
            or not all(p in self.records for p in new)
        ):
            return out
        output = _template(out, _tensors((args, kwargs)), _taken(module, args, kwargs))
        if output is not _UNSUPPORTED:
            self.seen.setdefault(stack, []).append(
                _Seen(
                    structure=shape,
                    attributes={k: v for k, v in before.items() if k not in differing or k in read},
                    inputs=inputs,
                    events=tuple((relative(p, path), self.counts[p], self.records[p]) for p in new),
                    observed=frozenset(self.inside[path]),
                    owned=frozenset(owned(module)),
                    output=output,
                )
            )
        return out


class _View:
    """A candidate layer's structure and attributes, computed once (when first needed) for every representative."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @functools.cached_property
    def structure(self) -> tuple | None:
        return structure(self.module)

    @functools.cached_property
    def attributes(self) -> dict[tuple[str, str], Hashable] | None:
        return attributes(self.module)

    def matches(self, seen: _Seen) -> bool:
        if self.structure is None or self.structure != seen.structure or owned(self.module) & seen.owned:
            return False
        mine = self.attributes
        return mine is not None and all(mine[k] == v for k, v in seen.attributes.items())


def _unchanged(inputs: Hashable, args: tuple, kwargs: dict) -> bool:
    try:
        return freeze((args, kwargs)) == inputs
    except Incomparable:
        return False


def _taken(module: nn.Module, args: tuple, kwargs: dict) -> set[StorageKey]:
    """Storages an output must not share: the inputs', and those of the FakeTensors standing for the tree's
    own tensors (a replayed output would be a fresh tensor, not a view of them)."""
    inputs = _tensors((args, kwargs))
    mode = next((maybe_get_fake_mode(t) for t in inputs if maybe_get_fake_mode(t) is not None), None)
    own = [t for m in module.modules() for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
    fakes = [mode.from_tensor(t) for t in own] if mode is not None else []
    return {storage_key(t) for t in (*inputs, *fakes)}
