"""Generate an fx graph's Python code once: graph sites whose graphs are equal node for node share it.

A LoRA on every layer's ``q_proj`` builds one small graph per layer, all alike, and fx writes and
compiles Python code for each (most of a graph site's build time). ``graph_module`` builds the
``GraphModule`` as usual, but hands it code already generated for an equal graph. Equal means the same
nodes in the same order with the same op, name, target, arguments (other nodes by name, constants by
type and value) and annotation: everything fx writes code from. A graph holding anything else (an
object constant, metadata) is not compared and gets its own code. Each GraphModule still compiles
its code into a forward of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from typing import Any

import torch
import torch.fx as fx
from torch.fx.graph import PythonCode
from torch.fx.immutable_collections import immutable_dict, immutable_list


class Codes(dict[Hashable, PythonCode]):
    """One backbone's generated code, by the key of the graphs that share it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Codes:
        return Codes()  # a copied backbone generates its own: the code's globals hold Python modules


_CONSTANTS = {type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.layout}
_CONSTANTS |= {torch.memory_format, type(Ellipsis), type(inspect.Parameter.empty)}


class _Unkeyed(Exception):
    """Something in the graph that two graphs cannot be told equal by."""


def _argument(value: Any) -> Hashable:
    if isinstance(value, fx.Node):
        return ("node", value.name)
    kind = type(value)
    if kind in _CONSTANTS:
        return (kind, value)
    if kind in (tuple, list, immutable_list):
        return (kind, tuple(_argument(v) for v in value))
    if kind in (dict, immutable_dict):
        return (kind, tuple((_argument(k), _argument(v)) for k, v in value.items()))
    if kind is slice:
        return (kind, _argument(value.start), _argument(value.stop), _argument(value.step))
    if isinstance(value, type):  # an annotation
        return ("type", id(value))
    raise _Unkeyed


def _target(target: Any) -> Hashable:
    # A callable by identity: fx names it in the code and puts that very object in the code's globals.
    return target if isinstance(target, str) else ("callable", id(target))


def key(graph: fx.Graph) -> Hashable | None:
    """What the code fx writes for ``graph`` depends on, or None if the graph holds something else."""
    if type(graph._codegen) is not fx.graph.CodeGen:  # pytree in/out specs: code of its own
        return None
    nodes = []
    try:
        for n in graph.nodes:
            if n.meta:  # shapes, stack traces: fx can write them into the code's comments
                return None
            nodes.append((n.op, n.name, _target(n.target), _argument(n.args), _argument(n.kwargs), _argument(n.type)))
    except _Unkeyed:
        return None
    return tuple(nodes)


def graph_module(root: Any, graph: fx.Graph, class_name: str, codes: Codes | None) -> fx.GraphModule:
    """``fx.GraphModule(root, graph, class_name=...)``, with the code generated for an equal graph if
    ``codes`` holds it (and kept there for the next)."""
    found = key(graph) if codes is not None else None
    if codes is None or found is None:
        return fx.GraphModule(root, graph, class_name=class_name)

    def python_code(root_module: str, **options: Any) -> PythonCode:
        entry = (found, root_module, tuple(sorted(options.items())))  # options: flags such as record_func
        if entry not in codes:
            codes[entry] = fx.Graph.python_code(graph, root_module, **options)
        return codes[entry]

    graph.python_code = python_code  # type: ignore[method-assign]  # what GraphModule.recompile calls
    try:
        return fx.GraphModule(root, graph, class_name=class_name)
    finally:
        del graph.python_code
