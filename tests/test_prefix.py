"""Prefix tuning: the transformers-cache oracle, padded batches, generate with and without cache,
reparameterization and merge, checkpointing, and the errors."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

import fxdelta
from fxdelta import ConfigError, PrefixModel, SelectorError, UnsupportedModelError
from fxdelta.compiler.state import BackboneState
from fxdelta.sites.base import SiteKind

from hf_compat import enable_checkpointing, with_cache
from padding import assert_padded_row_equals_row_alone, padded_mask
from zoo import ZOO

P = 3
SMALL = dict(prefix_token_num=P, embed_dim=16, mid_dim=16)
# decoders users fine-tune today; Falcon and GPT-NeoX attentions take the cache as ``layer_past``
NEW_DECODERS = ["mistral", "gemma3_text", "phi3", "falcon", "falcon-new", "gpt_neox"]


def prefixed(name, seed=0, **kw):
    zm = ZOO[name]
    model = zm.build(seed)
    handle = PrefixModel(model, **{**SMALL, **kw})
    return zm, model, handle


def oracle_cache(model, handle, batch):
    """The prefixes written into transformers' own cache, layer by layer (what the oracle runs with)."""
    cache = DynamicCache(config=model.config)
    for layer_idx, e in enumerate(handle.entries):
        with torch.no_grad():
            k, v = e.delta.prefix()
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer_idx)
    return cache


@pytest.mark.parametrize("name", ["gpt2", "llama", *NEW_DECODERS])
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_equals_the_model_given_the_prefix_as_past_key_values(name, padding):
    _zm, model, handle = prefixed(name)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = {
        "none": torch.ones(2, 6, dtype=torch.long),
        "left": padded_mask([6, 3], 6, left=True),
        "right": padded_mask([6, 4], 6, left=False),
    }[padding]
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        handle.detach()
        extended = torch.cat([torch.ones(2, P, dtype=mask.dtype), mask], dim=1)
        want = model(input_ids=ids, attention_mask=extended, **with_cache(model, oracle_cache(model, handle, 2))).logits
    real = mask.bool()  # padded positions attend to nothing real: their logits are not compared
    assert (got - want)[real].abs().max() < 1e-5


@pytest.mark.parametrize(
    "name, left",
    [("bert", False), ("distilbert", False), ("t5", False), ("gpt2", True), ("llama", True)]
    + [(name, True) for name in NEW_DECODERS],
)
def test_padded_rows_equal_the_rows_alone(name, left):
    zm, model, _handle = prefixed(name)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    assert_padded_row_equals_row_alone(zm, model, ids, padded_mask([6, 4], 6, left), left)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "opt", "t5", "bart", *NEW_DECODERS])
def test_generate_with_and_without_cache(name):
    _zm, model, handle = prefixed(name)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(4))
    kw = dict(
        input_ids=ids,
        attention_mask=padded_mask([5, 3], 5, left=not model.config.is_encoder_decoder),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.no_grad():
        cached, uncached = model.generate(**kw, use_cache=True), model.generate(**kw, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=0)


def test_reparameterized_training_merge_and_checkpoint(tmp_path):
    zm, model, handle = prefixed("gpt2")
    x = zm.inputs()
    names = {n for n, _ in handle.named_parameters()}
    assert any(".encoder.mlp." in n for n in names)  # one MLP for all layers, stored once
    handle.freeze_module()
    model.train()
    loss = model(**x, labels=x["input_ids"]).loss
    loss.backward()
    assert all(p.grad is not None for p in handle.parameters())
    model.eval()
    with torch.no_grad():
        trained = zm.run(model, x)
    handle.save_finetuned(tmp_path / "prefix")  # saves the prefixes the MLP makes
    handle.fold_reparameterization()
    assert not handle.config.reparameterize and SiteKind.PREFIX_REFRESH not in {
        s.kind for s in BackboneState.find(model).sites
    }
    with torch.no_grad():
        torch.testing.assert_close(zm.run(model, x), trained, atol=1e-6, rtol=0)
    fresh = fxdelta.load(zm.build(), tmp_path / "prefix")
    (loaded,) = fxdelta.delta_models(fresh).values()
    assert not loaded.config.reparameterize
    assert sorted(n.rsplit(".", 1)[-1] for n, _ in loaded.named_parameters()) == ["key", "key", "value", "value"]
    with torch.no_grad():
        torch.testing.assert_close(zm.run(fresh, x), trained, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    grads = []
    for checkpointing in (False, True):
        zm, model, handle = prefixed(name, reparameterize=False)
        x = zm.inputs()
        handle.freeze_module()
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if checkpointing:
            enable_checkpointing(model)
        out = zm.run(model, x)
        out.pow(2).mean().backward()
        grads.append([p.grad.clone() for p in handle.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_two_prefixes_concatenate_and_detach_independently():
    zm, model, _first = prefixed("llama")
    x = zm.inputs()
    with torch.no_grad():
        base_first = zm.run(model, x)
        second = PrefixModel(model, **{**SMALL, "prefix_token_num": 2}, name="second")
        both = zm.run(model, x)
        assert not torch.allclose(both, base_first)
        second.detach()
        assert torch.equal(zm.run(model, x), base_first)
        second.attach()
        assert torch.equal(zm.run(model, x), both)


def test_errors_leave_the_model_alone():
    zm = ZOO["gpt2"]
    model = zm.build()
    with pytest.raises(ConfigError, match=r"must cover all of its 2 self-attention layers.*layers \[1\] have none"):
        PrefixModel(model, modified_modules=["h.0.attn"], **SMALL)
    assert BackboneState.find(model) is None or not BackboneState.find(model).active
    with pytest.raises(SelectorError, match="not a self-attention fxdelta can prefix"):
        PrefixModel(ZOO["deberta-v2"].build(), **SMALL)
    with pytest.raises(SelectorError, match="not a self-attention fxdelta can prefix"):
        PrefixModel(ZOO["mlp"].build(), modified_modules=["fc1"], **SMALL)
    with pytest.raises(ConfigError, match=r"PrefixConfig\.prefix_token_num must be a positive int"):
        PrefixModel(model, prefix_token_num=0)


class _NamedKV(torch.nn.Module):
    def forward(self, x, kv: "DynamicCache | None" = None, use_cache: bool = False):  # a string annotation
        return x


def test_the_cache_argument_is_found_by_its_type():
    from fxdelta.sites import hf

    assert hf.cache_parameter(ZOO["gpt_neox"].build().gpt_neox.layers[0].attention) == "layer_past"
    assert hf.cache_parameter(ZOO["falcon"].build().transformer.h[0].self_attention) == "layer_past"
    assert hf.cache_parameter(_NamedKV()) == "kv"
    assert hf.cache_parameter(torch.nn.Linear(2, 2)) is None


def test_an_attention_without_a_layer_index_is_refused_for_that_reason(monkeypatch):
    from fxdelta.sites import hf

    monkeypatch.setattr(hf, "_is_cache_annotation", lambda annotation: False)  # as if layer_past were unknown
    model = ZOO["gpt_neox"].build()
    with pytest.raises(UnsupportedModelError, match="without the layer index") as e:
        PrefixModel(model, **SMALL)
    assert "have none" not in str(e.value)
    assert BackboneState.find(model) is None or not BackboneState.find(model).active
