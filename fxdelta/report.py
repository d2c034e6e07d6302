"""What users read: the delta model's log and the rewritten graphs of patched sites."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx
import torch.fx as fx
from torch import nn

from fxdelta.errors import SelectorError
from fxdelta.graph_site import GraphSite
from fxdelta.state import BackboneState
from fxdelta.trace import propagate_shapes
from fxdelta.visualization import Visualization

if TYPE_CHECKING:
    from fxdelta.handle import DeltaModel


def _console(file: Any):
    from rich.console import Console

    return Console(file=file, soft_wrap=True)


def parameter_counts(backbone: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of the backbone as it is now."""
    params = list(backbone.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def log(handle: "DeltaModel", *, file: Any = None) -> None:
    """The collapsed tree with deltas marked, then one summary line per delta on the backbone."""
    from rich.table import Table

    console = _console(file)
    Visualization(handle.backbone).structure_graph(file=file)
    state = BackboneState.find(handle.backbone)
    table = Table(title="deltas on this backbone")
    for column in ("name", "method", "attached", "targets", "sites", "parameters"):
        table.add_column(column)
    for h in state.handles if state else [handle]:
        sites = sorted({s.kind for s in (state.sites if state else []) if any(e.name == h.name for e in s.entries)})
        table.add_row(
            h.name, h.config.delta_type, "yes" if h.attached else "no", str(len(h.targets)),
            ", ".join(sites) or "-", f"{h.num_parameters():,}",
        )
    console.print(table)
    trainable, total = parameter_counts(handle.backbone)
    ratio = 100.0 * trainable / total if total else 0.0
    console.print(f"trainable parameters: {trainable:,} / {total:,} = {ratio:.4f}%")


def rewritten_graphs(handle: "DeltaModel") -> dict[str, fx.GraphModule]:
    state = BackboneState.find(handle.backbone)
    sites = state.sites if state else []
    return {
        s.path: s.gm
        for s in sites
        if isinstance(s, GraphSite) and s.gm is not None and any(e.name == handle.name for e in s.entries)
    }


def graph_nodes(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """One row per node: name, op, target, input node names and (when propagated) output shape."""
    rows = []
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        rows.append({
            "name": node.name,
            "op": node.op,
            "target": node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target)),
            "inputs": [a.name for a in node.all_input_nodes],
            "shape": tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None,
        })
    return rows


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """The graph's data flow as a ``networkx.DiGraph`` (node attributes: op, target)."""
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
    if site is None:
        raise SelectorError(f"no attached delta is on {path!r}; patched modules: {[e.target for e in (state.active if state else [])][:10]}")
    console = _console(file)
    if not isinstance(site, GraphSite):
        console.print(site.describe())
        return
    record = state.records.get(site.path)
    if record is not None:
        propagate_shapes(site.gm, record)  # shapes of the new delta nodes too
    console.print(f"[bold]{site.kind}[/bold] on [bold]{site.path or '<root>'}[/bold] ({type(site.module).__name__})")
    console.print(Syntax(site.gm.code.strip(), "python", theme="ansi_dark"))
    table = Table("node", "op", "target", "inputs", "shape")
    for row in graph_nodes(site.gm):
        table.add_row(row["name"], row["op"], str(row["target"]), ", ".join(row["inputs"]), str(row["shape"] or ""))
    console.print(table)
