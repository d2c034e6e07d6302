"""OpenDelta's docs/source/notes/deltacenter.md (and custom.md's step 5, option 3), run on fxdelta.

DeltaCenter is a web service: fxdelta only reads and writes local folders, so both snippets must fail with
a clear fxdelta error that leaves the backbone as it was. Models: tiny ``T5ForConditionalGeneration`` /
``BartForSequenceClassification`` built from their config classes.
"""

import pytest
import torch
from od_tiny import ids, tiny

import fxdelta
from fxdelta import AdapterModel, AutoDeltaModel


def test_share_to_delta_center(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny("BartForSequenceClassification", num_labels=3)
    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported|local"):
        delta_model.save_finetuned("test_delta_model", push_to_dc=True)
    assert delta_model.attached


def test_download_from_delta_center():
    t5 = tiny("T5ForConditionalGeneration")
    inputs = dict(input_ids=ids(), decoder_input_ids=ids(seq=4))
    before = t5(**inputs).logits
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)\b(local|folder)"):
        AutoDeltaModel.from_finetuned("thunlp/Spelling_Correction_T5_LRAdapter_demo", backbone_model=t5)
    assert torch.equal(t5(**inputs).logits, before)
