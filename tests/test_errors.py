"""Bad input fails with a clear error AND leaves the model exactly as it was.

Every test snapshots the model first (tensors, hooks, instance forwards, classes, module names,
fxdelta's state attribute, the output on a fixed input) and checks the snapshot after the error.
"""

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import fxdelta
from fxdelta import (
    AdapterModel, AutoDeltaConfig, AutoDeltaModel, BitFitModel, CheckpointError, ConfigError, LoraModel,
    SelectorError, UnsupportedModelError,
)
from fxdelta.state import BackboneState
from zoo import ZOO


@dataclass
class Snapshot:
    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    hooks: dict[str, tuple[list, list]]  # hook ids
    hook_fns: dict[str, tuple[list, list]]  # the hook callables, in call order
    forwards: set[str]
    classes: dict[str, type]
    names: list[str]
    state: Any
    output: torch.Tensor


def snapshot(model: nn.Module, inputs: Any) -> Snapshot:
    modules = list(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        output = _run(model, inputs)
    return Snapshot(
        tensors={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        hooks={n: (list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in modules},
        hook_fns={n: (list(m._forward_hooks.values()), list(m._forward_pre_hooks.values())) for n, m in modules},
        forwards={n for n, m in modules if "forward" in m.__dict__},
        classes={n: type(m) for n, m in modules},
        names=[n for n, _ in modules],
        state=BackboneState.find(model),
        output=output,
    )


def assert_unchanged(model: nn.Module, before: Snapshot, inputs: Any, *, same_hook_ids: bool = True) -> None:
    after = snapshot(model, inputs)
    assert after.names == before.names
    assert after.classes == before.classes
    assert after.forwards == before.forwards
    assert after.hook_fns == before.hook_fns
    if same_hook_ids:
        assert after.hooks == before.hooks
    assert after.state is before.state
    assert after.tensors.keys() == before.tensors.keys()
    assert all(torch.equal(after.tensors[k], v) for k, v in before.tensors.items())
    assert after.requires_grad == before.requires_grad
    assert torch.equal(after.output, before.output)


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture
def bert():
    return ZOO["bert"].build(), ZOO["bert"].inputs()


# -- selectors and the model ---------------------------------------------------------------------
def test_unmatched_selector(bert):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(SelectorError, match="'quary' matches no module") as info:
        LoraModel(model, modified_modules=["quary"])
    assert "'query'" in str(info.value).split("closest names:")[1]
    assert_unchanged(model, before, inputs)


def test_lora_on_a_layer_norm(bert):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(SelectorError, match="cannot patch") as info:
        LoraModel(model, modified_modules=["attention.output.LayerNorm"])
    assert "bert.encoder.layer.0.attention.output.LayerNorm" in str(info.value)
    assert "LayerNorm" in str(info.value).split(":", 1)[1]
    assert_unchanged(model, before, inputs)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (LoraModel, {"lora_r": 0}, "LoraConfig.lora_r"),
        (LoraModel, {"lora_r": -1}, "LoraConfig.lora_r"),
        (LoraModel, {"lora_r": 2.5}, "LoraConfig.lora_r"),
        (LoraModel, {"lora_dropout": 1.5}, "LoraConfig.lora_dropout"),
        (AdapterModel, {"bottleneck_dim": 0}, "AdapterConfig.bottleneck_dim"),
        (AdapterModel, {"non_linearity": "foo"}, "AdapterConfig.non_linearity"),
    ],
)
def test_bad_hyper_parameter_names_the_field(bert, cls, kwargs, field):
    model, inputs = bert
    before = snapshot(model, inputs)
    value = next(iter(kwargs.values()))
    with pytest.raises(ConfigError, match=rf"{field} must be .*got {value!r}"):
        cls(model, **kwargs)
    assert_unchanged(model, before, inputs)


def test_unknown_delta_type(bert):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(ConfigError, match=r"unknown delta_type 'lorra'.*closest: \['lora'\]"):
        AutoDeltaModel.from_config({"delta_type": "lorra", "lora_r": 4}, model)
    with pytest.raises(ConfigError, match="unknown delta_type 'lorra'"):
        fxdelta.compile(model, {"delta_type": "lorra"})
    assert_unchanged(model, before, inputs)


def test_unknown_config_key_suggests_the_closest(bert):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(ConfigError, match=r"LoraConfig has no field 'lora_rank' \(closest: \['lora_r'"):
        LoraModel(model, lora_rank=4)
    with pytest.raises(ConfigError, match=r"AdapterConfig has no field 'bottleneck' \(closest: \['bottleneck_dim'"):
        AutoDeltaConfig.from_dict({"delta_type": "adapter", "bottleneck": 4})
    assert_unchanged(model, before, inputs)


def test_adapter_without_positions_on_a_plain_model():
    torch.manual_seed(0)
    model, inputs = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(3, 8),)
    before = snapshot(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"no default positions for Sequential.*modified_modules=\[\.\.\.\]"):
        AdapterModel(model)
    assert_unchanged(model, before, inputs)


