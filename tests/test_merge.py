"""Merging deltas into backbone weights: fold, check, unmerge bit for bit, and refuse what cannot fold."""

import dataclasses

import pytest
import torch

import fxdelta
from fxdelta import MergeError
from fxdelta.compiler.state import BackboneState

from invariants import patch, perturb, snapshot, state_copy
from zoo import TORCH_MODELS, ZOO

FAMILIES = ["bert", "gpt2", "llama", "bart"]
MERGEABLE = ["lora", "dora", "ia3", "bitfit"]
# IA3's default positions include the FFN activation, which has no weight to fold into (tested below).
ON_LINEAR = {"ia3": {"modified_modules": ["attn.k", "attn.v"]}}
NO_BIAS = {("llama", "bitfit"), ("t5", "bitfit")}  # their projections and norms have no bias to fold into


def _weights(model):
    return {k: v for k, v in state_copy(model).items() if ".deltas." not in k}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _patched(name, method, seed=0):
    p = patch(name, method, **ON_LINEAR.get(method, {}))
    perturb(p.handle.parameters(), seed=seed)
    return p


@pytest.mark.parametrize("method", MERGEABLE)
@pytest.mark.parametrize("name", [*FAMILIES, "t5"])
def test_merge_then_unmerge(name, method):
    p = _patched(name, method)
    with_delta, weights = p.out(), _weights(p.model)
    assert (with_delta - p.base).abs().max() > 1e-4  # the perturbed delta does something
    if (name, method) in NO_BIAS:
        with pytest.raises(MergeError, match="has no bias"):
            fxdelta.merge(p.model)
        assert _same(_weights(p.model), weights) and torch.equal(p.out(), with_delta) and p.handle.attached
        return
    report = fxdelta.merge(p.model)
    assert p.handle.merged and not p.handle.attached
    assert report.deltas == (p.handle.name,) and report.checks
    assert all(c.error <= c.bound for c in report.checks) and report.max_error < 1e-5
    torch.testing.assert_close(p.out(), with_delta, atol=1e-5, rtol=1e-5)
    merged = snapshot(p.model)  # no sites, no deltas children: the backbone's own state_dict keys
    assert merged.state_keys == p.before.state_keys and merged.forward_attrs == p.before.forward_attrs
    assert not _same(_weights(p.model), weights)

    assert fxdelta.unmerge(p.model) == [p.handle.name]
    assert _same(_weights(p.model), weights)  # bit for bit: kept, not subtracted
    assert p.handle.attached and not p.handle.merged
    assert torch.equal(p.out(), with_delta)


@pytest.mark.parametrize("method", MERGEABLE)
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_plain_torch_models(name, method):
    """Convolutions, batch and layer norms, nn.TransformerEncoder's hooked linears; IA3 on TinyMLP's GELU is refused."""
    p = _patched(name, method)
    with_delta, weights = p.out(), _weights(p.model)
    if (name, method) == ("mlp", "ia3"):
        with pytest.raises(MergeError, match=r"on act \(GELU\).*folds only into"):
            fxdelta.merge(p.model)
        assert _same(_weights(p.model), weights) and torch.equal(p.out(), with_delta)
        return
    fxdelta.merge(p.model)
    torch.testing.assert_close(p.out(), with_delta, atol=1e-5, rtol=1e-5)
    fxdelta.unmerge(p.model)
    assert _same(_weights(p.model), weights) and torch.equal(p.out(), with_delta)


def test_hook_sites_are_checked_with_their_delta():
    """A probe runs fxdelta's hooks (only the user's are set aside): else every hook-site merge would look wrong."""
    p = patch("bert", "lora", hooks_only=True)
    perturb(p.handle.parameters())
    with_delta = p.out()
    report = p.handle.merge_into_backbone()
    assert report.max_error < 1e-5
    torch.testing.assert_close(p.out(), with_delta, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [*FAMILIES, "t5"])
def test_ia3_on_the_ffn_activation_folds_into_the_down_projection(name):
    """IA3's default ff.act scales what ff.w2 reads: its input columns take the scale (checked on a module
    holding both; BERT's whole model, BART's layer without its optional arguments)."""
    p = patch(name, "ia3")
    perturb(p.handle.parameters())
    with_delta, weights = p.out(), _weights(p.model)
    report = fxdelta.merge(p.model)
    changed = {k for k in weights if not torch.equal(weights[k], _weights(p.model)[k])}
    assert any(
        k.endswith(down)
        for k in changed
        for down in ("output.dense.weight", "c_proj.weight", "fc2.weight", "down_proj.weight", "wo.weight")
    )
    assert report.max_error < 1e-5
    torch.testing.assert_close(p.out(), with_delta, atol=1e-5, rtol=1e-5)
    fxdelta.unmerge(p.model)
    assert _same(_weights(p.model), weights) and torch.equal(p.out(), with_delta)


