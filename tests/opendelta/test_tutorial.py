"""OpenDelta's examples/tutorial/*.py, run on fxdelta.

Two changes: ``opendelta`` (and ``bigmodelvis``, whose ``Visualization`` fxdelta provides) becomes
``fxdelta``, and each ``from_pretrained`` model is the same class built tiny from its config class
(AutoModelForSequenceClassification of bart-base / roberta-base gives ``BartForSequenceClassification`` /
``RobertaForSequenceClassification``; OpenPrompt's ``load_plm("t5", "t5-base")`` a ``T5ForConditionalGeneration``).
"""

import io

import pytest
import torch
from od_tiny import ids, tiny, trainable

import fxdelta
from fxdelta import (
    AdapterModel,
    BitFitModel,
    CompacterModel,
    LoraModel,
    LowRankAdapterModel,
    ParallelAdapterModel,
    Visualization,
)


def test_tutorial_0_basic(capsys):
    model = tiny("BartForSequenceClassification", num_labels=3)
    before = model(input_ids=ids()).logits

    print("before modify")
    Visualization(model).structure_graph()
    assert "fc2 (Linear)" in capsys.readouterr().out

    delta_model = LoraModel(backbone_model=model, modified_modules=["fc2"])
    print("after modify")
    delta_model.log()
    assert "deltas (lora)" in capsys.readouterr().out
    fc2 = sorted(n for n, _ in model.named_modules() if n.endswith(".fc2"))
    assert sorted(delta_model.targets) == fc2 and len(fc2) == 4  # every encoder and decoder layer
    assert torch.equal(model(input_ids=ids()).logits, before)  # LoRA starts at B = 0

    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"], set_state_dict=True)
    print("after freeze")
    delta_model.log()
    expected = {n for n, _ in model.named_parameters() if ".deltas." in n or "layernorm_embedding" in n}
    assert trainable(model) == expected
    assert set(model.state_dict()) == expected  # set_state_dict=True: only the trainable part


def test_tutorial_0_interactive():
    model = tiny("BertForMaskedLM")
    port = True  # the script's default when no port is given on the command line
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported"):
        LoraModel(backbone_model=model, interactive_modify=port)
    assert fxdelta.delta_models(model) == {}


def test_tutorial_0_regex():
    model = tiny("RobertaForSequenceClassification")
    Visualization(model).structure_graph(file=io.StringIO())

    delta_model = LoraModel(
        backbone_model=model, modified_modules=[r"[r](\d)+\.output.dense", "attention.output.dense"]
    )
    delta_model.log(file=io.StringIO())
    # OpenDelta's regex selectors are searched and must end the name on a dot boundary: (\d)+\.output.dense
    # picks every layer's FFN output dense (layer.$.output.dense), the plain one every attention output dense.
    ffn = [f"roberta.encoder.layer.{i}.output.dense" for i in range(2)]
    attention = [f"roberta.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert sorted(delta_model.targets) == sorted(ffn + attention)


def test_tutorial_1_with_openprompt_delta_lines():
    plm = tiny("T5ForConditionalGeneration")
    delta_model = LoraModel(backbone_model=plm, modified_modules=["SelfAttention.q", "SelfAttention.v"])
    delta_model.freeze_module(exclude=["deltas"], set_state_dict=True)
    delta_model.log(file=io.StringIO())
    expected = sorted(n for n, _ in plm.named_modules() if n.endswith(("SelfAttention.q", "SelfAttention.v")))
    assert sorted(delta_model.targets) == expected and len(expected) == 8  # 2 encoder + 2 decoder blocks
    assert trainable(plm) == {n for n, _ in delta_model.named_parameters()}
    assert set(plm.state_dict()) == trainable(plm)


class BertModel(torch.nn.Module):
    """The tutorial's classifier around a BERT (ModelCenter's ``Bert`` there; a tiny transformers BERT here)."""

    def __init__(self, num_types):
        super().__init__()
        self.bert = tiny("BertModel")
        self.dense = torch.nn.Linear(32, num_types)

    def forward(self, *args, **kwargs):
        pooler_output = self.bert(*args, **kwargs).pooler_output
        return self.dense(pooler_output)


BMT_DELTAS = {
    "lora": lambda model: LoraModel(backbone_model=model, modified_modules=["project_q", "project_k"], backend="bmt"),
    "bitfit": lambda model: BitFitModel(
        backbone_model=model, modified_modules=["self_att", "ffn", "layernorm"], backend="bmt"
    ),
    "adapter": lambda model: AdapterModel(backbone_model=model, modified_modules=["self_att", "ffn"], backend="bmt"),
    "compacter": lambda model: CompacterModel(
        backbone_model=model, modified_modules=["self_att", "ffn"], backend="bmt"
    ),
    "low_rank_adapter": lambda model: LowRankAdapterModel(
        backbone_model=model, modified_modules=["self_att", "ffn"], backend="bmt"
    ),
    "parallel_adapter": lambda model: ParallelAdapterModel(
        backbone_model=model, modified_modules=["self_att", "self_att", "ffn.ffn", "ffn.ffn"], backend="bmt"
    ),
}


@pytest.mark.parametrize("delta_type", sorted(BMT_DELTAS))
def test_tutorial_2_with_bmtrain_backend(delta_type):
    model = BertModel(num_types=2)
    Visualization(model).structure_graph(file=io.StringIO())
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported"):
        BMT_DELTAS[delta_type](model)
    assert fxdelta.delta_models(model) == {}
