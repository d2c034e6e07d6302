"""Big models on the meta device: compile there, materialise, ``reset_deltas``, then train, save and load.

Two ways of materialising: ``to_empty`` + ``load_state_dict`` (deltas then hold uninitialised memory) and
``load_state_dict(assign=True)`` (deltas stay on meta). After ``reset_deltas`` every method's deltas must equal
those compile builds on the real weights after the same seed, bit for bit, and everything else must work.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import pytest
import torch
import transformers

import fxdelta
from fxdelta import CheckpointError, FxDeltaWarning, StateError
from fxdelta.methods.registry import METHODS

from zoo import ZOO

MODELS = ("bert", "gpt2", "llama")
ROUTES = ("to_empty", "assign")
SEED = 7  # the generator state both builds start from


def _spec(method: str) -> dict:
    return {"delta_type": method, **METHODS[method].small}


@functools.cache
def _real(name: str) -> tuple[dict, dict, torch.Tensor]:
    """The real weights (a stand-in for a checkpoint), the buffers, and the plain backbone's output."""
    zm = ZOO[name]
    model = zm.build(0)
    with torch.no_grad():
        base = zm.run(model, zm.inputs())
    return model.state_dict(), dict(model.named_buffers()), base


@functools.cache
def _reference(name: str, method: str) -> tuple[dict, torch.Tensor]:
    """What compile gives on the real weights after ``torch.manual_seed(SEED)``: the deltas and the output."""
    zm = ZOO[name]
    model = zm.build(0)
    torch.manual_seed(SEED)
    fxdelta.compile(model, _spec(method))
    with torch.no_grad():
        return fxdelta.delta_models(model)[method].state_dict(), zm.run(model, zm.inputs())


def materialise(model: torch.nn.Module, weights: dict, buffers: dict, route: str) -> None:
    if route == "to_empty":
        model.to_empty(device="cpu")
        model.load_state_dict(weights, strict=False)  # the checkpoint has no delta tensors
    else:
        # Fresh tensors, as read from a file: the model now owns them (shared ones would be trained along).
        model.load_state_dict({k: v.clone() for k, v in weights.items()}, strict=False, assign=True)
    # Non-persistent buffers (position ids, rotary frequencies) are in no state_dict: put them back as a loader does.
    for name, b in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = b.clone()
    model.tie_weights()  # both routes give tied weights (BERT's decoder, GPT-2's lm_head) one tensor each


