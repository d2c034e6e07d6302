"""Precision: float32 deltas on bfloat16 backbones (``DeltaConfig.delta_dtype``; ``fxdelta.core.precision``).

Every method x BERT / GPT-2 / Llama in bfloat16: the deltas are float32 by default and compute in float32,
the backbone keeps computing in bfloat16; identity at init is exact; a training step gives float32 grads;
outputs stay within a bfloat16-sized bound of an all-float32 model carrying the same deltas; checkpoints
keep the delta's dtype; casting the deltas or the backbone by hand keeps the model working.
"""

from __future__ import annotations

import pytest
import torch

import fxdelta
from fxdelta import FxDeltaError, LoraModel
from fxdelta.core.errors import ConfigError
from fxdelta.spec.config import DeltaConfig

from invariants import METHODS, delta_kwargs, perturb
from zoo import ZOO

MODELS = ("bert", "gpt2", "llama")
CELLS = [(m, k) for m in MODELS for k in METHODS]
BF16 = torch.bfloat16


def _bf16(model_name: str, method: str, **extra):
    """(zoo model, bf16 backbone, its inputs, its output before patching, the delta model)."""
    zm = ZOO[model_name]
    model = zm.build().to(BF16)
    inputs = zm.inputs()
    with torch.no_grad():
        base = zm.run(model, inputs)
    handle = METHODS[method](model, **delta_kwargs(model_name, method, **extra))
    return zm, model, inputs, base, handle


def _dtypes(handle) -> set[torch.dtype]:
    return {t.dtype for t in handle.state_dict().values() if t.is_floating_point()}


@pytest.mark.parametrize(("model_name", "method"), CELLS)
def test_float32_deltas_on_bf16_start_as_an_exact_identity(model_name, method):
    zm, model, inputs, base, handle = _bf16(model_name, method)
    assert _dtypes(handle) == {torch.float32}
    with torch.no_grad():
        out = zm.run(model, inputs)
    assert out.dtype == BF16  # the backbone still computes in its own dtype
    if handle.method.identity_at_init:
        assert torch.equal(out, base)


