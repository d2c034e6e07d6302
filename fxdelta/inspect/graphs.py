"""Rewritten graphs for reading: their node lists (with shapes), as networkx graphs, and printed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import SelectorError
from fxdelta.core.records import CallRecord
from fxdelta.core.torch_internals import FakeTensorMode
from fxdelta.inspect.tree import console

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)


def propagate_shapes(gm: fx.GraphModule, record: CallRecord) -> None:
    """Annotate every node of ``gm`` with its shape (``node.meta['tensor_meta']``), on FakeTensors."""
    from torch.fx.passes.shape_prop import ShapeProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:  # None where the argument was not a tensor
        fakes = [
            None if s is None else torch.empty(s.shape, dtype=s.dtype, device=s.device) for s in record.input_specs
        ]
    by_keyword = {k: f for (k, _), f in zip(record.kwargs, fakes[len(record.args) :], strict=True)}
    ordered = []
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if i < len(record.args):
            ordered.append(fakes[i])
        else:  # passed by keyword, or left at its default
            ordered.append(by_keyword.get(node.target, node.args[0] if node.args else None))
    try:
        with torch.no_grad():
            ShapeProp(gm, fake_mode=mode).propagate(*ordered)
    except Exception as e:  # shapes are for display; a failure only loses annotations
        logger.debug("fxdelta: shape propagation on %s failed: %s", gm.__class__.__name__, e)


def graph_nodes(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """One row per node: name, op, target, input node names and (when propagated) output shape."""
    rows = []
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        rows.append(
            {
                "name": node.name,
                "op": node.op,
                "target": node.target
                if isinstance(node.target, str)
                else getattr(node.target, "__name__", str(node.target)),
                "inputs": [a.name for a in node.all_input_nodes],
                "shape": tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None,
            }
        )
    return rows


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """The graph's data flow as a ``networkx.DiGraph`` (node attributes: op, target)."""
    import networkx as nx  # only here: importing it costs a quarter of a second

    g = nx.DiGraph()
    for row in graph_nodes(gm):
        g.add_node(row["name"], op=row["op"], target=row["target"])
        g.add_edges_from((src, row["name"]) for src in row["inputs"])
    return g


def show_graph(backbone: nn.Module, path: str, *, file: Any = None) -> None:
    """Print the site that carries deltas on ``path``: its generated code and its node list."""
    from rich.syntax import Syntax
    from rich.table import Table

    state = BackboneState.find(backbone)
    site = state.site_for(path) if state else None
    if state is None or site is None:
        patched = [e.target for e in (state.active if state else [])][:10]
        raise SelectorError(f"no attached delta is on {path!r}; patched modules: {patched}")
    out = console(file)
    gm = site.graph_module
    if gm is None:
        out.print(site.describe())
        return
    record = state.records.get(site.path)
    if record is not None:
        propagate_shapes(gm, record)  # shapes of the new delta nodes too
    out.print(f"[bold]{site.kind.value}[/bold] on [bold]{site.path or '<root>'}[/bold] ({type(site.module).__name__})")
    out.print(Syntax(gm.code.strip(), "python", theme="ansi_dark"))
    table = Table("node", "op", "target", "inputs", "shape")
    for row in graph_nodes(gm):
        table.add_row(row["name"], row["op"], str(row["target"]), ", ".join(row["inputs"]), str(row["shape"] or ""))
    out.print(table)
