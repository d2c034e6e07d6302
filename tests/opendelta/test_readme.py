"""OpenDelta's README.md, section "Must Try", run on fxdelta.

Two changes from the README: ``from fxdelta import ...`` and ``t5-large`` built as a tiny
``T5ForConditionalGeneration`` from its config class (AutoModelForSeq2SeqLM gives that class).
Generated ids stand in for the decoded strings the README prints.
"""

import os
import re
import shutil

import pytest
import torch
from od_tiny import WrappedModel, ids, perturb, tiny, trainable

import fxdelta
from fxdelta import AutoDeltaConfig, AutoDeltaModel, LowRankAdapterModel


def generate(model):
    return model.generate(ids(1, seed=5), max_new_tokens=5, do_sample=False)


def test_readme_must_try_from_delta_center():
    t5 = tiny("T5ForConditionalGeneration")
    before = generate(t5)
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)\b(local|folder)"):
        AutoDeltaModel.from_finetuned("thunlp/Spelling_Correction_T5_LRAdapter_demo", backbone_model=t5)
    assert torch.equal(generate(t5), before)  # a failed load leaves the backbone alone
    assert fxdelta.delta_models(t5) == {}


def _published_delta(directory):
    """Stands in for the DeltaCenter checkpoint (a trained low-rank adapter on T5): one saved locally."""
    donor = tiny("T5ForConditionalGeneration")
    delta = LowRankAdapterModel(donor)
    perturb(delta.parameters(), std=2.0)
    delta.save_finetuned(directory)


def test_readme_must_try_freeze_save_reload_detach(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _published_delta(tmp_path / "published")
    t5 = tiny("T5ForConditionalGeneration")
    unmodified = generate(t5)

    delta = AutoDeltaModel.from_finetuned(tmp_path / "published", backbone_model=t5)
    delta.freeze_module()
    delta.log()
    assert trainable(t5) == {n for n, _ in delta.named_parameters()}  # only the delta trains
    corrected = generate(t5)
    assert not torch.equal(corrected, unmodified)

    delta.save_finetuned(".tmp")
    files = os.listdir(".tmp")
    assert files  # the README lists the folder: only the delta's own files are there
    saved = sum(os.path.getsize(os.path.join(".tmp", f)) for f in files)
    assert saved < sum(p.numel() * p.element_size() for p in t5.parameters()) / 5

    t5 = tiny("T5ForConditionalGeneration")
    delta1 = AutoDeltaModel.from_finetuned(".tmp", backbone_model=t5)
    shutil.rmtree(".tmp")
    assert torch.equal(generate(t5), corrected)

    delta1.detach()
    assert torch.equal(generate(t5), unmodified)


def test_readme_must_try_wrapped_model_default_lora():
    t5 = tiny("T5ForConditionalGeneration")
    before = t5(input_ids=ids(), decoder_input_ids=ids(seq=4)).logits
    wrapped_model = WrappedModel(WrappedModel(t5))

    delta_config = AutoDeltaConfig.from_dict({"delta_type": "lora"})
    delta2 = AutoDeltaModel.from_config(delta_config, backbone_model=wrapped_model)
    delta2.log()
    # root -- inner -- inner -- ... q / v ... lora_A:[8, d], lora_B:[d, 8]
    assert delta2.targets and all(t.startswith("inner.inner.") for t in delta2.targets)
    assert all(t.endswith((".q", ".v")) for t in delta2.targets)
    self_qv = {n for n, _ in t5.named_modules() if re.search(r"SelfAttention\.[qv]$", n)}
    assert {f"inner.inner.{n}" for n in self_qv} <= set(delta2.targets)
    shapes = {n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in delta2.named_parameters()}
    assert shapes == {"lora_A": (8, 32), "lora_B": (32, 8)}

    delta2.detach()
    assert torch.equal(wrapped_model(input_ids=ids(), decoder_input_ids=ids(seq=4)).logits, before)


def test_readme_must_try_wrapped_model_regex_lora_r5():
    t5 = tiny("T5ForConditionalGeneration", num_layers=24)  # t5-large has 24 blocks; the regex picks 20-23
    wrapped_model = WrappedModel(WrappedModel(t5))

    delta_config3 = AutoDeltaConfig.from_dict(
        {
            "delta_type": "lora",
            "modified_modules": [r"[r]decoder.*((20)|(21)|(22)|(23)).*DenseReluDense\.wi"],
            "lora_r": 5,
        }
    )
    delta3 = AutoDeltaModel.from_config(delta_config3, backbone_model=wrapped_model)
    delta3.log()
    assert delta3.targets == [f"inner.inner.decoder.block.{i}.layer.2.DenseReluDense.wi" for i in (20, 21, 22, 23)]
    assert {tuple(p.shape) for n, p in delta3.named_parameters() if n.endswith("lora_A")} == {(5, 32)}