def test_target_that_is_never_called():
    # nn.MultiheadAttention reads out_proj.weight directly: a delta there would silently do nothing.
    zm = ZOO["transformer-encoder"]
    model, inputs = zm.build(), zm.inputs()
    before = snapshot(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"layers\.0\.self_attn\.out_proj is never called"):
        LoraModel(model, modified_modules=["self_attn.out_proj"])
    assert_unchanged(model, before, inputs)


@pytest.mark.parametrize(
    "example, message",
    [({"input_ids": torch.zeros(2, 3)}, "could not observe the backbone"), ("ids", "example_inputs must be a tensor")],
    ids=["float-ids", "string"],
)
def test_bad_example_inputs(bert, example, message):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(UnsupportedModelError, match=message):
        LoraModel(model, example_inputs=example)
    assert_unchanged(model, before, inputs)


def test_bad_spec_file(tmp_path, bert):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(ConfigError, match="does not exist"):
        fxdelta.compile(model, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"delta_type": "lora",')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        fxdelta.compile(model, tmp_path / "bad.json")
    assert_unchanged(model, before, inputs)


# -- checkpoints --------------------------------------------------------------------------------
def _saved(tmp_path, model=None):
    """A real checkpoint of a perturbed LoRA on tiny BERT; returns its folder."""
    model = model if model is not None else ZOO["bert"].build()
    handle = LoraModel(model)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.1)
    folder = tmp_path / "ckpt"
    handle.save_finetuned(folder)
    return folder


def _bert(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48)
    return transformers.BertForMaskedLM(config).eval()


def _corrupt_tensors(folder):
    (folder / "delta.safetensors").write_bytes(b"\x00garbage\xff" * 20)


def _corrupt_json(folder):
    (folder / "delta_config.json").write_text("{not json")


def _missing_tensor(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "delta.safetensors"))
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, str(folder / "delta.safetensors"))


def _wrong_shape(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "delta.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, str(folder / "delta.safetensors"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt_tensors, "corrupt or not a safetensors file"),
        (_corrupt_json, "is not valid JSON"),
        (_missing_tensor, "is missing from delta.safetensors"),  # fails after the deltas were built
        (_wrong_shape, "has shape"),
    ],
    ids=["garbage-safetensors", "corrupt-json", "missing-tensor", "wrong-shape"],
)
@pytest.mark.parametrize("loader", ["from_finetuned", "fxdelta.load"])
def test_damaged_checkpoint(tmp_path, damage, message, loader):
    folder = _saved(tmp_path)
    damage(folder)
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=message):
        if loader == "from_finetuned":
            AutoDeltaModel.from_finetuned(folder, backbone_model=fresh)
        else:
            fxdelta.load(fresh, folder)
    assert_unchanged(fresh, before, inputs)


def test_missing_folder_and_folder_without_config(tmp_path, bert):
    fresh, inputs = bert
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match="no delta checkpoint folder at"):
        AutoDeltaModel.from_finetuned(tmp_path / "nope", backbone_model=fresh)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no delta_config.json"):
        fxdelta.load(fresh, tmp_path / "empty")
    assert_unchanged(fresh, before, inputs)


