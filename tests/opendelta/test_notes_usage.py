"""OpenDelta's docs/source/notes/usage.md ("Basic Usage"), run on fxdelta.

Two changes: ``opendelta`` becomes ``fxdelta``, and facebook/bart-base / bert-base-cased are tiny
``BartForSequenceClassification`` / ``BertForMaskedLM`` models built from their config classes.
(visualization.md shows the same LowRankAdapter-on-BERT snippet as inspect.md: see test_notes_inspect.py.)
"""

import io

import torch
from od_tiny import ids, tiny, trainable, under

from fxdelta import AdapterModel, Visualization


def test_step_2_1_modification_based_on_visualization():
    model = tiny("BartForSequenceClassification", num_labels=3)
    out = io.StringIO()
    Visualization(model).structure_graph(file=out)
    assert "fc2 (Linear)" in out.getvalue()
    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    delta_model.log(file=io.StringIO())
    assert delta_model.targets == [f"model.{s}.layers.{i}.fc2" for s in ("encoder", "decoder") for i in range(2)]
    assert all(p.shape[0] == 12 or p.shape[-1] == 12 for n, p in delta_model.named_parameters() if "weight" in n)


def test_step_2_2_default_modification_on_bert():
    model = tiny("BertForMaskedLM")
    before = model(input_ids=ids()).logits
    delta_model = AdapterModel(model)  # "applies adapter to the self-attn and feed-forward layer"
    delta_model.log(file=io.StringIO())
    assert delta_model.targets == [
        f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output.dense", "output.dense")
    ]
    assert torch.equal(model(input_ids=ids()).logits, before)  # an adapter starts as the identity


def test_try_different_positions_and_step_3_freezing():
    model = tiny("BartForSequenceClassification", num_labels=3)
    delta_model = AdapterModel(backbone_model=model, modified_modules=["final_layer_norm"], bottleneck_dim=12)
    assert delta_model.targets == [
        f"model.{s}.layers.{i}.final_layer_norm" for s in ("encoder", "decoder") for i in range(2)
    ]
    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"], set_state_dict=True)
    expected = {n for n, _ in model.named_parameters() if under(n, ["deltas", "layernorm_embedding"])}
    assert trainable(model) == expected
    assert set(model.state_dict()) == expected  # "maintaining only the trainable parts"
