"""Routes that span two modules (parallel adapters): one graph edge in a region, or carried by hooks."""

import pytest
import torch
from torch import nn

from fxdelta import ConfigError, ParallelAdapterModel, SelectorError
from fxdelta.compiler.state import BackboneState
from fxdelta.inspect import to_networkx
from fxdelta.sites.base import SiteKind

from hf_compat import enable_checkpointing
from zoo import ZOO


def kinds(model) -> set[str]:
    return {s.kind for s in BackboneState.find(model).sites}


def perturbed(handle, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return handle


def test_pair_inside_a_region_is_one_edge():
    model = ZOO["gpt2"].build()
    handle = ParallelAdapterModel(model, modified_modules=["mlp.c_fc", "mlp.c_proj"])
    assert handle.sources == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    gm = handle.rewritten_graphs()["transformer.h.0.mlp"]
    g = to_networkx(gm)
    module = next(n for n, d in g.nodes(data=True) if d["target"] == "c_proj.deltas.parallel_adapter")
    (delta,) = g.successors(module)  # run(delta, c_proj's output it joins, the input it reads)
    call = next(n for n in gm.graph.nodes if n.name == delta)
    assert call.args[2].op == "placeholder"  # the MLP's input, which is c_fc's input
    assert kinds(model) == {SiteKind.TRACED_REGION}


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "bart"])
def test_graph_and_hooks_agree_on_pairs(name):
    zm = ZOO[name]
    x = zm.inputs()
    graph_model, hook_model = zm.build(), zm.build()
    graph = perturbed(ParallelAdapterModel(graph_model))
    hooks = ParallelAdapterModel(hook_model, hooks_only=True)
    for a, b in zip(graph.entries, hooks.entries, strict=True):  # same architecture, same order: copy the values across
        b.delta.load_state_dict(a.delta.state_dict())
    assert SiteKind.INPUT_CARRIER in kinds(hook_model)
    with torch.no_grad():
        torch.testing.assert_close(zm.run(hook_model, x), zm.run(graph_model, x), atol=1e-6, rtol=0)


def test_carried_pair_under_gradient_checkpointing():
    """BART's fc1 -> fc2 pair is carried by hooks (the layer does not trace). With activation
    checkpointing, backward replays each layer's forward without the layer's own hooks: the carried
    input must still pair up, and the gradients match the run without checkpointing."""
    zm = ZOO["bart"]
    x = zm.inputs()
    grads = []
    for checkpointing in (False, True):
        model = zm.build().train()
        model.config.dropout = model.config.attention_dropout = 0.0  # deterministic
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        handle = perturbed(ParallelAdapterModel(model, modified_modules=["fc1", "fc2"]))
        assert SiteKind.INPUT_CARRIER in kinds(model)
        handle.freeze_module()
        if checkpointing:
            enable_checkpointing(model, use_reentrant=False)
        loss = model(**x, labels=x["decoder_input_ids"]).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in handle.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-6, rtol=1e-5)


class Twice(nn.Module):
    """Calls one block twice: every call of the common ancestor must carry its own input."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))

    def forward(self, x):
        return self.block(self.block(x) * 2)


def test_carried_input_follows_each_call():
    torch.manual_seed(0)
    model = Twice()
    handle = perturbed(ParallelAdapterModel(model, modified_modules=["block.0", "block.2"], hooks_only=True))
    (delta,) = [e.delta for e in handle.entries]
    x = torch.randn(3, 8)
    with torch.no_grad():
        patched = model(x)
        handle.detach()  # the hand computation calls the layers directly
        fc1, act, fc2 = model.block

        def block(h):
            return fc2(act(fc1(h))) + delta(h)  # reads the input of *this* call

        assert torch.equal(patched, block(block(x) * 2))


def test_pairs_must_come_in_pairs():
    model = ZOO["bart"].build()
    with pytest.raises(ConfigError, match="pairs; got 3 selectors"):
        ParallelAdapterModel(model, modified_modules=["fc1", "fc2", "fc1"])
    with pytest.raises(SelectorError, match="match 4 modules but target selectors"):
        ParallelAdapterModel(model, modified_modules=["fc1", "encoder.layers.0.fc2"])
    assert BackboneState.find(model) is None  # nothing left behind
