"""The graph path and the hook fallback compute the same numbers, for every route.

Sites are built directly (an opaque ``GraphSite`` vs a ``HookSite`` with the same entries), then
end to end: each method with ``hooks_only=True`` vs the default plan on tiny BERT and GPT-2.
"""

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from fxdelta import AdapterModel, BitFitModel, LoraModel
from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import DeltaContainer, Entry
from fxdelta.core.routes import Route
from fxdelta.sites.base import SiteKind
from fxdelta.sites.graph import GraphSite
from fxdelta.sites.hooks import HookSite

from zoo import ZOO

IN, OUT = 4, 6  # the patched nn.Linear(IN, OUT): the routes need different delta shapes
# The routes graph sites and hook sites both carry (prefixes and prompts have sites of their own:
# test_prefix.py, test_soft_prompt.py).
ROUTES = [r for r in Route if r not in (Route.PREFIX, Route.PROMPT)]


def _delta(n_in: int, n_out: int, seed: int) -> nn.Module:
    """A small non-linear delta with non-zero weights, so every wiring mistake shows."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 3), nn.Tanh(), nn.Linear(3, n_out))


class _InOutDelta(nn.Module):
    """``d(h_in, h_out)``: a gate from the input times the output, like a reweighting method."""

    def __init__(self, n_in: int, n_out: int, seed: int) -> None:
        super().__init__()
        self.gate = _delta(n_in, n_out, seed)

    def forward(self, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate(h_in)) * h_out


def _entries(target: str, routes: list[Route], dim_in: int = IN, dim_out: int = OUT) -> list[Entry]:
    shapes = {
        Route.INPUT: (dim_in, dim_in),
        Route.OUTPUT: (dim_out, dim_out),
        Route.PARALLEL: (dim_in, dim_out),
        Route.IN_OUT: (dim_in, dim_out),
    }

    def make(route: Route, seed: int) -> nn.Module:
        return _InOutDelta(*shapes[route], seed) if route is Route.IN_OUT else _delta(*shapes[route], seed)

    return [Entry(target, r, make(r, seed=10 + i), f"d{i}", order=i) for i, r in enumerate(routes)]


def _added(entry: Entry, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """What an output-side delta adds to ``h_out``, by hand."""
    if entry.route is Route.OUTPUT:
        return entry.delta(h_out)
    if entry.route is Route.PARALLEL:
        return entry.delta(h_in)
    return entry.delta(h_in, h_out)


def _install(kind: str, path: str, module: nn.Module, entries: list[Entry]):
    """Register the deltas where fxdelta keeps them (``<target>.deltas.<name>``), then install."""
    container = DeltaContainer()
    for e in entries:
        container[e.name] = e.delta
    module.add_module("deltas", container)
    site = GraphSite(path, module, None, entries) if kind == "graph" else HookSite(path, module, entries)
    site.install()
    return site


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT)


def _reference(lin: nn.Linear, entries: list[Entry], x: torch.Tensor) -> torch.Tensor:
    """Entry-order semantics by hand: input deltas first (in order), then output/parallel ones."""
    h = x
    for e in entries:
        if e.route is Route.INPUT:
            h = h + e.delta(h)
    y = lin(h)
    for e in entries:
        if e.route is not Route.INPUT:
            y = y + _added(e, h, y)
    return y


def _run_site(kind: str, routes: list[Route]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(patched output, hand reference, whether uninstall restored the plain output) on a fresh Linear."""
    lin, entries = _linear(), _entries("fc", routes)
    x = torch.randn(3, 5, IN, generator=torch.Generator().manual_seed(1))  # (B, T, IN)
    with torch.no_grad():
        plain = lin(x)
        site = _install(kind, "fc", lin, entries)
        patched = lin(x)
        site.uninstall()
        reference = _reference(lin, entries, x)
        restored = torch.equal(lin(x), plain) and not torch.equal(patched, plain)
    return patched, reference, restored


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.value)
def test_single_linear_graph_equals_hooks(route):
    graph, ref, graph_restored = _run_site("graph", [route])
    hooks, _, hooks_restored = _run_site("hooks", [route])
    assert torch.equal(graph, hooks)
    assert torch.equal(graph, ref)
    assert graph_restored and hooks_restored  # the delta did something, and uninstall undid it


COMPOSITIONS = {
    "in-in-par-out-par": [Route.INPUT, Route.INPUT, Route.PARALLEL, Route.OUTPUT, Route.PARALLEL],
    "out-par-out": [Route.OUTPUT, Route.PARALLEL, Route.OUTPUT],
    "in-out-in": [Route.INPUT, Route.OUTPUT, Route.INPUT],
    "par-inout-out-inout": [Route.PARALLEL, Route.IN_OUT, Route.OUTPUT, Route.IN_OUT],
}


