"""OpenDelta's examples/unittest/*.py, run on fxdelta.

must_try.py repeats the README's "Must Try" (tests/opendelta/test_readme.py); only what it adds is here.
Two changes: ``opendelta`` becomes ``fxdelta``, and each ``from_pretrained`` model is the same class
built tiny from its config class (t5-large: ``T5ForConditionalGeneration``; ``AutoModel`` of bert-base-cased:
``BertModel``, with hidden size 64 so that every default hyper-parameter fits). must_try.py's
``transformers.AdamW`` no longer exists; ``torch.optim.AdamW`` is the same optimizer.
"""

import copy
import io

import pytest
import torch
import torch.nn as nn
from od_tiny import WrappedModel, ids, perturb, tiny, trainable

import fxdelta
from fxdelta import AutoDeltaConfig, AutoDeltaModel, Visualization


def test_must_try_freeze_and_inspect_optimizer():
    t5 = tiny("T5ForConditionalGeneration", num_layers=24)  # the regex names blocks 20-23 of t5-large
    wrapped_model = WrappedModel(WrappedModel(t5))
    delta_config3 = AutoDeltaConfig.from_dict(
        {
            "delta_type": "lora",
            "modified_modules": [r"[r]decoder.*((20)|(21)|(22)|(23)).*DenseReluDense\.wi"],
            "lora_r": 5,
        }
    )
    delta3 = AutoDeltaModel.from_config(delta_config3, backbone_model=wrapped_model)
    delta3.freeze_module()
    delta3.log(file=io.StringIO())
    assert trainable(wrapped_model) == {n for n, _ in delta3.named_parameters()}

    optimizer = torch.optim.AdamW(wrapped_model.parameters(), lr=3e-3)

    from fxdelta.utils.inspect import inspect_optimizer_statistics

    stat = inspect_optimizer_statistics(optimizer)
    assert stat["total_parameters"] == sum(p.numel() for p in wrapped_model.parameters())
    assert stat["trainable_parameters"] == delta3.num_parameters() == 4 * 5 * (32 + 48)
    assert stat["lr"] == 3e-3


def test_parallel_adapter_on_wrapped_t5():
    t5 = tiny("T5ForConditionalGeneration")
    inputs = dict(input_ids=ids(), decoder_input_ids=ids(seq=4))
    before = t5(**inputs).logits
    wrapped_model = WrappedModel(WrappedModel(t5))

    delta_config = AutoDeltaConfig.from_dict({"delta_type": "parallel_adapter"})
    delta2 = AutoDeltaModel.from_config(delta_config, backbone_model=wrapped_model)
    out = io.StringIO()
    delta2.log(file=out)
    assert "parallel_adapter" in out.getvalue()
    # the log's tree: a parallel adapter in every block's attention layer and one across each DenseReluDense
    for stack in ("encoder", "decoder"):
        for block in range(2):
            prefix = f"inner.inner.{stack}.block.{block}.layer."
            assert any(t.startswith(prefix + "0") for t in delta2.targets)
            assert any(".DenseReluDense" in t and t.startswith(prefix) for t in delta2.targets)
    perturb(delta2.parameters())
    assert not torch.allclose(wrapped_model(**inputs).logits, before)

    delta2.detach()
    out = io.StringIO()
    delta2.log(file=out)
    assert "deltas (parallel_adapter)" not in out.getvalue()
    assert torch.equal(wrapped_model(**inputs).logits, before)


# user_defined.py: UnitTest.Configs, by config_id
CONFIGS = {
    0: {"delta_type": "lora"},
    1: {"delta_type": "bitfit"},
    2: {"delta_type": "adapter"},
    3: {"delta_type": "compacter"},
    4: {"delta_type": "prefix"},
    5: {"delta_type": "soft_prompt"},
    6: {"delta_type": "low_rank_adapter"},
}


def bert_base_cased():
    return tiny("BertModel", hidden_size=64, intermediate_size=96)


@pytest.mark.parametrize("config_id", sorted(CONFIGS))
def test_user_defined_unit_test_0(config_id):
    model = bert_base_cased()
    models = [model, copy.deepcopy(model)]
    model = models[0]
    Visualization(model).structure_graph(file=io.StringIO())

    delta_config = AutoDeltaConfig.from_dict(CONFIGS[config_id])
    delta_model = AutoDeltaModel.from_config(delta_config, backbone_model=model)

    out = io.StringIO()
    Visualization(model).structure_graph(file=out)
    assert f"deltas ({delta_config.delta_type})" in out.getvalue()
    if delta_config.delta_type != "soft_prompt":  # a soft prompt sits in front of the embeddings
        for layer in range(2):
            assert any(t.startswith(f"encoder.layer.{layer}.") for t in delta_model.targets)
    assert delta_model.num_parameters() > 0
    assert not fxdelta.delta_models(models[1])  # the copy is another backbone


class Mymodel(nn.Module):  # user_defined.py's container of two backbones, as written there (no forward)
    def __init__(self, a, b):
        super().__init__()
        self.a = a
        self.b = b


@pytest.mark.parametrize("config_id", sorted(CONFIGS))
def test_user_defined_unit_test_1(config_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = [bert_base_cased(), bert_base_cased()]
    model = Mymodel(models[0], models[1])
    Visualization(model).structure_graph(file=io.StringIO())
    delta_config = AutoDeltaConfig.from_dict(CONFIGS[config_id])
    if delta_config.delta_type == "soft_prompt":
        # OpenDelta's SoftPromptModel needs the backbone's get_input_embeddings(), which Mymodel has not
        with pytest.raises(fxdelta.FxDeltaError):
            AutoDeltaModel.from_config(delta_config, backbone_model=model)
        return

    delta_model = AutoDeltaModel.from_config(delta_config, backbone_model=model)
    Visualization(model).structure_graph(file=io.StringIO())
    assert any(t.startswith("a.") for t in delta_model.targets)  # both backbones inside get their deltas
    assert any(t.startswith("b.") for t in delta_model.targets)
    delta_model.save_finetuned("./tmp")

    delta_model.freeze_module(exclude=["deltas"])
    perturb(delta_model.parameters())
    delta_model.save_finetuned("./tmp")
    x = ids()
    expected = [model.a(input_ids=x).last_hidden_state, model.b(input_ids=x).last_hidden_state]

    model = Mymodel(bert_base_cased(), bert_base_cased())  # from_pretrained again: the same weights
    Visualization(model).structure_graph(file=io.StringIO())
    delta_model2 = AutoDeltaModel.from_finetuned("./tmp", backbone_model=model)
    Visualization(model).structure_graph(file=io.StringIO())
    assert delta_model2.targets == delta_model.targets
    assert torch.equal(model.a(input_ids=x).last_hidden_state, expected[0])
    assert torch.equal(model.b(input_ids=x).last_hidden_state, expected[1])