def test_a_merge_of_several_deltas_is_all_or_none():
    p = _patched("llama", "lora")
    bitfit = fxdelta.BitFitModel(p.model)  # Llama's projections and norms have no bias to fold into
    perturb(bitfit.parameters(), seed=4)
    out, weights = p.out(), _weights(p.model)
    with pytest.raises(MergeError, match=r"bitfit.*has no bias"):
        fxdelta.merge(p.model)
    assert not p.handle.merged and p.handle.attached and bitfit.attached  # lora merged first, then was put back
    assert _same(_weights(p.model), weights) and torch.equal(p.out(), out)


def test_conv1d_weights_fold_transposed():
    """GPT-2's Conv1D stores (in, out): the LoRA update lands transposed, checked against B A by hand."""
    p = _patched("gpt2", "lora")
    entry = p.handle.entries[0]
    layer = p.model.get_submodule(entry.target)
    before = layer.weight.detach().clone()
    p.handle.merge_into_backbone()
    d = entry.delta
    torch.testing.assert_close(layer.weight - before, (d.lora_B @ d.lora_A * d.scaling).t())


@pytest.mark.parametrize(
    "method, kwargs, why",
    [
        ("adapter", {}, "adapter.*nonlinearity"),
        ("prefix", {}, "prefix.*keys and values"),
        ("soft_prompt", {}, "soft_prompt.*embeddings in front"),
    ],
)
def test_what_cannot_fold_is_refused_and_changes_nothing(method, kwargs, why):
    p = patch("bert", method, **kwargs)
    perturb(p.handle.parameters())
    out, weights = p.out(), _weights(p.model)
    with pytest.raises(MergeError, match=why):
        p.handle.merge_into_backbone()
    assert torch.equal(p.out(), out) and _same(_weights(p.model), weights)
    assert p.handle.attached and not p.handle.merged


