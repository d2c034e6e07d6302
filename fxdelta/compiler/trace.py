"""Trace one region of the backbone into an fx graph, and check the trace against eager.

A region is a module whose own ``forward`` is traced; its targets (and every torch.nn layer,
and every module that must not be inlined) stay opaque ``call_module`` nodes. A trace can
succeed and still be wrong (a ``None`` default or ``self.training`` baked in), so every traced
region is run once against eager on random inputs of the observed shapes, in train and in
eval mode with the same random seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxdelta.compiler.restore import hooks_set_aside
from fxdelta.core.paths import relative
from fxdelta.core.records import CallRecord
from fxdelta.core.torch_internals import saved_tensor_hooks_active
from fxdelta.sites.codegen import Codes

logger = logging.getLogger(__name__)


def _autograd_state() -> tuple:
    """What a graph cannot hold: grad mode, saved-tensor hooks (activation checkpointing sets them), autocast."""
    return torch.is_grad_enabled(), saved_tensor_hooks_active(), torch.is_autocast_enabled("cpu")


class _RegionTracer(fx.Tracer):
    """Inline only the modules on the way to the targets; keep everything else a leaf.

    A forward that runs part of itself under another autograd state (``torch.utils.checkpoint``, which
    recomputes it in backward; ``torch.no_grad()``; autocast) does not trace: the graph would keep the
    operations and silently drop the state (checkpointing would stop saving memory, no_grad would let
    gradients through). Such a module is no region; the modules it calls can still be.
    """

    def __init__(self, inline: Collection[nn.Module]) -> None:
        super().__init__()
        self._inline = {id(m) for m in inline}
        self._state = _autograd_state()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) not in self._inline

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        if _autograd_state() != self._state:
            raise RuntimeError("the forward changes grad mode, saved-tensor hooks or autocast part way")
        return super().create_node(*args, **kwargs)


def trace_region(root: nn.Module, inline: Collection[nn.Module]) -> fx.GraphModule | None:
    """``root.forward`` traced with only ``inline`` modules traced through, or None if it does not trace.

    The one GraphModule of the pristine graph: dead code is dropped from it (leftovers such as
    unused weight reads from dtype checks), validation runs it, and sites copy its graph.
    """
    try:
        graph = _RegionTracer([root, *inline]).trace(root)
    except Exception as e:  # tracing failure just means "not a region"
        logger.debug("fxdelta: %s does not trace: %s", type(root).__name__, e)
        return None
    try:
        graph.owning_module = root  # type: ignore[assignment]  # DCE's purity checks look submodules up here
        graph.eliminate_dead_code()
        graph.owning_module = None
        return fx.GraphModule(root, graph, class_name=type(root).__name__)
    except Exception as e:  # fx cannot write it as code (a default it cannot print, ...): not a region
        logger.debug("fxdelta: %s traces but does not compile: %s", type(root).__name__, e)
        return None


def _call(fn: Callable[..., Any], record: CallRecord, inputs: list[torch.Tensor]) -> Any:
    n = len(record.args)
    return fn(*inputs[:n], **{k: v for (k, _), v in zip(record.kwargs, inputs[n:], strict=True)})


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return False


def _cuda_devices(root: nn.Module, record: CallRecord) -> list[int]:
    specs = [s for s in record.input_specs if s is not None]
    devices = {t.device for t in root.parameters()} | {s.device for s in specs}
    return sorted({d.index or 0 for d in devices if d.type == "cuda"})


def validate_region(root: nn.Module, gm: fx.GraphModule, record: CallRecord) -> bool:
    """Whether ``gm`` computes what ``root`` computes, in train and in eval mode.

    Both runs draw the same dropout masks: the generators of every device involved are seeded,
    and restored afterwards, so the user's random streams are untouched.
    """
    specs = record.input_specs
    if any(s is None or not s.floating for s in specs):
        return False
    modes = {m: m.training for m in root.modules()}
    buffers = {name: b.clone() for name, b in root.named_buffers()}  # e.g. BatchNorm running stats
    cuda = _cuda_devices(root, record)

    def run(fn: Callable[..., Any]) -> Any:
        torch.random.default_generator.manual_seed(0)  # not torch.manual_seed: it also queues CUDA reseeds
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(0)
        try:
            return _call(fn, record, inputs)
        finally:
            for name, b in root.named_buffers():
                b.copy_(buffers[name])

    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda, device_type="cuda"), hooks_set_aside(root):
            inputs = [s.real() for s in specs if s is not None]
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


@dataclass
class TraceCache:
    """Traced-and-validated region graphs, keyed by root and the modules traced through.

    Kept for the backbone's lifetime (``BackboneState``): a region is traced and checked once,
    and identical code of one class (one layer of many) is checked once.
    """

    graphs: dict[tuple, fx.GraphModule | None] = field(default_factory=dict)
    validated: dict[tuple, bool] = field(default_factory=dict)  # (class, generated code, call record)
    codes: Codes = field(default_factory=Codes)  # graph sites' generated code, shared by equal graphs

    def region(
        self,
        root: str,
        module: nn.Module,
        targets: Collection[str],
        inline: Collection[nn.Module],
        inline_paths: Collection[str],
        record: CallRecord,
        pristine: Callable[[], AbstractContextManager],
    ) -> fx.GraphModule | None:
        """The region's pristine GraphModule, if ``module`` traces, calls ``targets`` as modules and matches eager.

        A new region is traced inside ``pristine()``, which makes the backbone run as it was
        without fxdelta (its sites taken out for the moment).
        """
        key = (root, frozenset(targets), frozenset(inline_paths))
        if key not in self.graphs:
            with pristine():
                self.graphs[key] = self._checked(root, module, targets, inline, record)
        return self.graphs[key]

    def _checked(
        self, root: str, module: nn.Module, targets: Collection[str], inline: Collection[nn.Module], record: CallRecord
    ) -> fx.GraphModule | None:
        gm = trace_region(module, inline)
        if gm is None:
            return None
        if any(n.op == "get_attr" for n in gm.graph.nodes):
            # A direct tensor read would go stale after model.to() or load_state_dict(assign=True),
            # which replace tensors; call_module leaves always see their module's current ones.
            logger.debug("fxdelta: %s reads tensors directly; not used as a region", root)
            return None
        rel = {relative(t, root) for t in targets}
        called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
        if not rel <= called:
            logger.debug("fxdelta: %s traces but does not call %s as modules", root, sorted(rel - called))
            return None
        key = (type(module), gm.code, record)
        if key not in self.validated:
            self.validated[key] = validate_region(module, gm, record)
        return gm if self.validated[key] else None