@pytest.mark.parametrize(
    "target, saved_as, loaded_as",
    [
        (lambda: ZOO["gpt2"].build(), "BertForMaskedLM", "GPT2LMHeadModel"),
        (lambda: _bert(48), "BertForMaskedLM", "BertForMaskedLM"),
    ],
    ids=["bert-to-gpt2", "hidden32-to-hidden48"],
)
def test_checkpoint_onto_another_architecture(tmp_path, target, saved_as, loaded_as):
    folder = _saved(tmp_path, _bert(32))
    fresh = target()
    inputs = ZOO["gpt2"].inputs() if loaded_as.startswith("GPT2") else ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=rf"saved for a {saved_as} whose parameters differ from this {loaded_as}"):
        AutoDeltaModel.from_finetuned(folder, backbone_model=fresh)
    assert_unchanged(fresh, before, inputs)


def test_from_finetuned_refuses_a_multi_delta_checkpoint(tmp_path):
    model = ZOO["bert"].build()
    first = LoraModel(model)
    BitFitModel(model, modified_modules=["output.dense"])
    first.freeze_module(exclude=["deltas", "LayerNorm"])  # the checkpoint then holds the LayerNorms too
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    fxdelta.save(model, tmp_path / "two")
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match="holds 2 deltas; use fxdelta.load"):
        AutoDeltaModel.from_finetuned(tmp_path / "two", backbone_model=fresh)
    assert_unchanged(fresh, before, inputs)


# -- several deltas -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, error",
    [
        ({"delta_type": "adapter", "modified_modules": ["nope"]}, SelectorError),
        ({"delta_type": "adapter", "bottleneck_dim": -3}, ConfigError),
        ({"delta_type": "lora", "modified_modules": ["LayerNorm"]}, SelectorError),
    ],
    ids=["selector", "config", "cannot-patch"],
)
def test_compile_list_is_all_or_nothing(bert, bad, error):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises(error):
        fxdelta.compile(model, [{"delta_type": "lora", "lora_r": 4}, bad])
    assert fxdelta.delta_models(model) == {}
    assert_unchanged(model, before, inputs)


@pytest.mark.parametrize(
    "family, first, second, error",
    [
        ("bert", (LoraModel, {}), (BitFitModel, {"modified_modules": ["nope"]}), SelectorError),
        ("bert", (AdapterModel, {}), (LoraModel, {"lora_r": 0}), ConfigError),
        # Fails after observing the backbone, which takes the first delta's sites out and back in.
        ("transformer-encoder", (LoraModel, {"modified_modules": ["linear2"]}),
         (LoraModel, {"modified_modules": ["out_proj"]}), UnsupportedModelError),
    ],
    ids=["selector", "config", "never-called"],
)
def test_failed_second_delta_keeps_the_first(family, first, second, error):
    zm = ZOO[family]
    model, inputs = zm.build(), zm.inputs()
    with torch.no_grad():
        plain = _run(model, inputs)
    first_cls, first_kwargs = first
    handle = first_cls(model, **first_kwargs)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in handle.parameters():  # random, not constant: a LayerNorm after the delta cancels a constant shift
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    before = snapshot(model, inputs)
    assert not torch.allclose(before.output, plain, atol=1e-4)

    with pytest.raises(error):
        second[0](model, **second[1])
    # Observing a new target takes installed hook sites out and puts them back: same hooks, new ids.
    assert_unchanged(model, before, inputs, same_hook_ids=family != "transformer-encoder")
    assert fxdelta.delta_models(model) == {handle.name: handle} and handle.attached

    handle.detach()  # the first delta still comes off cleanly and goes back on
    with torch.no_grad():
        assert torch.equal(_run(model, inputs), plain)
    handle.attach()
    with torch.no_grad():
        assert torch.equal(_run(model, inputs), before.output)
