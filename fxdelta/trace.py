"""Trace one region of the backbone into an fx graph, and check the trace against eager.

A region is a module whose own ``forward`` is traced; its targets (and every torch.nn layer,
and every module that must not be inlined) stay opaque ``call_module`` nodes. A trace can
succeed and still be wrong (a ``None`` default or ``self.training`` baked in), so every traced
region is run once against eager on random inputs of the observed shapes, in train and in
eval mode with the same random seed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch._subclasses.fake_tensor import FakeTensorMode

from fxdelta.observe import CallRecord

logger = logging.getLogger(__name__)


class _RegionTracer(fx.Tracer):
    """Inline only the modules on the way to the targets; keep everything else a leaf."""

    def __init__(self, inline: Collection[nn.Module]) -> None:
        super().__init__()
        self._inline = {id(m) for m in inline}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) not in self._inline


def trace_region(root: nn.Module, inline: Collection[nn.Module]) -> fx.Graph | None:
    """The graph of ``root.forward`` with only ``inline`` modules traced through, or None."""
    try:
        graph = _RegionTracer([root, *inline]).trace(root)
    except Exception as e:  # tracing failure just means "not a region"
        logger.debug("fxdelta: %s does not trace: %s", type(root).__name__, e)
        return None
    # Drop leftovers such as unused weight reads from dtype checks (DCE needs an owning module).
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()
    return gm.graph


def graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    return fx.GraphModule(root, graph, class_name=name)


def _call(fn, record: CallRecord, inputs: list[torch.Tensor]):
    n = len(record.args)
    return fn(*inputs[:n], **{k: v for (k, _), v in zip(record.kwargs, inputs[n:])})


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return False


def validate_region(root: nn.Module, gm: fx.GraphModule, record: CallRecord) -> bool:
    """Whether ``gm`` computes what ``root`` computes, in train and in eval mode."""
    specs = [s for s in record.args] + [s for _, s in record.kwargs]
    if any(s is None or not s.floating for s in specs):
        return False
    modes = {m: m.training for m in root.modules()}
    buffers = {name: b.clone() for name, b in root.named_buffers()}  # e.g. BatchNorm running stats

    def run(fn):
        torch.manual_seed(0)
        try:
            return _call(fn, record, inputs)
        finally:
            for name, b in root.named_buffers():
                b.copy_(buffers[name])

    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            inputs = [s.real() for s in specs]
            for training in (True, False):
                root.train(training)
                # The class's forward: the instance one may be fxdelta's graph from an earlier plan.
                expected = run(type(root).forward.__get__(root))
                got = run(gm.forward)
                if not _same(expected, got):
                    logger.debug("fxdelta: trace of %s differs from eager (training=%s)", type(root).__name__, training)
                    return False
    except Exception as e:
        logger.debug("fxdelta: trace of %s fails to run: %s", type(root).__name__, e)
        return False
    finally:
        for m, flag in modes.items():
            m.training = flag
    return True


def propagate_shapes(gm: fx.GraphModule, record: CallRecord) -> None:
    """Annotate every node of ``gm`` with its shape (``node.meta['tensor_meta']``), on FakeTensors."""
    specs = [s for s in record.args] + [s for _, s in record.kwargs]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fakes = [torch.empty(s.shape, dtype=s.dtype, device=s.device) for s in specs]
    by_keyword = {k: f for (k, _), f in zip(record.kwargs, fakes[len(record.args):])}
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