def on_meta(build, spec) -> torch.nn.Module:
    with torch.device("meta"):
        model = build()
    with pytest.warns(FxDeltaWarning, match=r"meta device.*reset_deltas"):
        fxdelta.compile(model, spec)
    assert all(p.is_meta for p in model.parameters())
    return model


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", MODELS)
def test_reset_after_materialising_is_a_real_weights_build(name, method, route, tmp_path):
    zm, inputs = ZOO[name], ZOO[name].inputs()
    weights, buffers, base = _real(name)
    theirs, expected = _reference(name, method)
    model = on_meta(lambda: zm.build(0), _spec(method))
    materialise(model, weights, buffers, route)

    torch.manual_seed(SEED)
    assert fxdelta.reset_deltas(model) == [method]
    ours = fxdelta.delta_models(model)[method].state_dict()
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), f"{k} differs from the real-weights build"
    out = zm.run(model, inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)
    if METHODS[method].identity_at_init:
        assert torch.equal(out, base), "default init must leave the output bit-identical"

    params = _trainable(model)
    assert params and all(not p.is_meta for p in params)
    out.float().pow(2).mean().backward()
    deltas = [p for n, p in model.named_parameters() if ".deltas." in f".{n}"]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in deltas)
    assert any(bool(p.grad.abs().sum() > 0) for p in deltas)
    torch.optim.SGD(params, lr=0.5).step()
    with torch.no_grad():
        trained = zm.run(model, inputs)
    assert not torch.equal(trained, out), "a training step must change the output"

    fxdelta.save(model, tmp_path / "ckpt")
    fresh = zm.build(0)
    fxdelta.load(fresh, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(zm.run(fresh, inputs), trained)


def test_to_empty_keeps_parameters_assign_replaces_meta_ones():
    zm = ZOO["bert"]
    weights, buffers, _ = _real("bert")
    for route in ROUTES:
        model = on_meta(lambda: zm.build(0), _spec("lora"))
        materialise(model, weights, buffers, route)
        before = dict(fxdelta.delta_models(model)["lora"].named_parameters())
        fxdelta.reset_deltas(model)
        after = dict(fxdelta.delta_models(model)["lora"].named_parameters())
        kept = [after[k] is p for k, p in before.items()]
        # to_empty made real parameters: reset writes into them (an optimizer made meanwhile keeps them);
        # a parameter still on meta cannot hold values, so it is replaced (requires_grad kept).
        assert all(kept) if route == "to_empty" else not any(kept)
        assert all(p.requires_grad for p in after.values())


def test_a_forward_before_reset_is_caught():
    zm, inputs = ZOO["gpt2"], ZOO["gpt2"].inputs()
    weights, buffers, _ = _real("gpt2")
    model = on_meta(lambda: zm.build(0), _spec("adapter"))
    with pytest.raises(CheckpointError, match=r"meta device.*reset_deltas"):
        fxdelta.save(model, "unused")  # nothing to write: the deltas hold no values
    materialise(model, weights, buffers, "assign")
    for _ in range(2):  # every forward, until the deltas get values
        with pytest.raises(StateError, match=r"still on the meta device.*reset_deltas"):
            zm.run(model, inputs)

    model = on_meta(lambda: zm.build(0), _spec("adapter"))
    materialise(model, weights, buffers, "to_empty")
    with pytest.warns(FxDeltaWarning, match=r"never given values.*reset_deltas"):
        zm.run(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zm.run(model, inputs)  # said once


def test_loading_the_delta_tensors_with_the_backbone_gives_them_values():
    zm, inputs = ZOO["gpt2"], ZOO["gpt2"].inputs()
    _, buffers, _ = _real("gpt2")
    trained = zm.build(0)
    fxdelta.compile(trained, _spec("adapter"))
    with torch.no_grad():
        for p in fxdelta.delta_models(trained)["adapter"].parameters():
            p.add_(0.1)
        expected = zm.run(trained, inputs)
    model = on_meta(lambda: zm.build(0), _spec("adapter"))
    materialise(model, trained.state_dict(), buffers, "to_empty")  # a full state_dict, deltas included
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false alarm: these deltas are not uninitialised
        assert torch.equal(zm.run(model, inputs), expected)


def test_loading_onto_a_meta_backbone_is_refused(tmp_path):
    zm = ZOO["bert"]
    model = zm.build(0)
    fxdelta.compile(model, _spec("lora"))
    fxdelta.save(model, tmp_path / "ckpt")
    with torch.device("meta"):
        target = zm.build(0)
    with pytest.raises(CheckpointError, match=r"meta device.*materialise it"):
        fxdelta.load(target, tmp_path / "ckpt")
    assert fxdelta.delta_models(target) == {}


def test_a_backbone_still_on_meta_cannot_be_reset():
    model = on_meta(lambda: ZOO["llama"].build(0), _spec("dora"))
    with pytest.raises(StateError, match="still on meta"):
        fxdelta.reset_deltas(model)
    assert all(p.is_meta for p in model.parameters())


def test_detached_deltas_are_reset_and_attach_afterwards():
    zm, inputs = ZOO["llama"], ZOO["llama"].inputs()
    weights, buffers, base = _real("llama")
    model = on_meta(lambda: zm.build(0), [_spec("lora"), _spec("ia3")])
    fxdelta.delta_models(model)["ia3"].detach()
    materialise(model, weights, buffers, "assign")
    with pytest.raises(StateError, match="reset_deltas"):  # still on meta: .to(device) cannot copy it
        fxdelta.delta_models(model)["ia3"].attach()
    assert fxdelta.reset_deltas(torch.nn.DataParallel(model)) == ["lora", "ia3"]  # wrappers are looked through
    fxdelta.delta_models(model)["ia3"].attach()
    assert torch.equal(zm.run(model, inputs), base)


def test_task_head_copies_are_taken_again_from_the_materialised_head(tmp_path):
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3
    )
    ids = torch.randint(3, 64, (2, 6))
    torch.manual_seed(0)
    real = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        base = real(ids).logits
    head = {k: v.clone() for k, v in real.classifier.state_dict().items()}
    weights, buffers = real.state_dict(), dict(real.named_buffers())
    fxdelta.compile(real, _spec("lora"))
    for route in ROUTES:
        model = on_meta(lambda: transformers.BertForSequenceClassification(config).eval(), [_spec("lora")])
        lora = fxdelta.delta_models(model)["lora"]
        materialise(model, weights, buffers, route)
        fxdelta.reset_deltas(model)
        assert all(not p.is_meta for p in lora.heads.values())
        assert lora.heads["classifier.weight"] is model.classifier.weight  # the copy in use is the model's
        with torch.no_grad():
            assert torch.equal(model(ids).logits, base)
            model.classifier.weight.add_(1.0)  # train the delta's copy
        lora.detach()  # the backbone's own head comes back: the materialised one
        assert all(torch.equal(model.classifier.state_dict()[k], v) for k, v in head.items())
        lora.attach()
        fxdelta.save(model, tmp_path / route)
        torch.manual_seed(0)
        fresh = transformers.BertForSequenceClassification(config).eval()
        fxdelta.load(fresh, tmp_path / route)
        with torch.no_grad():
            assert torch.equal(fresh(ids).logits, model(ids).logits)
    # On real weights the copy in use starts over from the backbone's own head.
    with torch.no_grad():
        real.classifier.weight.add_(1.0)  # the delta's copy, trained
    torch.manual_seed(SEED)
    fxdelta.reset_deltas(real)
    with torch.no_grad():
        assert torch.equal(real(ids).logits, base)


def test_reset_on_real_weights_starts_the_deltas_over():
    zm, inputs = ZOO["bert"], ZOO["bert"].inputs()
    _, _, base = _real("bert")
    assert fxdelta.reset_deltas(zm.build(0)) == []  # no deltas, nothing to reset
    model = zm.build(0)
    fxdelta.compile(model, _spec("dora"))
    with torch.no_grad():
        for p in fxdelta.delta_models(model)["dora"].parameters():
            p.add_(0.1)  # trained
    torch.manual_seed(SEED)
    fxdelta.reset_deltas(model)
    assert torch.equal(zm.run(model, inputs), base)
    theirs, _ = _reference("bert", "dora")
    assert all(torch.equal(v, theirs[k]) for k, v in fxdelta.delta_models(model)["dora"].state_dict().items())
    fxdelta.merge(model)
    with pytest.raises(StateError, match="merged"):
        fxdelta.reset_deltas(model)


def _readme_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Big models on the meta device", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_snippets_run():
    first, second = _readme_blocks()
    scope: dict = {}
    with pytest.warns(FxDeltaWarning, match="reset_deltas"):
        exec(first, scope)  # it asserts identity at init itself
    with pytest.warns(FxDeltaWarning, match="reset_deltas"):
        exec(second, scope)  # the accelerate variant, in the same scope (config, weights, ids)
