"""The delta model's log: the marked tree, one summary line per delta, and parameter counts."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.handles import DeltaHandle
from fxdelta.inspect.tree import Visualization, console


def parameter_counts(backbone: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of the backbone as it is now."""
    params = list(backbone.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def log(
    backbone: nn.Module,
    handle: DeltaHandle,
    shown: nn.Module | None = None,
    *,
    tree: bool = True,
    deltas: bool = True,
    trainable: bool = True,
    memory: bool = True,
    file: Any = None,
) -> None:
    """The collapsed tree of ``shown`` (default: the backbone) with deltas marked, one summary line per
    delta on the backbone, the trainable share of the backbone's parameters, and CUDA memory in use."""
    out = console(file)
    if tree:
        Visualization(shown if shown is not None else backbone).structure_graph(file=file)
    if deltas:
        out.print(_delta_table(backbone, handle))
    if trainable:
        count, total = parameter_counts(backbone)
        ratio = 100.0 * count / total if total else 0.0
        out.print(f"trainable parameters: {count:,} / {total:,} = {ratio:.4f}%")
    if memory and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            now, peak = torch.cuda.memory_allocated(i) / 2**30, torch.cuda.max_memory_allocated(i) / 2**30
            out.print(f"cuda:{i} memory: {now:.2f} GiB allocated, {peak:.2f} GiB at most")


def _delta_table(backbone: nn.Module, handle: DeltaHandle) -> Any:
    from rich.table import Table

    state = BackboneState.find(backbone)
    table = Table(title="deltas on this backbone")
    for column in ("name", "method", "attached", "targets", "sites", "parameters"):
        table.add_column(column)
    for h in state.handles if state else [handle]:
        sites = sorted(
            {s.kind.value for s in (state.sites if state else []) if any(e.name == h.name for e in s.entries)}
        )
        table.add_row(
            h.name,
            h.delta_type,
            "yes" if h.attached else "no",
            str(len(h.targets)),
            ", ".join(sites) or "-",
            f"{h.num_parameters():,}",
        )
    return table


def rewritten_graphs(backbone: nn.Module, name: str) -> dict[str, fx.GraphModule]:
    """``{site path: GraphModule}`` for every installed graph that carries the delta named ``name``."""
    state = BackboneState.find(backbone)
    out = {}
    for s in state.sites if state else []:
        gm = s.graph_module
        if gm is not None and any(e.name == name for e in s.entries):
            out[s.path] = gm
    return out
