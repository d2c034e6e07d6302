"""Hot-swap: another task's delta copied into an attached delta's own tensors (what keeps torch.compile from
recompiling: tests/test_torch_compile.py); everything is checked first, and a refusal changes nothing."""

import warnings

import pytest
import torch
import transformers

import fxdelta
from fxdelta import LoraModel

from snapshot import assert_unchanged, snapshot

IDS = torch.arange(1, 9).unsqueeze(0)
_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def classifier(seed=0):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT, num_labels=3)).eval()


def trained(spec, seed, tmp_path=None, **save):
    """A classifier with one delta of ``spec`` and a task head, both given random values; saved if ``tmp_path``."""
    model = classifier()
    fxdelta.compile(model, spec)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the delta and the head
                p.normal_(0, 0.3)
    if tmp_path is not None:
        fxdelta.save(model, tmp_path / f"task{seed}", **save)
    return model


def test_a_folder_swaps_in_values_head_and_all_keeping_the_parameter_objects(tmp_path):
    want = trained({"delta_type": "lora"}, 2, tmp_path)(input_ids=IDS).logits
    model = trained({"delta_type": "lora"}, 1)
    handle = fxdelta.delta_models(model)["lora"]
    params = {n: p for n, p in model.named_parameters()}
    assert not torch.equal(model(input_ids=IDS).logits, want)
    assert fxdelta.hotswap(model, tmp_path / "task2") is handle
    assert torch.equal(model(input_ids=IDS).logits, want)
    assert all(p is params[n] for n, p in model.named_parameters())  # optimizers and compiled graphs keep them


def test_a_delta_model_and_a_peft_folder_are_sources_too(tmp_path):
    source = trained({"delta_type": "lora", "name": "b"}, 2, tmp_path, format="peft")
    want = source(input_ids=IDS).logits
    model = trained({"delta_type": "lora"}, 1)
    fxdelta.delta_models(model)["lora"].hotswap(fxdelta.delta_models(source)["b"])
    assert torch.equal(model(input_ids=IDS).logits, want)
    other = trained({"delta_type": "lora"}, 3)
    fxdelta.hotswap(other, tmp_path / "task2")  # PEFT's adapter folder (the head as modules_to_save)
    assert torch.equal(other(input_ids=IDS).logits, want)


def test_a_source_that_keeps_the_backbones_head_brings_that_head_back(tmp_path):
    plain = classifier()
    fxdelta.compile(plain, {"delta_type": "lora", "unfrozen_modules": ["deltas"]})  # the head stays frozen
    with torch.no_grad():
        for p in fxdelta.delta_models(plain)["lora"].parameters():
            p.normal_(0, 0.3)
    fxdelta.save(plain, tmp_path / "headless")
    model = trained({"delta_type": "lora"}, 1)  # its own trained head
    fxdelta.hotswap(model, tmp_path / "headless")
    assert torch.equal(model(input_ids=IDS).logits, plain(input_ids=IDS).logits)
    fxdelta.delta_models(model)["lora"].detach()
    assert torch.equal(model(input_ids=IDS).logits, classifier()(input_ids=IDS).logits)


@pytest.mark.parametrize(
    "source_spec,error,words",
    [
        ({"delta_type": "lora", "lora_r": 4}, fxdelta.ConfigError, "lora_r=4"),
        ({"delta_type": "lora", "lora_alpha": 32}, fxdelta.ConfigError, "lora_alpha=32"),
        ({"delta_type": "lora", "modified_modules": ["query"]}, fxdelta.ConfigError, "same targets"),
        ({"delta_type": "adapter"}, fxdelta.ConfigError, "delta_type='adapter'"),
    ],
)
def test_another_kind_of_delta_is_refused_and_nothing_changes(tmp_path, source_spec, error, words):
    trained(source_spec, 2, tmp_path)
    model = trained({"delta_type": "lora"}, 1)
    before = snapshot(model, {"input_ids": IDS})
    with pytest.raises(error, match=words):
        fxdelta.hotswap(model, tmp_path / "task2")
    assert_unchanged(model, before, {"input_ids": IDS})


def test_refusals_name_the_way_out(tmp_path):
    model = trained({"delta_type": "lora"}, 1)
    before = snapshot(model, {"input_ids": IDS})
    with pytest.raises(fxdelta.CheckpointError, match="not a checkpoint folder"):
        fxdelta.hotswap(model, tmp_path / "missing")
    with pytest.raises(fxdelta.ConfigError, match="checkpoint folder or a delta model"):
        fxdelta.hotswap(model, {"delta_type": "lora"})
    with pytest.raises(fxdelta.ConfigError, match="no delta model named 'x'"):
        fxdelta.hotswap(model, tmp_path, name="x")
    full = trained({"delta_type": "lora"}, 2)
    fxdelta.delta_models(full)["lora"].freeze_module(exclude=["deltas", "classifier", "pooler"])
    fxdelta.save(full, tmp_path / "with-backbone")
    with pytest.raises(fxdelta.CheckpointError, match=r"trained backbone tensors.*fxdelta\.load"):
        fxdelta.hotswap(model, tmp_path / "with-backbone")
    LoraModel(model, name="second")
    with pytest.raises(fxdelta.ConfigError, match=r"2 attached.*pass name="):
        fxdelta.hotswap(model, tmp_path / "task2")
    fxdelta.delta_models(model)["second"].detach()
    assert_unchanged(model, before, {"input_ids": IDS}, same_hook_ids=False)


def test_a_merged_delta_or_a_lossy_dtype_is_refused(tmp_path):
    trained({"delta_type": "lora"}, 2, tmp_path)
    model = trained({"delta_type": "lora"}, 1)
    handle = fxdelta.delta_models(model)["lora"]
    handle.merge_into_backbone()
    with pytest.raises(fxdelta.StateError, match="unmerge it"):
        handle.hotswap(tmp_path / "task2")
    handle.unmerge_from_backbone()
    half = classifier().to(torch.bfloat16)
    fxdelta.compile(half, {"delta_type": "lora", "delta_dtype": "bfloat16"})
    before = snapshot(half, {"input_ids": IDS})
    with pytest.raises(fxdelta.CheckpointError, match=r"float32 but the delta holds torch\.bfloat16"):
        fxdelta.hotswap(half, tmp_path / "task2")
    assert_unchanged(half, before, {"input_ids": IDS})


def test_a_delta_on_the_meta_device_is_refused_and_one_materialised_counts_as_given_values(tmp_path):
    trained({"delta_type": "lora"}, 2, tmp_path)
    want = trained({"delta_type": "lora"}, 2)(input_ids=IDS).logits
    real = classifier()
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT, num_labels=3))
    with pytest.warns(fxdelta.FxDeltaWarning, match="reset_deltas"):
        fxdelta.compile(model, {"delta_type": "lora"})
    with pytest.raises(fxdelta.StateError, match=r"meta device.*reset_deltas"):
        fxdelta.hotswap(model, tmp_path / "task2")
    model.to_empty(device="cpu")
    model.load_state_dict(real.state_dict(), strict=False)
    for name, b in real.named_buffers():  # non-persistent ones (position ids) are in no state_dict
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = b.clone()
    model.eval()
    fxdelta.hotswap(model, tmp_path / "task2")  # values, so the forward does not warn that it has none
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxdelta.FxDeltaWarning)
        assert torch.equal(model(input_ids=IDS).logits, want)
