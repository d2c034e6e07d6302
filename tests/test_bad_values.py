"""Values that used to pass and then break: non-finite hyper-parameters, zero weight rows, pairs in the
wrong order, and inputs that escaped as errors other than FxDeltaError."""

import pytest
import torch
from torch import nn

import fxdelta
from fxdelta import (
    CompacterModel,
    ConfigError,
    DoraModel,
    FxDeltaError,
    LoraModel,
    ParallelAdapterModel,
    SelectorError,
)

from snapshot import assert_unchanged, snapshot
from zoo import ZOO


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (LoraModel, {"lora_alpha": float("inf")}, "lora_alpha must be a finite number"),
        (LoraModel, {"lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        (LoraModel, {"lora_alpha": 1e308}, "lora_alpha makes the delta on .* multiply by"),  # inf in float32
        (DoraModel, {"lora_alpha": 1e300}, "lora_alpha makes the delta"),
        (ParallelAdapterModel, {"scaled": float("inf")}, "scaled must be a finite number"),
        (ParallelAdapterModel, {"scaled": 1e39}, "scaled makes the delta"),
        (CompacterModel, {"phm_init_range": float("inf")}, "phm_init_range must be a finite number"),
        (
            CompacterModel,
            {"phm_init_range": 1e39, "hypercomplex_nonlinearity": "normal", "reduction_factor": 8},
            "non-finite values",
        ),
        (LoraModel, {"lora_r": 2**45}, "does not fit in memory"),
    ],
    ids=["inf", "nan", "1e308", "dora-1e300", "scaled-inf", "scaled-1e39", "phm-inf", "phm-1e39", "huge-rank"],
)
def test_values_that_would_give_nan_or_crash_are_config_errors(cls, kwargs, field):
    zm = ZOO["bert"]
    model, inputs = zm.build(), zm.inputs()
    before = snapshot(model, inputs)
    with pytest.raises(ConfigError, match=field):
        cls(model, **kwargs)
    assert_unchanged(model, before, inputs)


def test_dora_on_a_weight_with_a_zero_row_starts_as_the_identity():
    zm = ZOO["bert"]
    model, inputs = zm.build(), zm.inputs()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight[0].zero_()
        base = zm.run(model, inputs)
    DoraModel(model)
    with torch.no_grad():
        out = zm.run(model, inputs)
    assert torch.isfinite(out).all() and torch.equal(out, base)


class Backwards(nn.Module):
    """``late`` runs after ``early``: a pair reading late's input at early cannot exist."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Linear(8, 8)
        self.late = nn.Linear(8, 8)

    def forward(self, x):
        return self.late(torch.relu(self.early(x)))


def test_a_pair_whose_source_runs_after_its_target_is_refused():
    torch.manual_seed(0)
    model = Backwards().eval()
    x = (torch.randn(2, 8),)
    before = snapshot(model, x)
    with pytest.raises(SelectorError, match="late first runs after early"):
        ParallelAdapterModel(model, modified_modules=["late", "early"], hooks_only=True)
    assert_unchanged(model, before, x)
    ParallelAdapterModel(model, modified_modules=["early", "late"], hooks_only=True)  # the right order works
    with torch.no_grad():
        assert torch.equal(model(*x), before.output)


@pytest.mark.parametrize("exclude", [5, [5], "deltas"])
def test_freeze_module_with_a_bad_exclude(exclude):
    model = ZOO["bert"].build()
    handle = LoraModel(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(FxDeltaError, match="exclude"):
        handle.freeze_module(exclude=exclude)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


class WithBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(x))


@pytest.mark.parametrize("hooks_only", [False, True], ids=["graph", "hooks"])
def test_a_sequential_target_still_runs_its_layers_and_the_delta(hooks_only):
    torch.manual_seed(0)
    model = WithBlock().eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        base = model(x)
        handle = fxdelta.AdapterModel(model, modified_modules=["block"], hooks_only=hooks_only)
        assert torch.equal(model(x), base)  # the deltas child runs as the identity inside the Sequential
        for p in handle.parameters():
            p.normal_()
        assert not torch.allclose(model(x), base)
        handle.detach()
        assert torch.equal(model(x), base)


def test_a_trimmed_state_dict_is_whole_again_once_the_delta_is_detached():
    model = ZOO["bert"].build()
    keys = set(model.state_dict())
    handle = LoraModel(model)
    handle.freeze_module(set_state_dict=True)
    trimmed = set(model.state_dict())
    assert trimmed and all(".deltas." in k for k in trimmed)
    handle.detach()
    assert set(model.state_dict()) == keys  # saving the bare backbone writes all of it
    handle.attach()
    assert set(model.state_dict()) == trimmed


class Activation(nn.Module):
    def forward(self, x, activation=torch.nn.functional.relu, bias=torch.zeros(8)):  # noqa: B008  (the point)
        return activation(x) + bias


class NoRegion(nn.Module):
    """Its own forward has an argument the call leaves at its default: never traced as a region."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = Activation()
        self.head = nn.Linear(8, 2)

    def forward(self, x, unused=None):
        return self.head(self.act(self.fc(x)))


def test_forwards_with_defaults_fx_cannot_write_still_compile():
    torch.manual_seed(0)
    model = NoRegion().eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        base = model(x)
        handle = fxdelta.IA3Model(model, modified_modules=["act", "fc"])
        assert torch.equal(model(x), base)
        for p in handle.parameters():
            p.normal_()
        assert not torch.equal(model(x), base)
        handle.detach()
        assert torch.equal(model(x), base)


def test_a_wrapped_forward_compiles():
    torch.manual_seed(0)
    model = NoRegion().eval()
    old = model.head.forward

    def wrapper(*a, _old=old, **k):  # what tools that wrap forwards install
        return _old(*a, **k)

    model.head.forward = wrapper
    x = torch.randn(2, 8)
    with torch.no_grad():
        base = model(x)
        handle = fxdelta.LoraModel(model, modified_modules=["head"])
        assert torch.equal(model(x), base)
        for p in handle.parameters():
            p.normal_()
        assert not torch.equal(model(x), base)
        handle.detach()
        assert torch.equal(model(x), base)
    assert model.head.forward is wrapper


def test_deltas_on_a_sequential_and_inside_it_detach_in_any_order():
    """A region traced on a Sequential must not see the deltas child of an earlier plan (found by the fuzz)."""
    torch.manual_seed(0)
    model = WithBlock().eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        base = model(x)
    fxdelta.compile(
        model,
        [
            {"delta_type": "parallel_adapter", "modified_modules": ["block", "block"]},
            {"delta_type": "parallel_adapter", "modified_modules": ["block.0", "block.0"]},
        ],
    )
    outer, inner = fxdelta.delta_models(model).values()
    outer.detach()
    inner.detach()
    with torch.no_grad():
        assert torch.equal(model(x), base)
    inner.attach()
    outer.attach()
