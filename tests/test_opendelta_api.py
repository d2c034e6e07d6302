"""The OpenDelta-shaped API: its keyword arguments, what fxdelta refuses, and that refusing changes nothing."""

import warnings

import pytest
import torch
import transformers

import fxdelta
from fxdelta import AdapterConfig, AutoDeltaConfig, AutoDeltaModel, LoraConfig, LoraModel

from zoo import ZOO


def bert():
    torch.manual_seed(0)
    return ZOO["bert"].build().eval()


def classifier(num_labels):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    config.num_labels = num_labels
    return transformers.BertForSequenceClassification(config).eval()


def perturb(handle):
    with torch.no_grad():
        for p in handle.parameters():
            p.normal_()


IDS = torch.arange(1, 9).unsqueeze(0)


def test_from_dict_drops_script_keys_with_a_warning_and_suggests_close_fields():
    with pytest.warns(fxdelta.FxDeltaWarning, match=r"'do_test'.*'lora_rr' \(did you mean 'lora_r'\?\)"):
        config = AutoDeltaConfig.from_dict({"delta_type": "lora", "do_test": True, "lora_rr": 4})
    assert config == LoraConfig()  # the typo is dropped, not applied: the warning is what shows it


def test_constructors_and_config_classes_stay_strict():
    with pytest.raises(fxdelta.ConfigError, match="lora_rr"):
        LoraModel(bert(), lora_rr=4)
    with pytest.raises(fxdelta.ConfigError, match="do_test"):
        fxdelta.compile(bert(), {"delta_type": "lora", "do_test": True})


def test_none_in_a_script_dict_means_the_default():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = AutoDeltaConfig.from_dict({"delta_type": "lora", "lora_r": None, "unfrozen_modules": None})
    assert config.lora_r == LoraConfig().lora_r and config.unfrozen_modules == ("deltas",)


@pytest.mark.parametrize(
    ("key", "value", "fine"),
    [("backend", "bmt", "hf"), ("interactive_modify", True, False), ("interactive_modify", 8888, False)],
)
def test_options_fxdelta_lacks_are_refused_at_any_other_value(key, value, fine):
    model = bert()
    before = model.state_dict()
    with pytest.raises(fxdelta.ConfigError, match=f"{key}={value!r} is not supported"):
        LoraModel(model, **{key: value})
    with pytest.raises(fxdelta.ConfigError, match="not supported"):
        AutoDeltaConfig.from_dict({"delta_type": "adapter", key: value})
    assert fxdelta.delta_models(model) == {} and model.state_dict().keys() == before.keys()
    assert LoraModel(model, **{key: fine}).targets  # the usual value is accepted


