"""Bad input fails with a clear error AND leaves the model exactly as it was.

Checkpoint errors are in test_checkpoint_errors.py. Every test snapshots the model first (tensors, hooks,
instance forwards, classes, module names, fxdelta's state attribute, the output on a fixed input) and checks
the snapshot after the error.
"""

import pytest
import torch
from torch import nn

import fxdelta
from fxdelta import (
    AdapterModel,
    AutoDeltaConfig,
    AutoDeltaModel,
    BitFitModel,
    CompacterModel,
    ConfigError,
    DoraModel,
    LoraModel,
    LowRankAdapterModel,
    ParallelAdapterModel,
    PrefixModel,
    SelectorError,
    SoftPromptModel,
    UnsupportedModelError,
)

from snapshot import assert_unchanged, run, snapshot
from zoo import ZOO


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
        (DoraModel, {"lora_r": 0}, "DoraConfig.lora_r"),
        (LowRankAdapterModel, {"reduction_factor": 0}, "LowRankAdapterConfig.reduction_factor"),
        (LowRankAdapterModel, {"low_rank_rank": -2}, "LowRankAdapterConfig.low_rank_rank"),
        (LowRankAdapterModel, {"low_rank_w_init": "zeros"}, "LowRankAdapterConfig.low_rank_w_init"),
        (CompacterModel, {"hypercomplex_division": 0}, "CompacterConfig.hypercomplex_division"),
        (CompacterModel, {"phm_rank": 0}, "CompacterConfig.phm_rank"),
        (CompacterModel, {"phm_init_range": -1.0}, "CompacterConfig.phm_init_range"),
        (CompacterModel, {"learn_phm": "yes"}, "CompacterConfig.learn_phm"),
        (ParallelAdapterModel, {"bottleneck_dim": -4}, "ParallelAdapterConfig.bottleneck_dim"),
        (ParallelAdapterModel, {"scaled": 0}, "ParallelAdapterConfig.scaled"),
        (PrefixModel, {"prefix_token_num": -3}, "PrefixConfig.prefix_token_num"),
        (PrefixModel, {"mid_dim": 0}, "PrefixConfig.mid_dim"),
        (SoftPromptModel, {"soft_token_num": 0}, "SoftPromptConfig.soft_token_num"),
        (SoftPromptModel, {"token_init": "random"}, "SoftPromptConfig.token_init"),
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
    # a dict from a script carries other keys: dropped, with a warning that still points at the field
    with pytest.warns(fxdelta.FxDeltaWarning, match=r"'bottleneck' \(did you mean 'bottleneck_dim'\?\)"):
        AutoDeltaConfig.from_dict({"delta_type": "adapter", "bottleneck": 4})
    assert_unchanged(model, before, inputs)


def test_adapter_without_positions_on_a_plain_model():
    torch.manual_seed(0)
    model, inputs = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(3, 8),)
    before = snapshot(model, inputs)
    with pytest.raises(
        UnsupportedModelError, match=r"no default positions for Sequential.*modified_modules=\[\.\.\.\]"
    ):
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
        (
            "transformer-encoder",
            (LoraModel, {"modified_modules": ["linear2"]}),
            (LoraModel, {"modified_modules": ["out_proj"]}),
            UnsupportedModelError,
        ),
    ],
    ids=["selector", "config", "never-called"],
)
def test_failed_second_delta_keeps_the_first(family, first, second, error):
    zm = ZOO[family]
    model, inputs = zm.build(), zm.inputs()
    with torch.no_grad():
        plain = run(model, inputs)
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
        assert torch.equal(run(model, inputs), plain)
    handle.attach()
    with torch.no_grad():
        assert torch.equal(run(model, inputs), before.output)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        # the zoo's hidden size is 32
        (
            LowRankAdapterModel,
            {"reduction_factor": 64},
            r"reduction_factor=64 leaves no bottleneck for the 32 features",
        ),
        (CompacterModel, {"reduction_factor": 16}, r"hypercomplex_division=4 must divide .* the bottleneck 2"),
        (CompacterModel, {"shared_phm_rule": True}, r"shared_phm_rule=True is not supported"),
        (DoraModel, {"modified_modules": ["LayerNorm"]}, r"cannot patch .*LayerNorm"),
    ],
    ids=["bottleneck-0", "phm-division", "shared-rule", "dora-on-norm"],
)
def test_sizes_that_do_not_fit_the_model(bert, cls, kwargs, message):
    model, inputs = bert
    before = snapshot(model, inputs)
    with pytest.raises((ConfigError, SelectorError), match=message):
        cls(model, **kwargs)
    assert_unchanged(model, before, inputs)


@pytest.mark.parametrize(
    "name, make, error, message",
    [
        ("vit", lambda m: SoftPromptModel(m), UnsupportedModelError, "soft prompt on a model without input embeddings"),
        ("mlp", lambda m: SoftPromptModel(m), UnsupportedModelError, "soft prompt on a model without input embeddings"),
        (
            "mlp",
            lambda m: PrefixModel(m, modified_modules=["fc1"]),
            SelectorError,
            "not a self-attention fxdelta can prefix",
        ),
        (
            "gpt2",
            lambda m: PrefixModel(m, modified_modules=["h.1.attn"]),
            ConfigError,
            "must cover all of its 2 self-attention",
        ),
    ],
    ids=["soft-prompt-on-vit", "soft-prompt-on-mlp", "prefix-on-mlp", "prefix-on-half-a-decoder"],
)
def test_methods_that_need_what_the_model_lacks(name, make, error, message):
    model, inputs = ZOO[name].build(), ZOO[name].inputs()
    before = snapshot(model, inputs)
    with pytest.raises(error, match=message):
        make(model)
    assert_unchanged(model, before, inputs)
