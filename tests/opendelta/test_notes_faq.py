"""OpenDelta's docs/source/notes/faq.md, run on fxdelta.

Each answer names a failure and its fix; each test triggers the failure on a tiny model built from its
config class and checks that fxdelta's error says what the FAQ says, then applies the fix.
"""

import pytest
import torch
import torch.nn as nn
from od_tiny import tiny

import fxdelta
from fxdelta import AdapterModel, LoraModel, PrefixModel


def test_prefix_tuning_on_an_attention_without_a_prefix_layer():
    # OpenDelta raises NotImplementedError for attention classes it has no prefix layer for (DeBERTa-v2's)
    model = tiny("DebertaV2ForMaskedLM")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)prefix"):
        PrefixModel(model)
    assert fxdelta.delta_models(model) == {}


def test_no_default_configuration_for_the_model():
    model = tiny("AlbertForMaskedLM")  # not among the families with a common structure mapping
    with pytest.raises(fxdelta.UnsupportedModelError, match="modified_modules"):
        LoraModel(model)
    # the fix: visualize, then name the modules
    delta_model = LoraModel(model, modified_modules=["query", "value"])
    layer = "albert.encoder.albert_layer_groups.0.albert_layers.0"  # ALBERT shares one layer's weights
    assert delta_model.targets == [f"{layer}.attention.query", f"{layer}.attention.value"]


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)

    def forward(self, features, scale):
        return self.proj(features) * scale


def test_set_dummy_inputs_before_initializing():
    backbone_model = TwoInputs()
    some_dummy_inputs = {"features": torch.randn(2, 4), "scale": torch.tensor(2.0)}
    backbone_model.dummy_inputs = some_dummy_inputs  # the FAQ's fix, as written there
    delta_model = AdapterModel(backbone_model, modified_modules=["proj"], bottleneck_dim=2)
    assert delta_model.targets == ["proj"]
    assert delta_model.num_parameters() == 2 * 6 * 2 + 2 + 6
