"""Property-based: random module trees x selectors x methods x hyper-parameters.

The property: a compile either succeeds and is right (identity at init, bit-exact detach, backbone
classes and keys unchanged), or raises an FxDeltaError and leaves the model bit-identical
(parameters, buffers, forwards, hooks, classes, requires_grad, training flags, outputs).

    FXDELTA_FUZZ=2000 pytest tests/test_fuzz.py    # a longer profile (default: 60 examples)
"""

from __future__ import annotations

import os
import re

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import fxdelta
from fxdelta import FxDeltaError
from fxdelta.compiler.state import BackboneState

from snapshot import assert_unchanged, snapshot

EXAMPLES = int(os.environ.get("FXDELTA_FUZZ", "60"))
D = 8  # every module keeps the feature width, so any tree composes


class Chain(nn.Module):
    """Runs its children in turn; ``residual`` adds the input back."""

    def __init__(self, children: list[tuple[str, nn.Module]], residual: bool) -> None:
        super().__init__()
        self.order = [name for name, _ in children]
        for name, child in children:
            self.add_module(name, child)
        self.residual = residual

    def forward(self, x):
        h = x
        for name in self.order:
            h = getattr(self, name)(h)
        return x + h if self.residual else h


LEAVES = {
    "fc": lambda: nn.Linear(D, D),
    "norm": lambda: nn.LayerNorm(D),
    "act": lambda: nn.GELU(),
    "drop": lambda: nn.Dropout(0.1),
}
TREES = st.recursive(
    st.sampled_from(sorted(LEAVES)),
    lambda kids: st.tuples(st.sampled_from(["seq", "chain", "residual"]), st.lists(kids, min_size=1, max_size=3)),
    max_leaves=8,
)


def build(tree, counter) -> nn.Module:
    if isinstance(tree, str):
        return LEAVES[tree]()
    kind, kids = tree
    built = []
    for kid in kids:
        name = kid if isinstance(kid, str) else "block"
        counter[name] = counter.get(name, -1) + 1
        built.append((f"{name}{counter[name]}", build(kid, counter)))
    if kind == "seq":
        return nn.Sequential(*[m for _, m in built])
    return Chain(built, residual=kind == "residual")


def model_from(tree, seed: int, training: bool) -> nn.Module:
    torch.manual_seed(seed)
    body = build(tree if not isinstance(tree, str) else ("chain", [tree]), {})
    model = Chain([("body", body), ("head", nn.Linear(D, D))], residual=False)
    return model.train(training)


METHODS = ["lora", "dora", "adapter", "bitfit", "ia3", "low_rank_adapter", "compacter", "parallel_adapter"]


def _mostly(good, bad, odds: int = 5):
    """``good`` most of the time (hypothesis leans toward small integers: 0 picks ``good``), else ``bad``."""
    return st.integers(0, odds).flatmap(lambda i: bad if i == odds else good)


def _value(good: list, bad: list):
    """Mostly a valid value, sometimes one the config must refuse."""
    return _mostly(st.sampled_from(good), st.sampled_from(bad))


HYPER = {
    "lora": {"lora_r": _value([1, 2, 4], [0, -1, 2.5, "4"]), "lora_alpha": _value([1, 16], [0, float("inf")])},
    "dora": {"lora_r": _value([1, 2], [0]), "lora_dropout": _value([0.0, 0.5], [1.0, -0.1])},
    "adapter": {"bottleneck_dim": _value([1, 4], [0, 3.0]), "non_linearity": _value(["relu", "gelu_new"], ["nope"])},
    "bitfit": {},
    "ia3": {},
    "low_rank_adapter": {"reduction_factor": _value([1, 2, 8], [0, 16]), "low_rank_rank": _value([1, 2], [0])},
    "compacter": {"reduction_factor": _value([1, 2], [4, 0]), "hypercomplex_division": _value([1, 2, 4], [3, 0])},
    "parallel_adapter": {"bottleneck_dim": _value([2, 4], [0]), "scaled": _value([1.0, 0.5], [float("nan")])},
}


def selectors(data, names: list[str]):
    """Tails, full paths, ``re:``/``[r]`` regexes (valid or not), names that do not exist, wrong types."""
    real = [n for n in names if n]
    tail = st.sampled_from(real).map(lambda n: ".".join(n.split(".")[-data.draw(st.integers(1, 2)) :]))
    regex = st.sampled_from(real).map(lambda n: "re:" + re.escape(n))
    search = st.sampled_from(real).map(lambda n: "[r]" + re.escape(n.split(".")[-1]))
    bad = st.sampled_from(["re:(", "[r]*", "nosuchmodule", ""])
    good = st.one_of(tail, tail, regex, search)
    wrong = st.one_of(bad, st.lists(bad, min_size=1, max_size=2), good, st.just([]))  # a bare string is wrong too
    return data.draw(_mostly(st.lists(good, min_size=1, max_size=3), wrong, odds=8))


def spec_for(data, names: list[str]) -> dict:
    method = data.draw(st.sampled_from(METHODS))
    spec = {"delta_type": method, **{k: data.draw(v) for k, v in HYPER[method].items() if data.draw(st.booleans())}}
    if method in ("lora", "dora") and data.draw(st.integers(0, 3)) < 3:  # mostly linear layers, which they patch
        names = [n for n in names if n.split(".")[-1].startswith(("fc", "head"))]
    if method == "parallel_adapter":
        pair = data.draw(st.sampled_from([n for n in names if n]))
        spec["modified_modules"] = data.draw(_mostly(st.just([pair, pair]), st.sampled_from([[pair], [pair, "nope"]])))
    elif data.draw(st.integers(0, 19)) < 19:  # else the defaults, which a plain model has none of
        spec["modified_modules"] = selectors(data, names)
    return spec


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(tree=TREES, data=st.data())
def test_compile_is_right_or_changes_nothing(tree, data):
    model = model_from(tree, seed=data.draw(st.integers(0, 3)), training=data.draw(st.booleans()))
    names = [n for n, _ in model.named_modules()]
    specs = [spec_for(data, names) for _ in range(data.draw(st.integers(1, 2)))]
    hooks_only = data.draw(st.booleans())
    x = (torch.randn(2, D, generator=torch.Generator().manual_seed(1)),)
    training = flags(model)
    model.eval()  # outputs compared bit for bit: no dropout
    before = snapshot(model, x)
    for name, m in model.named_modules():
        m.training = training[name]
    try:
        fxdelta.compile(model, specs, hooks_only=hooks_only, freeze=False)  # detach must then restore all
    except FxDeltaError as e:
        event(f"refused: {type(e).__name__}")
        if os.environ.get("FXDELTA_FUZZ_SHOW"):
            event(str(e)[:90])
        assert flags(model) == training
        model.eval()
        assert_unchanged(model, before, x)
        return
    event("compiled")
    after = flags(model)
    assert {n: after[n] for n in training} == training
    assert all(flag == training[n.split(".deltas")[0]] for n, flag in after.items() if ".deltas" in n)
    assert all(type(m) is before.classes[n] for n, m in model.named_modules() if n in before.classes)
    assert set(before.tensors) <= set(model.state_dict())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(*x), before.output)  # every fuzzed method starts as the identity
    for handle in fxdelta.delta_models(model).values():
        handle.detach()
    assert_unchanged(model, before, x, state=BackboneState.find(model))
