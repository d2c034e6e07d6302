"""Undo whatever a forward pass wrote into a model: the guard around every FakeTensor run.

A forward may set attributes, replace parameters or buffers, flip training flags, and fill caches
it owns in place (a per-length position table in a dict, a list of rotary tables, a config's
fields): left there, a FakeTensor would come back from the user's next real forward. So besides
each module's attribute, parameter, buffer and child dicts, the mutable containers and plain
objects reachable from its attributes (to a small depth) are saved and restored in place, which
keeps the identity of anything shared. TorchScript modules keep their state in C++, where a
Python forward cannot change it: only their Python attributes are restored.
"""

from __future__ import annotations

import contextlib
import types
from collections import OrderedDict
from collections.abc import Collection, Iterator
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.gate import Gate

DEPTH = 3  # attribute -> container -> container: deeper state is not written by forwards in practice
_OPAQUE = (
    torch.Tensor, nn.Module, type, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
    types.ModuleType, str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device,
)  # fmt: skip


# Exact types to skip before any isinstance (whose torch.Tensor check runs Python code for every other value).
_LEAVES = {str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Tensor, nn.Parameter}
_CONTAINERS = {dict, OrderedDict, list, set}


def _save(value: Any, depth: int, seen: set[int], saved: list[tuple[Any, Any]]) -> None:
    """Append (container, copy of its contents) for ``value`` and what it holds, ``depth`` levels down."""
    kind = type(value)
    if depth == 0 or kind in _LEAVES or id(value) in seen:
        return
    if kind not in _CONTAINERS and isinstance(value, _OPAQUE):
        return
    seen.add(id(value))
    if isinstance(value, (dict, list, set)) and not value:  # most are (a module's hook tables): nothing inside
        saved.append((value, ()))
        return
    if isinstance(value, dict):
        saved.append((value, dict(value)))
        children: Any = value.values()
    elif isinstance(value, list):
        saved.append((value, list(value)))
        children = value
    elif isinstance(value, set):
        saved.append((value, set(value)))
        children = ()
    elif isinstance(value, tuple):
        children = value  # immutable itself; what it holds may not be
    elif isinstance(getattr(value, "__dict__", None), dict):
        saved.append((value.__dict__, dict(value.__dict__)))
        children = value.__dict__.values()
    else:
        return
    if depth > 1:  # one level further down is still saved
        for child in list(children):
            if type(child) not in _LEAVES:
                _save(child, depth - 1, seen, saved)


def _put_back(container: Any, contents: Any) -> None:
    if not contents and not container:  # empty before and after: nothing to undo
        return
    if isinstance(container, list):
        container[:] = contents
    else:  # dict or set
        container.clear()
        container.update(contents)


_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def hooks_set_aside(model: nn.Module, keep: Collection[int] = ()) -> Iterator[None]:
    """Run the body with no module hooks of the user's on ``model`` (fxdelta's own runs are not theirs
    to see: a hook that logs or collects features must not get FakeTensors or random inputs). Hooks with
    an id in ``keep`` (fxdelta's hook sites) stay."""
    saved = []
    for m in model.modules():
        for name in _HOOK_TABLES:
            table = getattr(m, name, None)
            if isinstance(table, dict) and table:
                saved.append((table, dict(table)))
                for hook_id, hook in list(table.items()):
                    if hook_id not in keep and not isinstance(getattr(hook, "__self__", None), Gate):  # the gate stays
                        del table[hook_id]
    try:
        yield
    finally:
        for table, contents in saved:
            _put_back(table, contents)


@contextlib.contextmanager
def restored_after(model: nn.Module) -> Iterator[None]:
    """Run the body, then put ``model`` back as it was (see the module docstring)."""
    seen: set[int] = set()
    reachable: list[tuple[Any, Any]] = []
    modules = []
    for m in model.modules():
        scripted = isinstance(m, torch.jit.ScriptModule)
        tables: tuple[dict[str, Any], ...] = () if scripted else (m._parameters, m._buffers, m._modules)
        modules.append((m, dict(m.__dict__), [(t, dict(t)) for t in tables]))
        seen.update(id(t) for t in tables)
        seen.add(id(m.__dict__))
        for value in m.__dict__.values():
            if type(value) not in _LEAVES:
                _save(value, DEPTH, seen, reachable)
    try:
        yield
    finally:
        for container, contents in reachable:
            _put_back(container, contents)
        for m, attrs, saved_tables in modules:
            for table, contents in saved_tables:
                _put_back(table, contents)
            m.__dict__.clear()
            m.__dict__.update(attrs)
