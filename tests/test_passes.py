"""Per-pass tests (passes/): graph structure and numbers together, on hand-made fx graphs.

The backbone is two Linears with a residual, ``out = h + fc2(h)`` with ``h = fc1(x)``, so the
node ``h`` has two users (``fc2`` and the residual add): exactly the case where a pass that
rewires too much or too little changes the numbers. Weights and inputs are small integers, so
every result is exact in float32 and compared with ``torch.equal``.
"""

import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

from fxdelta.inspect import to_networkx
from fxdelta.passes import insert_input, insert_output, insert_parallel


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc1(x)
        return h + self.fc2(h)


class Scale(nn.Module):
    """``d(h) = c * h``: a delta whose effect is known exactly."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, h):
        return self.c * h


class Const(nn.Module):
    """``d(h) = b``, whatever ``h`` is (BitFit's shape of delta)."""

    def __init__(self, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, h):
        return self.b


def _integer_linear(layer: nn.Linear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-2, 3, layer.weight.shape, generator=g).float())
        layer.bias.copy_(torch.randint(-2, 3, layer.bias.shape, generator=g).float())


@pytest.fixture
def setup():
    """(traced graph module with deltas a, b registered, the eager module, an input (3, 4))."""
    module = Residual()
    _integer_linear(module.fc1, 0)
    _integer_linear(module.fc2, 1)
    gm = fx.symbolic_trace(module)
    gm.add_module("deltas", nn.ModuleDict({"a": Scale(2.0), "b": Const(torch.tensor([1.0, -1.0, 3.0, 0.0]))}))
    x = torch.randint(-3, 4, (3, 4)).float()
    return gm, module, x


def _node(gm: fx.GraphModule, target: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.target == target)


def _delta_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target).startswith("deltas.")]


def _run(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    gm.graph.lint()  # topological order and valid references
    gm.recompile()
    with torch.no_grad():
        return gm(x)


def _residual_user(gm: fx.GraphModule) -> fx.Node:
    """The original ``h + fc2(h)`` node."""
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add and n.name == "add")


# -- input route --------------------------------------------------------------------------------
def test_insert_input_with_consumer_leaves_the_residual_alone(setup):
    gm, m, x = setup
    h, fc2 = _node(gm, "fc1"), _node(gm, "fc2")
    new = insert_input(gm.graph, h, "deltas.a", consumer=fc2)

    (d,) = _delta_nodes(gm)
    assert d.target == "deltas.a" and d.args == (h,)
    assert new.op == "call_function" and new.target is operator.add and new.args == (h, d)
    assert fc2.args == (new,) and set(new.users) == {fc2}
    assert _residual_user(gm).args[0] is h  # the residual keeps the original h_in
    g = to_networkx(gm)
    assert set(g.predecessors("fc2")) == {new.name} and set(g.successors("fc1")) == {d.name, new.name, "add"}

    with torch.no_grad():
        hx = m.fc1(x)
        expected = hx + m.fc2(hx + 2 * hx)
    assert torch.equal(_run(gm, x), expected)


def test_insert_input_without_consumer_feeds_every_user(setup):
    # The region's own input: every user of the placeholder sees h_in + d(h_in).
    gm, m, x = setup
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    fc1 = _node(gm, "fc1")
    new = insert_input(gm.graph, placeholder, "deltas.a")

    (d,) = _delta_nodes(gm)
    assert d.args == (placeholder,) and new.args == (placeholder, d)
    assert set(placeholder.users) == {d, new} and fc1.args == (new,)
    nodes = list(gm.graph.nodes)
    assert nodes.index(d) < nodes.index(new) < nodes.index(fc1)  # inserted before the first user

    with torch.no_grad():
        expected = m(x + 2 * x)
    assert torch.equal(_run(gm, x), expected)


def test_insert_input_without_consumer_on_a_node_with_two_users(setup):
    # Without a consumer, both fc2 and the residual read the new h.
    gm, m, x = setup
    h = _node(gm, "fc1")
    new = insert_input(gm.graph, h, "deltas.a")
    assert set(new.users) == {_node(gm, "fc2"), _residual_user(gm)}
    with torch.no_grad():
        h2 = 3 * m.fc1(x)
        expected = h2 + m.fc2(h2)
    assert torch.equal(_run(gm, x), expected)


# -- output route -------------------------------------------------------------------------------
def test_insert_output_rewires_every_user(setup):
    gm, m, x = setup
    h = _node(gm, "fc1")
    new = insert_output(gm.graph, h, "deltas.b")

    (d,) = _delta_nodes(gm)
    assert d.args == (h,) and new.args == (h, d)
    assert set(h.users) == {d, new}
    assert set(new.users) == {_node(gm, "fc2"), _residual_user(gm)}
    assert _residual_user(gm).args[0] is new

    with torch.no_grad():
        h2 = m.fc1(x) + gm.deltas.b.b
        expected = h2 + m.fc2(h2)
    assert torch.equal(_run(gm, x), expected)


