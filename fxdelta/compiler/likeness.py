"""What a module's forward can see under FakeTensors, in a form two modules' views can be compared by ``==``.

``structure`` is what must match exactly: module classes and child names, parameter and buffer
metadata, attribute names, and the absence of anything that would run besides the forward (hooks,
an instance ``forward`` that is not observation's own, TorchScript). ``attributes`` is every other
attribute's value, frozen: scalars by type and value; tensors by metadata, and only tensors that hold no
values (``meta`` tensors, FakeTensors that are not constants), so nothing a forward could read is left
out; containers and plain Python objects by their contents to ``restore``'s depth; anything else
(classes, functions, C objects) by identity. A tensor with values makes a tree ``Incomparable`` (a
forward can read values without a dispatched op: ``.numpy()``), and so does a module held as a plain
attribute (its state is outside the tree: nothing would compare it).
"""

from __future__ import annotations

import enum
import types
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.restore import DEPTH
from fxdelta.core.torch_internals import FakeTensor

OBSERVING = "_fxdelta_observes"  # set on observation's own forward wrappers
TABLES = ("_parameters", "_buffers", "_modules")  # compared by ``structure``
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_SCALARS = {type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.layout}
_CONTAINERS = {
    tuple,
    list,
    torch.Size,
    dict,
    OrderedDict,
    set,
    frozenset,
}  # exactly these: their state is what they hold
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class written in Python


class Incomparable(Exception):
    """A value whose effect on a FakeTensor forward cannot be compared: a tensor that holds values, a module
    held outside the tree (a plain attribute)."""


def tensor_meta(t: torch.Tensor) -> tuple:
    holds_values = t.constant is not None if isinstance(t, FakeTensor) else not t.is_meta
    if holds_values:
        raise Incomparable
    return (type(t), tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad)


def _state(value: Any) -> dict[str, Any] | None:
    """The ``__dict__`` of a Python object whose whole state it is (no C fields, no slots), else None. Read
    as ``object`` would: a class's own ``__getattribute__`` (a config's validation) is not the state."""
    try:
        values = object.__getattribute__(value, "__dict__")
    except AttributeError:
        return None
    mro = type(value).__mro__
    plain = all(k is object or (k.__flags__ & _HEAP_TYPE and "__slots__" not in k.__dict__) for k in mro)
    return values if plain and type(values) is dict else None


Memo = dict[tuple[int, int], Hashable]  # (id, depth) -> frozen, for one pass over values no code changes


def freeze(value: Any, depth: int = DEPTH, memo: Memo | None = None) -> Hashable:
    """``value`` as a hashable tree that is equal for values a forward cannot tell apart (raises ``Incomparable``)."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if kind in _CONTAINERS:
        if not value:  # most of a module's tables (hooks of every kind) are empty
            return (kind,)
        if depth <= 0:
            return ("id", id(value))
        memo = {} if memo is None else memo
        key = (id(value), depth)
        if key not in memo:
            memo[key] = _freeze_contents(value, depth, memo)
        return memo[key]
    if isinstance(value, torch.Tensor):
        return tensor_meta(value)
    if isinstance(value, enum.Enum):
        return (kind, value)
    if isinstance(value, nn.Module):  # a module held outside the tree: its state is no attribute of the tree
        raise Incomparable
    if isinstance(value, types.MethodType):
        return ("method", id(value.__func__), freeze(value.__self__, depth - 1, memo))
    state = None if depth <= 0 or isinstance(value, type) else _state(value)
    if state is None:  # classes, functions, C objects, anything deeper: the same one
        return ("id", id(value))
    return (kind, freeze(state, depth - 1, memo))


def _freeze_contents(value: Any, depth: int, memo: Memo) -> Hashable:
    kind = type(value)
    if kind in (dict, OrderedDict):
        return (kind, tuple((freeze(k, 0), freeze(v, depth - 1, memo)) for k, v in value.items()))
    if kind in (set, frozenset):
        return (kind, frozenset(freeze(v, 0) for v in value))
    return (kind, tuple(freeze(v, depth - 1, memo) for v in value))


def _hooked(m: nn.Module) -> bool:
    return any(getattr(m, name, None) for name in _HOOKS)


def _foreign_forward(m: nn.Module) -> bool:
    forward = m.__dict__.get("forward")
    return forward is not None and not getattr(forward, OBSERVING, False)


def _own_names(m: nn.Module) -> tuple[str, ...]:
    return tuple(k for k in m.__dict__ if k not in TABLES and not (k == "forward" and not _foreign_forward(m)))


def structure(module: nn.Module) -> tuple | None:
    """What two modules must share exactly for one's FakeTensor forward to stand for the other's, or None
    if ``module``'s cannot stand for any (hooks, a forward of someone else's, TorchScript, a module twice)."""
    items = list(module.named_modules(remove_duplicate=False))
    if len({id(m) for _, m in items}) != len(items):
        return None
    tensors: dict[int, int] = {}  # id -> first index: tied weights inside the tree must be tied alike
    out = []
    try:
        for rel, m in items:
            if isinstance(m, torch.jit.ScriptModule) or _hooked(m) or _foreign_forward(m):
                return None
            tables = []
            for table in (m._parameters, m._buffers):
                tables.append(
                    tuple(
                        (n, None if t is None else (tensor_meta(t), tensors.setdefault(id(t), len(tensors))))
                        for n, t in table.items()
                    )
                )
            out.append((rel, type(m), tuple(m._modules), *tables, _own_names(m)))
    except Incomparable:
        return None
    return tuple(out)


def attributes(module: nn.Module, memo: Memo | None = None) -> dict[tuple[str, str], Hashable] | None:
    """Every attribute of the tree but its tables, frozen, by (relative module path, name); None if one is
    ``Incomparable``. ``memo``: shared by calls between which no code runs (objects several modules hold)."""
    memo = {} if memo is None else memo
    try:
        return {
            (rel, name): freeze(m.__dict__[name], DEPTH, memo)
            for rel, m in module.named_modules(remove_duplicate=False)
            for name in _own_names(m)
        }
    except Incomparable:
        return None


def owned(module: nn.Module) -> set[int]:
    """Ids of the tree's modules and tensors: two trees that share none cannot change each other's."""
    tensors = (t for m in module.modules() for t in (*m._parameters.values(), *m._buffers.values()))
    return {id(m) for m in module.modules()} | {id(t) for t in tensors if t is not None}
