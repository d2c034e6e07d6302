"""OpenDelta's docs/source/notes/namebasedaddr.md, run on fxdelta.

Two changes: ``opendelta`` / ``bigmodelvis`` become ``fxdelta``, and the pretrained models are tiny ones
built from config classes: "DistilBert with a classifier" is ``DistilBertForSequenceClassification``,
"RoBERTa with a classifier" ``RobertaForSequenceClassification``, bert-base-cased ``BertForMaskedLM``.
The page gives the selectors of its end-matching and regex examples without a delta method; an adapter
(the page's own method) applies them here.
"""

import io
import json

import pytest
import torch.nn as nn
from od_tiny import tiny

import fxdelta
from fxdelta import AdapterModel, AutoDeltaConfig, AutoDeltaModel, LoraModel, Visualization


class MyNet1(nn.Module):
    def __init__(
        self,
    ):
        super().__init__()
        self.name_a = nn.Linear(5, 5)

    def forward(self, hiddens):
        return self.name_a(hiddens)


class MyNet2(nn.Module):
    def __init__(
        self,
    ):
        super().__init__()
        self.embedding = nn.Embedding(10, 5)
        self.name_b = nn.Sequential(MyNet1(), MyNet1())

    def forward(self, input_ids):
        hiddens = self.embedding(input_ids)
        return self.name_b(hiddens)


def test_name_of_a_submodule(capsys):
    root = MyNet2()
    print(root.name_b[0].name_a)
    assert "Linear(in_features=5, out_features=5, bias=True)" in capsys.readouterr().out
    Visualization(root).structure_graph()
    assert "name_a (Linear)" in capsys.readouterr().out

    delta_model = AdapterModel(backbone_model=root, modified_modules=["name_b.0.name_a"])
    Visualization(root).structure_graph()
    assert "deltas (adapter)" in capsys.readouterr().out
    assert delta_model.targets == ["name_b.0.name_a"]  # only the first MyNet1's linear


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("0.attention.out_lin", ["distilbert.transformer.layer.0.attention.out_lin"]),
        ("attention.out_lin", [f"distilbert.transformer.layer.{i}.attention.out_lin" for i in range(2)]),
    ],
)
def test_end_matching_distilbert(selector, expected):
    model = tiny("DistilBertForSequenceClassification")
    delta_model = AdapterModel(backbone_model=model, modified_modules=[selector])
    assert delta_model.targets == expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        # (\d)+ matches any layer number: every roberta.encoder.layer.$.output.dense, not the attention's
        (r"[r](\d)+\.output.dense", [f"roberta.encoder.layer.{i}.output.dense" for i in range(2)]),
        # layers 0-5 of the attention submodules (the tiny model has layers 0 and 1)
        (r"[r][0-5]\.attention", [f"roberta.encoder.layer.{i}.attention" for i in range(2)]),
        # a plain tail: the page says "only layer 0", but OpenDelta's end-matching (and fxdelta's) takes every layer
        ("attention.output.dense", [f"roberta.encoder.layer.{i}.attention.output.dense" for i in range(2)]),
    ],
)
def test_regular_expression_roberta(selector, expected):
    model = tiny("RobertaForSequenceClassification")
    delta_model = AdapterModel(backbone_model=model, modified_modules=[selector])
    assert delta_model.targets == expected


def test_regex_in_json_configs():
    # In JSON a real dot is written "\\." (the page's snippet misspells the key as "modified_moduls")
    text = '{"delta_type": "adapter", "modified_modules": ["[r][0-5]\\\\.attention"]}'
    config = json.loads(text)
    assert config["modified_modules"] == [r"[r][0-5]\.attention"]
    model = tiny("RobertaForSequenceClassification")
    delta_model = AutoDeltaModel.from_config(AutoDeltaConfig.from_dict(config), backbone_model=model)
    assert delta_model.targets == [f"roberta.encoder.layer.{i}.attention" for i in range(2)]


def test_interactive_selection():
    model = tiny("BertForMaskedLM")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported"):
        LoraModel(backbone_model=model, interactive_modify=True)
    Visualization(model).structure_graph(file=io.StringIO())  # the backbone is untouched
    assert fxdelta.delta_models(model) == {}