@pytest.mark.parametrize(("model_name", "method"), CELLS)
def test_a_training_step_gives_float32_grads(model_name, method):
    zm, model, inputs, _, handle = _bf16(model_name, method)
    handle.freeze_module()
    perturb(handle.parameters())
    model.train()
    zm.run(model, inputs).float().square().mean().backward()
    grads = [p.grad for p in handle.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    before = {n: p.detach().clone() for n, p in handle.named_parameters()}
    torch.optim.SGD([p for p in handle.parameters() if p.requires_grad], lr=1e-2).step()
    assert any(not torch.equal(before[n], p) for n, p in handle.named_parameters())
    assert all(p.dtype == torch.float32 for p in handle.parameters())


@pytest.mark.parametrize(("model_name", "method"), CELLS)
def test_bf16_outputs_stay_near_an_all_float32_reference(model_name, method):
    """Same weights, same perturbed delta: the bf16 model with float32 deltas is as far from the all-float32
    model as the bare bf16 backbone is from the bare float32 one (a few times that at most)."""
    zm = ZOO[model_name]
    inputs = zm.inputs()
    ref_model = zm.build()
    with torch.no_grad():
        ref_base = zm.run(ref_model, inputs)
    ref = METHODS[method](ref_model, **delta_kwargs(model_name, method))
    perturb(ref.parameters())
    _, model, _, base, handle = _bf16(model_name, method)
    with torch.no_grad():
        for p, q in zip(handle.parameters(), ref.parameters(), strict=True):
            p.copy_(q)  # float32 into float32: the very same delta
        expected, out = zm.run(ref_model, inputs), zm.run(model, inputs).float()
    backbone_error = (base.float() - ref_base).abs().max()
    assert not torch.equal(expected, ref_base)  # the delta does something
    assert (out - expected).abs().max() <= 4 * backbone_error + 1e-2


@pytest.mark.parametrize(("model_name", "method"), [(m, k) for m in MODELS for k in ("lora", "prefix", "soft_prompt")])
def test_save_and_load_keep_the_delta_dtype(tmp_path, model_name, method):
    zm, model, inputs, _, handle = _bf16(model_name, method)
    perturb(handle.parameters())
    with torch.no_grad():
        expected = zm.run(model, inputs)
    handle.save_finetuned(tmp_path / "ckpt")
    fresh = fxdelta.load(zm.build().to(BF16), tmp_path / "ckpt")
    (loaded,) = fxdelta.delta_models(fresh).values()
    assert _dtypes(loaded) == {torch.float32}
    with torch.no_grad():
        assert torch.equal(zm.run(fresh, inputs), expected)


def test_an_explicit_delta_dtype_is_kept_and_recorded(tmp_path):
    zm, model, inputs, base, handle = _bf16("llama", "lora", delta_dtype="bfloat16")
    assert _dtypes(handle) == {BF16} and handle.config.delta_dtype == "bfloat16"
    handle.save_finetuned(tmp_path / "ckpt")
    fresh = fxdelta.load(zm.build().to(BF16), tmp_path / "ckpt")
    assert _dtypes(next(iter(fxdelta.delta_models(fresh).values()))) == {BF16}
    model = zm.build().to(BF16)
    fxdelta.compile(model, {"delta_type": "lora"}, delta_dtype=torch.float64)
    (h,) = fxdelta.delta_models(model).values()
    assert _dtypes(h) == {torch.float64} and h.config.delta_dtype == "float64"
    with torch.no_grad():
        assert torch.equal(zm.run(model, inputs), base)


def test_float32_backbones_keep_float32_deltas_and_float64_ones_float64():
    for dtype in (torch.float32, torch.float64):
        model = ZOO["bert"].build().to(dtype)
        assert _dtypes(LoraModel(model)) == {dtype}


def test_bad_delta_dtypes_are_config_errors():
    for bad in ("int8", torch.int64, "float8", 32):
        with pytest.raises(ConfigError, match=r"delta_dtype must be None .* or a floating-point dtype"):
            DeltaConfig(delta_dtype=bad)
    assert DeltaConfig(delta_dtype=torch.bfloat16).delta_dtype == "bfloat16"
    assert DeltaConfig(delta_dtype="torch.float16").to_dict()["delta_dtype"] == "float16"
    model = ZOO["bert"].build()
    with pytest.raises(ConfigError, match="disagree"):
        fxdelta.compile(model, {"delta_type": "lora", "delta_dtype": "float64"}, delta_dtype="bfloat16")
    assert fxdelta.delta_models(model) == {}


@pytest.mark.parametrize("method", list(METHODS))
def test_deltas_cast_by_hand_keep_working(method):
    """bf16 deltas on a bf16 backbone, then cast to float32 by hand: they compute in float32."""
    zm, model, inputs, _, handle = _bf16("gpt2", method, delta_dtype="bfloat16")
    perturb(handle.parameters())
    with torch.no_grad():
        in_bf16 = zm.run(model, inputs)
        for e in handle.entries:
            e.delta.to(torch.float32)
        out = zm.run(model, inputs)
    assert _dtypes(handle) == {torch.float32} and out.dtype == BF16
    assert (out.float() - in_bf16.float()).abs().max() < 0.1 * in_bf16.float().abs().max()


@pytest.mark.parametrize("method", ["lora", "dora", "adapter", "prefix", "soft_prompt"])
def test_casting_the_backbone_after_compile_casts_its_deltas(method):
    """``model.to(dtype)`` after compile casts attached deltas with it (as in PEFT), and detached ones when they
    come back; a delta kept in float32 on an unchanged bf16 backbone stays float32 through detach/attach."""
    zm = ZOO["llama"]
    model, inputs = zm.build(), zm.inputs()
    a = METHODS[method](model, **delta_kwargs("llama", method))
    b = LoraModel(model, name="b")
    b.detach()
    model.to(BF16)
    assert _dtypes(a) == {BF16}
    b.attach()
    assert _dtypes(b) == {BF16}
    with torch.no_grad():
        assert zm.run(model, inputs).dtype == BF16
    c = LoraModel(model, name="c")  # built on the bf16 backbone: float32
    c.detach()
    c.attach()
    assert _dtypes(c) == {torch.float32}
    model.half()
    with torch.no_grad():
        assert zm.run(model, inputs).dtype == torch.float16
    assert {d for h in (a, b, c) for d in _dtypes(h)} == {torch.float16}


def test_hooks_only_deltas_compute_in_their_dtype():
    zm, model, inputs, base, handle = _bf16("bert", "dora", hooks_only=True)
    assert {s.kind.value for s in handle.state.sites if s.entries} == {"hooks"}
    with torch.no_grad():
        assert torch.equal(zm.run(model, inputs), base)
    perturb(handle.parameters())
    with torch.no_grad():
        assert not torch.equal(zm.run(model, inputs), base)


def test_a_delta_cast_in_part_is_an_error_naming_the_fix():
    zm, model, inputs, _, handle = _bf16("bert", "lora")
    layer = handle.entries[0].delta
    layer.lora_B.data = layer.lora_B.data.to(BF16)  # lora_A stays float32
    with pytest.raises(FxDeltaError, match=r"several dtypes \(torch.bfloat16, torch.float32\).*delta.to\(torch"):
        zm.run(model, inputs)


@pytest.mark.parametrize("method", ["lora", "dora", "adapter", "ia3"])
def test_torch_compile_runs_float32_deltas_on_bf16_without_graph_breaks(method):
    from torch._dynamo.utils import counters

    zm, model, inputs, _, handle = _bf16("bert", method)
    perturb(handle.parameters())
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        out = torch.compile(model, backend="eager")(**inputs).logits
        assert dict(counters["graph_break"]) == {}
        assert torch.equal(out, zm.run(model, inputs))
