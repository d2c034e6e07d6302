"""OpenDelta's docs/source/notes/saveload.md, run on fxdelta.

The page was removed from OpenDelta's docs in commit 3307f40 ("improve doc"); this ports its last version
(3307f40^). Two changes: ``from fxdelta import ...`` and bert-base-uncased / t5-base built as tiny
``BertForMaskedLM`` (hidden size 64, so that Compacter's default reduction factor 16 and division 4 fit) /
``T5ForConditionalGeneration`` models from their config classes.
"""

import os

import pytest
import torch
from od_tiny import ids, perturb, tiny, trainable

import fxdelta
from fxdelta import AutoDeltaModel, CompacterModel


def bert_base_uncased():
    return tiny("BertForMaskedLM", hidden_size=64, intermediate_size=96)


def compacter_on_bert(set_state_dict):
    backbone_model = bert_base_uncased()
    delta_model = CompacterModel(backbone_model)  # modify the default modules
    if set_state_dict:
        delta_model.freeze_module(exclude=["deltas"], set_state_dict=True)
    else:  # the page's "# or"
        delta_model.freeze_module(exclude=["deltas"])
    perturb(delta_model.parameters())  # "after some training pipeline"
    return backbone_model, delta_model


@pytest.mark.parametrize("set_state_dict", [True, False], ids=["set_state_dict", "plain"])
def test_space_efficient_saving_without_changing_the_code(tmp_path, set_state_dict):
    backbone_model, delta_model = compacter_on_bert(set_state_dict)
    assert trainable(backbone_model) == {n for n, _ in delta_model.named_parameters()}
    torch.save(backbone_model.state_dict(), tmp_path / "delta.ckpt")
    size = os.path.getsize(tmp_path / "delta.ckpt")
    print(f"checkpoint size: {size / 1024**2:.2f}M")
    assert set(torch.load(tmp_path / "delta.ckpt")) == trainable(backbone_model)
    assert size < sum(p.numel() * p.element_size() for p in backbone_model.parameters()) / 4

    fresh = bert_base_uncased()
    CompacterModel(fresh)  # the backbone must be a modified one to take the delta parameters
    _ = fresh.load_state_dict(torch.load(tmp_path / "delta.ckpt"), strict=False)
    assert torch.equal(fresh(input_ids=ids()).logits, backbone_model(input_ids=ids()).logits)


def test_save_and_load_a_delta_model(tmp_path):
    backbone_model, delta_model = compacter_on_bert(set_state_dict=True)
    delta_model.save_finetuned(tmp_path / "delta_model")
    assert os.listdir(tmp_path / "delta_model")

    fresh = bert_base_uncased()
    delta_model.from_finetuned(tmp_path / "delta_model", fresh, local_files_only=True)
    assert torch.equal(fresh(input_ids=ids()).logits, backbone_model(input_ids=ids()).logits)
    assert set(fxdelta.delta_models(fresh)) == {"compacter"}


def test_share_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, delta_model = compacter_on_bert(set_state_dict=True)
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported|local"):
        delta_model.save_finetuned("test_delta_model", push_to_hub=True)


def test_download_from_the_community():
    t5 = tiny("T5ForConditionalGeneration")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)\b(local|folder)"):
        AutoDeltaModel.from_finetuned("DeltaHub/lora_t5-base_mrpc", backbone_model=t5)
    assert fxdelta.delta_models(t5) == {}