# -- parallel route -----------------------------------------------------------------------------
def test_insert_parallel_reads_the_input_and_adds_to_the_output(setup):
    gm, m, x = setup
    h, fc2 = _node(gm, "fc1"), _node(gm, "fc2")
    new = insert_parallel(gm.graph, h, fc2, "deltas.a")

    (d,) = _delta_nodes(gm)
    assert d.args == (h,)  # d reads fc2's input
    assert new.args == (fc2, d) and set(fc2.users) == {new}
    res = _residual_user(gm)
    assert res.args == (h, new)  # the residual's h slot is untouched, its fc2 slot sees the sum
    g = to_networkx(gm)
    assert set(g.predecessors(new.name)) == {"fc2", d.name}

    with torch.no_grad():
        hx = m.fc1(x)
        expected = hx + (m.fc2(hx) + 2 * hx)
    assert torch.equal(_run(gm, x), expected)


# -- chaining passes on one node (as GraphSite.build does, entry by entry) ----------------------
def test_chain_parallel_then_output_composes_in_order(setup):
    gm, m, x = setup
    h, fc2 = _node(gm, "fc1"), _node(gm, "fc2")
    first = insert_parallel(gm.graph, h, fc2, "deltas.b")  # y1 = fc2(h) + b
    second = insert_output(gm.graph, first, "deltas.a")  # y2 = y1 + 2 * y1

    d_b, d_a = _delta_nodes(gm)
    assert d_b.target == "deltas.b" and d_a.target == "deltas.a"
    assert d_a.args == (first,) and second.args == (first, d_a)
    assert set(first.users) == {d_a, second} and _residual_user(gm).args == (h, second)

    with torch.no_grad():
        hx = m.fc1(x)
        y1 = m.fc2(hx) + gm.deltas.b.b
        expected = hx + (y1 + 2 * y1)  # the other order would give 3 * fc2(h) + b
    assert torch.equal(_run(gm, x), expected)


def test_chain_two_inputs_with_consumer(setup):
    gm, m, x = setup
    h, fc2 = _node(gm, "fc1"), _node(gm, "fc2")
    h1 = insert_input(gm.graph, h, "deltas.a", consumer=fc2)  # h + 2h
    h2 = insert_input(gm.graph, h1, "deltas.b", consumer=fc2)  # h1 + b
    assert fc2.args == (h2,) and set(h1.users) == {h2, _delta_nodes(gm)[1]}
    assert _residual_user(gm).args[0] is h

    with torch.no_grad():
        hx = m.fc1(x)
        expected = hx + m.fc2(3 * hx + gm.deltas.b.b)
    assert torch.equal(_run(gm, x), expected)


def test_chain_input_then_parallel_reads_the_new_input(setup):
    gm, m, x = setup
    h, fc2 = _node(gm, "fc1"), _node(gm, "fc2")
    h1 = insert_input(gm.graph, h, "deltas.b", consumer=fc2)
    insert_parallel(gm.graph, h1, fc2, "deltas.a")
    with torch.no_grad():
        hx = m.fc1(x)
        h1x = hx + gm.deltas.b.b
        expected = hx + (m.fc2(h1x) + 2 * h1x)
    assert torch.equal(_run(gm, x), expected)


# -- the region itself as the target: h_in is the placeholder, h_out the output node's arg -------
def test_region_root_output(setup):
    gm, m, x = setup
    out = next(n for n in gm.graph.nodes if n.op == "output")
    h_out = out.args[0]
    new = insert_output(gm.graph, h_out, "deltas.a")
    assert out.args[0] is new and new.args[0] is h_out
    with torch.no_grad():
        expected = 3 * m(x)
    assert torch.equal(_run(gm, x), expected)


def test_region_root_parallel(setup):
    gm, m, x = setup
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    new = insert_parallel(gm.graph, placeholder, out.args[0], "deltas.a")
    (d,) = _delta_nodes(gm)
    assert d.args == (placeholder,) and out.args[0] is new
    assert list(gm.graph.nodes)[-2:] == [new, out]
    with torch.no_grad():
        expected = m(x) + 2 * x
    assert torch.equal(_run(gm, x), expected)


def test_region_root_all_three_routes(setup):
    gm, m, x = setup
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    h_in = insert_input(gm.graph, placeholder, "deltas.b")  # x + b
    h_out = insert_parallel(gm.graph, h_in, out.args[0], "deltas.a")  # m(x + b) + 2 (x + b)
    insert_output(gm.graph, h_out, "deltas.b")  # ... + b
    with torch.no_grad():
        b = gm.deltas.b.b
        expected = m(x + b) + 2 * (x + b) + b
    assert torch.equal(_run(gm, x), expected)


def test_passes_do_not_touch_the_eager_module(setup):
    gm, m, x = setup
    with torch.no_grad():
        before = m(x)
    insert_output(gm.graph, _node(gm, "fc2"), "deltas.a")
    _run(gm, x)
    with torch.no_grad():
        assert torch.equal(m(x), before)
    assert "forward" not in m.__dict__ and not hasattr(m, "deltas")
