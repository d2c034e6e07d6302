"""OpenDelta's docs/source/notes/composition.md, run on fxdelta.

Two changes: ``from fxdelta import ...`` and roberta-base / bart-base built as tiny
``RobertaForSequenceClassification`` / ``BartForSequenceClassification`` from their config classes.
"""

import io

import torch
import torch.nn.functional as F
from od_tiny import ids, perturb, tiny

import fxdelta
from fxdelta import AdapterModel, LoraModel, LowRankAdapterModel


def test_add_different_deltas_to_the_backbone():
    model = tiny("RobertaForSequenceClassification")
    delta_model = LoraModel(backbone_model=model, modified_modules=["key"], lora_r=1)
    delta_model2 = AdapterModel(backbone_model=model, modified_modules=["output"], bottleneck_dim=12)
    out = io.StringIO()
    delta_model.log(file=out)
    assert "deltas (lora)" in out.getvalue() and "deltas (adapter)" in out.getvalue()  # the log shows both

    assert delta_model.targets == [f"roberta.encoder.layer.{i}.attention.self.key" for i in range(2)]
    assert {tuple(p.shape) for _, p in delta_model.named_parameters()} == {(1, 32), (32, 1)}  # lora_r=1
    # "output" ends both the attention's output block and the FFN's output block of every layer
    assert delta_model2.targets == [
        f"roberta.encoder.layer.{i}.{block}" for i in range(2) for block in ("attention.output", "output")
    ]
    assert set(fxdelta.delta_models(model)) == {"lora", "adapter"}


def _capture(model, layer):
    """fc2's input and, through the residual sum final_layer_norm reads, fc2's output as the model uses it."""
    seen = {}
    layer_module = model.model.encoder.layers[layer]
    hooks = [
        layer_module.fc2.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        layer_module.self_attn_layer_norm.register_forward_hook(lambda m, a, out: seen.__setitem__("residual", out)),
        layer_module.final_layer_norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("sum", args[0])),
    ]
    model(input_ids=ids())
    for h in hooks:
        h.remove()
    return seen["x"], seen["sum"] - seen["residual"]


def test_multiple_deltas_on_the_same_layer():
    model = tiny("BartForSequenceClassification", num_labels=3)
    before = model(input_ids=ids()).logits
    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"])
    delta_model2 = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    delta_model3 = LowRankAdapterModel(backbone_model=model, modified_modules=["fc2"], reduction_factor=12)
    delta_model.log(file=io.StringIO())
    fc2 = sorted(n for n, _ in model.named_modules() if n.endswith(".fc2"))
    for d in (delta_model, delta_model2, delta_model3):
        assert sorted(d.targets) == fc2
    assert [delta_model.name, delta_model2.name, delta_model3.name] == ["adapter", "adapter_1", "low_rank_adapter"]
    for d in (delta_model, delta_model2, delta_model3):
        perturb(d.parameters(), std=0.3)

    # Order of insertion: after fc2, the tensor goes through adapter, then adapter_1, then the low-rank adapter
    with torch.no_grad():
        x, used = _capture(model, 0)
        target = model.model.encoder.layers[0].fc2
        h = F.linear(x, target.weight, target.bias)
        for name in ("adapter", "adapter_1", "low_rank_adapter"):
            h = h + target.get_submodule(f"deltas.{name}")(h)
        assert torch.allclose(used, h, atol=1e-5)

    # Detaching in reverse order of adding (the page's advice) gives the backbone back
    for d in (delta_model3, delta_model2, delta_model):
        d.detach()
    assert torch.equal(model(input_ids=ids()).logits, before)
