"""OpenDelta's docs/source/notes/autodelta.md, run on fxdelta.

Two changes: ``opendelta`` / ``bigmodelvis`` become ``fxdelta``, and t5-base / t5-large are tiny
``T5ForConditionalGeneration`` models built from the config class (the page's ``Visualizaiton`` typo
is spelled right here).
"""

import io

import pytest
import torch
from od_tiny import ids, perturb, tiny

import fxdelta
from fxdelta import AutoDeltaConfig, AutoDeltaModel, LoraModel, Visualization


def test_load_from_dict():
    backbone_model = tiny("T5ForConditionalGeneration")
    config_dict = {
        "delta_type": "lora",
        "modified_modules": ["SelfAttention.q", "SelfAttention.v", "SelfAttention.o"],
        "lora_r": 4,
    }
    delta_config = AutoDeltaConfig.from_dict(config_dict)
    delta_model = AutoDeltaModel.from_config(delta_config, backbone_model=backbone_model)
    out = io.StringIO()
    Visualization(backbone_model).structure_graph(file=out)
    assert "deltas (lora)" in out.getvalue()

    assert isinstance(delta_model, LoraModel)
    expected = [n for n, _ in backbone_model.named_modules() if n.endswith(("SelfAttention.q", "SelfAttention.v"))]
    expected += [n for n, _ in backbone_model.named_modules() if n.endswith("SelfAttention.o")]
    assert sorted(delta_model.targets) == sorted(expected) and len(expected) == 12  # 4 blocks x q, v, o
    assert {tuple(p.shape) for _, p in delta_model.named_parameters()} == {(4, 32), (32, 4)}


def test_fast_deploy_from_delta_center():
    t5 = tiny("T5ForConditionalGeneration")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)\b(local|folder)"):
        AutoDeltaModel.from_finetuned("thunlp/Spelling_Correction_T5_LRAdapter_demo", backbone_model=t5)
    assert fxdelta.delta_models(t5) == {}


def test_hash_check_can_be_disabled(tmp_path):
    trained = tiny("T5ForConditionalGeneration")
    delta = LoraModel(trained)
    perturb(delta.parameters())
    delta.save_finetuned(tmp_path / "delta")
    t5 = tiny("T5ForConditionalGeneration")
    AutoDeltaModel.from_finetuned(tmp_path / "delta", backbone_model=t5, check_hash=False)
    inputs = dict(input_ids=ids(), decoder_input_ids=ids(seq=4))
    assert torch.equal(t5(**inputs).logits, trained(**inputs).logits)
