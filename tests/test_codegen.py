"""Graph sites whose graphs are equal node for node share generated code (``sites.codegen``); others never do."""

import copy
import operator

import torch
import torch.fx as fx
from torch import nn

import fxdelta
from fxdelta.compiler.state import BackboneState
from fxdelta.sites.codegen import Codes, graph_module, key

from zoo import ZOO


def _graph(fn=torch.relu, scale: float = 2.0, name: str = "x") -> fx.Graph:
    graph = fx.Graph()
    x = graph.placeholder(name)
    graph.output(graph.call_function(operator.mul, (graph.call_function(fn, (x,)), scale)))
    return graph


def test_equal_graphs_share_code_and_each_module_runs_its_own():
    codes = Codes()
    a = graph_module(nn.Module(), _graph(), "A", codes)
    b = graph_module(nn.Module(), _graph(), "B", codes)
    assert len(codes) == 1 and a.code == b.code and type(a) is not type(b)  # one code, two forwards
    x = torch.tensor([-1.0, 3.0])
    assert torch.equal(a(x), torch.tensor([0.0, 6.0])) and torch.equal(b(x), a(x))
    assert "python_code" not in a.graph.__dict__  # the graph generates its code normally again
    assert a.code == fx.GraphModule(nn.Module(), _graph()).code


def test_graphs_that_differ_anywhere_get_their_own_code():
    codes = Codes()
    base = graph_module(nn.Module(), _graph(), "A", codes)
    for other in (_graph(torch.tanh), _graph(scale=3.0), _graph(scale=2), _graph(name="h")):
        gm = graph_module(nn.Module(), other, "B", codes)
        assert gm.code == fx.GraphModule(nn.Module(), other).code
    assert len(codes) == 5 and base.code != gm.code
    x = torch.tensor([-1.0, 3.0])
    assert torch.equal(graph_module(nn.Module(), _graph(scale=3.0), "C", codes)(x), torch.tensor([0.0, 9.0]))


def test_a_graph_with_metadata_or_object_constants_is_not_keyed():
    graph = _graph()
    next(iter(graph.nodes)).meta["val"] = torch.empty(2)
    assert key(graph) is None
    odd = fx.Graph()
    odd.output(odd.call_function(operator.add, (odd.placeholder("x"), object())))
    assert key(odd) is None


def test_lora_sites_on_identical_layers_share_one_code_and_a_copy_makes_its_own():
    model = ZOO["llama"].build()
    fxdelta.compile(model, {"delta_type": "lora"})
    state = BackboneState.find(model)
    assert len(state.sites) == 4 and len(state.traces.codes) == 1
    clone = copy.deepcopy(model)
    assert len(BackboneState.find(clone).traces.codes) == 0
    inputs = ZOO["llama"].inputs()
    with torch.no_grad():
        assert torch.equal(ZOO["llama"].run(clone, inputs), ZOO["llama"].run(model, inputs))