@pytest.mark.parametrize(
    "option", [{"push_to_dc": True}, {"push_to_hub": True}, {"save_function": torch.save}, {"save_config": False}]
)
def test_save_options_fxdelta_does_not_do_write_nothing(option, tmp_path):
    handle = LoraModel(bert())
    with pytest.raises(fxdelta.FxDeltaError):
        handle.save_finetuned(tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()


def test_save_takes_a_state_dict_and_loading_takes_it_back(tmp_path):
    model = bert()
    handle = LoraModel(model)
    handle.freeze_module()
    perturb(handle)
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # trimmed: the delta's tensors
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        for p in handle.parameters():
            p.zero_()  # the live delta differs from the state_dict handed in
    handle.save_finetuned(tmp_path / "ckpt", state_dict=saved)
    fresh = bert()
    LoraModel.from_finetuned(tmp_path / "ckpt", fresh)
    assert torch.equal(fresh(input_ids=IDS).logits, expected)
    other = bert()
    LoraModel.from_finetuned(tmp_path / "ckpt", other, state_dict={k: v * 0 for k, v in saved.items()})
    assert torch.equal(other(input_ids=IDS).logits, bert()(input_ids=IDS).logits)  # zero LoRA B: identity
    with pytest.raises(fxdelta.CheckpointError, match="lacks"):
        handle.save_finetuned(tmp_path / "bad", state_dict={})


def test_from_finetuned_everywhere_and_its_checks(tmp_path):
    handle = LoraModel(classifier(2), lora_r=4)
    perturb(handle)
    handle.save_finetuned(finetuned_delta_path=tmp_path / "ckpt")
    assert LoraConfig.from_finetuned(tmp_path / "ckpt", cache_dir="x", force_download=True) == handle.config
    with pytest.raises(fxdelta.CheckpointError, match="'lora' delta, not 'adapter'"):
        AdapterConfig.from_finetuned(tmp_path / "ckpt")
    fresh = classifier(2)
    with pytest.raises(fxdelta.CheckpointError, match="AutoDeltaModel"):
        fxdelta.AdapterModel.from_finetuned(tmp_path / "ckpt", fresh)
    loaded = handle.from_finetuned(tmp_path / "ckpt", fresh, local_files_only=True)  # on an instance, too
    assert type(loaded) is LoraModel and loaded.config.lora_r == 4
    # another head: another fingerprint, refused unless the hash check is off; the LoRA targets are the same
    with pytest.raises(fxdelta.CheckpointError):
        AutoDeltaModel.from_finetuned(tmp_path / "ckpt", classifier(3))
    assert AutoDeltaModel.from_finetuned(tmp_path / "ckpt", classifier(3), check_hash=False).targets == handle.targets


def test_a_hub_id_says_local_folders_only():
    with pytest.raises(fxdelta.CheckpointError, match="local folders only"):
        AutoDeltaModel.from_finetuned("thunlp/lora_t5-base_mrpc", backbone_model=bert())


def test_freeze_module_trims_by_default_and_a_second_call_keeps_the_trim_unless_asked():
    model = bert()
    handle = LoraModel(model)
    handle.freeze_module()
    delta_keys = set(handle.state_dict())
    assert set(model.state_dict()) == delta_keys
    handle.freeze_module(exclude=["deltas", "LayerNorm"])
    assert set(model.state_dict()) > delta_keys and all(
        k in delta_keys or ".LayerNorm." in k for k in model.state_dict()
    )
    handle.freeze_module(exclude=["deltas"], set_state_dict=False)
    assert set(model.state_dict()) == set(bert().state_dict()) | delta_keys


def test_freeze_module_within_a_module():
    model = bert()
    handle = LoraModel(model)
    layer0 = model.bert.encoder.layer[0]
    handle.freeze_module(module=layer0, exclude=["deltas"], set_state_dict=False)
    frozen = set(handle.frozen_parameters_names())
    assert frozen and all(n.startswith("bert.encoder.layer.0.") for n in frozen)
    assert handle.trainable_parameters_names(layer0) == [n for n, _ in layer0.named_parameters() if "deltas" in n]
    assert handle.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_a_module_outside_the_backbone_is_refused_and_nothing_changes():
    model, other = bert(), bert()
    handle = LoraModel(model)
    for call in (handle.attach, handle.detach, handle.freeze_module, handle.num_trainable_parameters):
        with pytest.raises(fxdelta.FxDeltaError, match="outside it"):
            call(other)
    assert handle.attached and all(p.requires_grad for p in model.parameters())
    assert handle.detach(model).attached is False and handle.attach(model).attached


def test_log_keywords_choose_what_is_printed(capsys):
    handle = LoraModel(bert())
    handle.log(delta_ratio=False, trainable_ratio=False, visualization=False)
    assert capsys.readouterr().out == ""
    handle.log(delta_ratio=True, trainable_ratio=True, visualization=False)
    out = capsys.readouterr().out
    assert "deltas on this backbone" in out and "trainable parameters" in out and "BertForMaskedLM" not in out


def test_inspect_optimizer_statistics_counts_every_group(capsys):
    from fxdelta.utils.inspect import inspect_optimizer_statistics

    model = bert()
    handle = LoraModel(model)
    handle.freeze_module()
    delta = list(handle.parameters())
    rest = [p for p in model.parameters() if all(p is not d for d in delta)]
    optimizer = torch.optim.AdamW([{"params": delta, "lr": 1e-3}, {"params": rest, "lr": 0.0}])
    stats = inspect_optimizer_statistics(optimizer)
    assert stats["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert stats["trainable_parameters"] == handle.num_parameters()
    assert [g["lr"] for g in stats["param_groups"]] == [1e-3, 0.0] and "lr" not in stats
    assert "2 parameter group(s)" in capsys.readouterr().out