@pytest.mark.parametrize("routes", list(COMPOSITIONS.values()), ids=list(COMPOSITIONS))
def test_several_deltas_compose_in_entry_order(routes):
    graph, ref, _ = _run_site("graph", routes)
    hooks, _, _ = _run_site("hooks", routes)
    assert torch.equal(graph, hooks)
    assert torch.allclose(graph, ref, atol=1e-6)


def test_parallel_before_input_graph_equals_hooks():
    # A parallel delta reads the input the module actually receives (after every input delta),
    # whatever its place in the list: the graph path and the hooks agree on that rule.
    graph, _, _ = _run_site("graph", [Route.PARALLEL, Route.INPUT])
    hooks, _, _ = _run_site("hooks", [Route.PARALLEL, Route.INPUT])
    assert torch.allclose(graph, hooks, atol=1e-6)


# -- hooks on a multi-argument module returning a tuple -----------------------------------------
class MaskedBlock(nn.Module):
    """``(hidden_states (B, T, 8), mask (B, T)) -> (hidden (B, T, 8), aux (B, T), mask)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.proj = nn.Linear(8, 8)

    def forward(self, hidden_states, mask=None):
        h = self.proj(hidden_states) * mask.unsqueeze(-1)
        return h, h.mean(-1), mask


CALLS = {
    "positional": lambda m, h, mask: m(h, mask),
    "mask-keyword": lambda m, h, mask: m(h, mask=mask),
    "all-keyword": lambda m, h, mask: m(hidden_states=h, mask=mask),
}


@pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.value)
def test_hooks_on_a_tuple_returning_block(route, call):
    block = MaskedBlock()
    (entry,) = _entries("block", [route], 8, 8)
    h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        plain = block(h, mask)
        if route is Route.INPUT:
            expected = block(h + entry.delta(h), mask)
        else:
            expected = (plain[0] + _added(entry, h, plain[0]), plain[1], plain[2])
        _install("hooks", "block", block, [entry])
        out = call(block, h, mask)
    assert type(out) is tuple and len(out) == 3
    assert torch.equal(out[0], expected[0])
    assert torch.equal(out[1], expected[1])  # the other outputs pass through (or follow the new input)
    assert out[2] is mask


class KeywordFirst(nn.Module):
    """First parameter called ``x`` and passed by keyword; returns a ``ModelOutput``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.proj = nn.Linear(8, 8)

    def forward(self, x, scale=1.0):
        y = self.proj(x) * scale
        return BaseModelOutput(last_hidden_state=y, hidden_states=(x,))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.value)
def test_hooks_find_h_in_by_first_parameter_name_and_repack_model_output(route):
    block = KeywordFirst()
    (entry,) = _entries("block", [route], 8, 8)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        x_in = x + entry.delta(x) if route is Route.INPUT else x
        y = block.proj(x_in) * 2.0
        if route is not Route.INPUT:
            y = y + _added(entry, x, y)
        _install("hooks", "block", block, [entry])
        out = block(x=x, scale=2.0)
    assert isinstance(out, BaseModelOutput)
    assert torch.equal(out.last_hidden_state, y) and torch.equal(out[0], y)
    assert torch.equal(out.hidden_states[0], x_in)


# -- end to end: hooks_only=True vs the default plan --------------------------------------------
METHODS = {"lora": LoraModel, "adapter": AdapterModel, "bitfit": BitFitModel}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_hooks_only_equals_default_end_to_end(family, method):
    zm = ZOO[family]
    inputs = zm.inputs()
    graph_model, hook_model = zm.build(0), zm.build(0)
    with torch.no_grad():
        plain = zm.run(graph_model, inputs)
    graph_handle = METHODS[method](graph_model)
    hook_handle = METHODS[method](hook_model, hooks_only=True)
    assert graph_handle.targets == hook_handle.targets

    # Perturb the graph model's deltas, copy the same values into the hook model's.
    gen = torch.Generator().manual_seed(7)
    hook_params = dict(hook_handle.named_parameters())
    assert hook_params.keys() == dict(graph_handle.named_parameters()).keys()
    with torch.no_grad():
        for name, p in graph_handle.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            hook_params[name].copy_(p)

    kinds = {s.kind for s in BackboneState.find(graph_model).sites}
    assert kinds & {SiteKind.TRACED_REGION, SiteKind.OPAQUE_GRAPH}  # otherwise this compares hooks with hooks
    assert {s.kind for s in BackboneState.find(hook_model).sites} == {SiteKind.HOOKS}

    with torch.no_grad():
        via_graph = zm.run(graph_model, inputs)
        via_hooks = zm.run(hook_model, inputs)
    assert not torch.allclose(via_graph, plain, atol=1e-4)
    assert torch.allclose(via_graph, via_hooks, atol=1e-6), (via_graph - via_hooks).abs().max()