def test_merge_folds_what_it_can_and_warns_about_the_rest():
    p = _patched("bert", "lora")
    adapter = fxdelta.AdapterModel(p.model, bottleneck_dim=4)
    perturb(adapter.parameters(), seed=3)
    out = p.out()
    with pytest.warns(fxdelta.FxDeltaWarning, match=r"stay attached, unmerged: adapter.*nonlinearity"):
        fxdelta.merge(p.model)
    assert p.handle.merged and adapter.attached
    torch.testing.assert_close(p.out(), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(MergeError, match=r"merge_and_unload would drop.*adapter"):
        fxdelta.merge_and_unload(p.model)


def test_nothing_to_merge_is_an_error():
    p = _patched("bert", "adapter")
    with pytest.raises(MergeError, match=r"nothing on this BertForMaskedLM can be merged.*nonlinearity"):
        fxdelta.merge(p.model)
    p.handle.detach()
    with pytest.raises(MergeError, match="no attached deltas"):
        fxdelta.merge(p.model)


def test_a_merge_beyond_the_bound_is_refused_and_changes_nothing():
    """The check is what catches a wrong fold: here LoRA's update lands with the wrong sign."""
    p = _patched("bert", "lora")
    right = p.handle.method.fold

    def wrong(delta, module, params):
        return {"weight": 2 * params["weight"] - right(delta, module, params)["weight"]}

    p.handle.method = dataclasses.replace(p.handle.method, fold=wrong)
    out, weights = p.out(), _weights(p.model)
    with pytest.raises(MergeError, match=r"above the bound.*nothing was changed"):
        fxdelta.merge(p.model)
    assert torch.equal(p.out(), out) and _same(_weights(p.model), weights)
    assert p.handle.attached and not p.handle.merged


def test_bfloat16_merges_within_its_looser_bound():
    zm = ZOO["llama"]
    model, inputs = zm.build().to(torch.bfloat16), zm.inputs()
    handle = fxdelta.LoraModel(model)
    perturb(handle.parameters())
    out, weights = zm.run(model, inputs), _weights(model)
    report = fxdelta.merge(model)
    assert all(c.bound >= 16 * 2**-7 for c in report.checks)  # bfloat16's eps, not float32's
    assert all(c.error <= c.bound for c in report.checks) and report.max_error > 0
    torch.testing.assert_close(zm.run(model, inputs), out, atol=0.1, rtol=0.05)
    fxdelta.unmerge(model)
    assert _same(_weights(model), weights) and torch.equal(zm.run(model, inputs), out)


def test_while_merged():
    p = _patched("bert", "lora")
    with_delta, weights = p.out(), _weights(p.model)
    first = p.handle.merge_into_backbone()
    merged = _weights(p.model)
    assert p.handle.merge_into_backbone() == first and _same(_weights(p.model), merged)  # a second merge: no-op
    assert fxdelta.merge(p.model).checks == ()  # nothing new to merge
    with pytest.raises(MergeError, match="apply it twice; unmerge it first"):
        p.handle.attach()
    p.handle.detach()  # detaching a merged delta unmerges it: the backbone as it was
    assert _same(_weights(p.model), weights) and not p.handle.attached and not p.handle.merged
    torch.testing.assert_close(p.out(), p.base, atol=0, rtol=0)
    p.handle.attach()
    assert torch.equal(p.out(), with_delta)


def test_saving_a_merged_delta_writes_its_tensors(tmp_path):
    p = _patched("gpt2", "lora")
    with_delta = p.out()
    fxdelta.merge(p.model)
    p.handle.save_finetuned(tmp_path / "one")
    fxdelta.save(p.model, tmp_path / "all")
    for folder in ("one", "all"):
        fresh = p.zm.build()
        fxdelta.load(fresh, tmp_path / folder)
        assert torch.equal(p.zm.run(fresh, p.inputs), with_delta)


def test_training_merged_weights_blocks_unmerge():
    p = _patched("bert", "lora")
    p.handle.merge_into_backbone()
    weight = p.model.get_submodule(p.handle.targets[0]).weight
    with torch.no_grad():
        weight.add_(1e-3)  # an optimizer step on the merged weights
    with pytest.raises(MergeError, match="was written while lora was merged"):
        fxdelta.unmerge(p.model)
    assert p.handle.merged


def test_a_moved_weight_blocks_unmerge():
    p = _patched("bert", "lora")
    p.handle.merge_into_backbone()
    p.model.double()
    with pytest.raises(MergeError, match="moved to another dtype or device"):
        fxdelta.unmerge(p.model)


def test_state_dict_is_whole_while_merged():
    p = _patched("bert", "lora")
    p.handle.freeze_module(set_state_dict=True)
    trimmed = p.model.state_dict().keys()
    assert len(trimmed) < len(p.before.state_keys)
    fxdelta.merge(p.model)
    assert tuple(p.model.state_dict()) == p.before.state_keys  # the merged model, every tensor
    fxdelta.unmerge(p.model)
    assert p.model.state_dict().keys() == trimmed


def test_unmerge_goes_latest_first():
    p = _patched("bert", "lora")
    other = fxdelta.LoraModel(p.model, lora_r=2)
    perturb(other.parameters(), seed=5)
    with_both, weights = p.out(), _weights(p.model)
    p.handle.merge_into_backbone()
    other.merge_into_backbone()  # into the same q and v weights
    with pytest.raises(MergeError, match=r"lora_1 was merged after lora.*unmerge it first"):
        p.handle.unmerge_from_backbone()
    assert fxdelta.unmerge(p.model) == ["lora_1", "lora"]
    assert _same(_weights(p.model), weights) and torch.equal(p.out(), with_both)


def test_merge_and_unload_leaves_a_plain_model():
    p = _patched("llama", "dora")
    detached = fxdelta.IA3Model(p.model, modified_modules=["attn.k"], attach=False)
    with_delta = p.out()
    assert fxdelta.merge_and_unload(p.model) is p.model
    assert BackboneState.find(p.model) is None and fxdelta.delta_models(p.model) == {}
    assert snapshot(p.model) == p.before  # no hooks, no instance forwards, the same state_dict keys
    torch.testing.assert_close(p.out(), with_delta, atol=1e-5, rtol=1e-5)
    for h in (p.handle, detached):
        with pytest.raises(MergeError, match="merge_and_unload folded the deltas into the backbone for good"):
            h.attach()


def test_tied_weights_are_refused():
    p = patch("gpt2", "lora", modified_modules=["lm_head"])
    perturb(p.handle.parameters())
    with pytest.raises(MergeError, match=r"wte.weight is shared with \['lm_head.weight'\] \(tied weights\)"):
        fxdelta.merge(p.model)
    assert p.handle.attached


def test_through_a_wrapper():
    p = _patched("bert", "bitfit")
    wrapped = torch.compile(p.model)
    fxdelta.merge(wrapped)
    assert p.handle.merged
    fxdelta.unmerge(wrapped)
    assert p.handle.attached


def test_merging_takes_the_thread_gate_and_leaves_random_streams_alone():
    p = _patched("bert", "lora")
    seen = []

    def hook(module, args, out):
        try:
            fxdelta.merge(p.model)
        except fxdelta.StateError as e:
            seen.append(e)

    handle = p.model.bert.embeddings.register_forward_hook(hook)
    p.out()
    handle.remove()
    assert seen and "from inside a forward" in str(seen[0]) and p.handle.attached
    calls = []  # the user's hooks do not see the probe inputs
    p.model.get_submodule(p.handle.targets[0]).register_forward_hook(lambda *args: calls.append(1))
    state = torch.random.get_rng_state()
    fxdelta.merge(p.model)
    assert torch.equal(torch.random.get_rng_state(), state) and not calls


def test_the_readme_snippet():
    import transformers

    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    lora = fxdelta.LoraModel(model, lora_r=4)
    perturb(lora.parameters(), scale=0.1)
    ids = torch.randint(0, 100, (1, 8))
    before = model(ids).logits
    report = fxdelta.merge(model)
    assert report.checks[0].path == "transformer.h.0.attn.c_attn" and report.max_error < report.checks[0].bound
    fxdelta.unmerge(model)
    assert torch.equal(model(ids).logits, before)
    plain = fxdelta.merge_and_unload(model)
    assert plain is model and fxdelta.delta_models(plain) == {}
    torch.testing.assert_close(plain(ids).logits, before, atol=1e-5, rtol=1e-5)
