"""OpenDelta's docs/source/notes/pluginunplug.md, run on fxdelta.

Two changes: ``from fxdelta import ...`` and facebook/bart-base built as a tiny
``BartForSequenceClassification`` (what AutoModelForSequenceClassification gives) from its config class.
"""

import io

import torch
from od_tiny import ids, perturb, tiny

from fxdelta import AdapterModel, LoraModel


def logged(delta_model):
    out = io.StringIO()
    delta_model.log(file=out)
    return out.getvalue()


def test_multitask_serving_attach_and_detach():
    model = tiny("BartForSequenceClassification", num_labels=3)
    base = model(input_ids=ids()).logits
    delta_model = LoraModel(backbone_model=model, modified_modules=["fc2"])
    assert "deltas (lora)" in logged(delta_model)
    perturb(delta_model.parameters())
    with_lora = model(input_ids=ids()).logits
    assert not torch.allclose(with_lora, base)

    delta_model.detach()
    assert "deltas (lora)" not in logged(delta_model)
    assert torch.equal(model(input_ids=ids()).logits, base)

    delta_model.attach()
    assert "deltas (lora)" in logged(delta_model)
    assert torch.equal(model(input_ids=ids()).logits, with_lora)


def test_independence_of_different_delta_models():
    model = tiny("BartForSequenceClassification", num_labels=3)
    base = model(input_ids=ids()).logits
    delta_model = LoraModel(backbone_model=model, modified_modules=["fc2"])
    perturb(delta_model.parameters())
    with_lora = model(input_ids=ids()).logits

    delta_model2 = AdapterModel(backbone_model=model, modified_modules=["fc1"])
    perturb(delta_model2.parameters(), seed=8)
    log = logged(delta_model2)
    assert "deltas (lora)" in log and "deltas (adapter)" in log
    both = model(input_ids=ids()).logits

    delta_model.detach()  # detach the lora delta
    log = logged(delta_model)
    assert "deltas (lora)" not in log and "deltas (adapter)" in log
    only_adapter = model(input_ids=ids()).logits
    assert not torch.allclose(only_adapter, both) and not torch.allclose(only_adapter, base)

    delta_model2.detach()  # detach the adapter delta
    delta_model.attach()  # reattach the lora delta
    log = logged(delta_model)
    assert "deltas (lora)" in log and "deltas (adapter)" not in log
    assert torch.equal(model(input_ids=ids()).logits, with_lora)
