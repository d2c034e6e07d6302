"""Each method's math, checked against a hand computation, and its trainable-parameter formula."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

import fxdelta
from fxdelta import CompacterConfig, CompacterModel, DoraModel, IA3Model, LowRankAdapterModel
from fxdelta.methods.compacter import PHMLinear


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 8))


def randomize(handle, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return handle


X = torch.randn(4, 8, generator=torch.Generator().manual_seed(9))


def test_dora_matches_its_formula():
    model = linear_model()
    handle = randomize(DoraModel(model, modified_modules=["0"], lora_r=2, lora_alpha=4))
    (delta,) = [e.delta for e in handle.entries]
    with torch.no_grad():
        got = model(X)  # the delta sits in the Sequential's traced graph, not in model[0]'s own forward
        w, b = model[0].weight, model[0].bias  # (12, 8), (12,)
        direction = w + (delta.lora_B @ delta.lora_A) * (4 / 2)
        expected = model[2](model[1](F.linear(X, direction) * (delta.magnitude / direction.norm(dim=1)) + b))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dora_gradients_reach_magnitude_and_lora_not_the_norm():
    model = linear_model()
    handle = DoraModel(model, modified_modules=["0"])
    handle.freeze_module()
    model(X).sum().backward()
    (delta,) = [e.delta for e in handle.entries]
    assert delta.magnitude.grad is not None and delta.lora_A.grad is not None
    assert model[0].weight.grad is None


def test_ia3_rescales():
    model = linear_model()
    handle = randomize(IA3Model(model, modified_modules=["1"]))  # the activation between the layers
    (delta,) = [e.delta for e in handle.entries]
    with torch.no_grad():
        expected = model[2](F.gelu(model[0](X)) * delta.ia3_l)
        torch.testing.assert_close(model(X), expected)  # h + (l - 1) h rounds differently from l h


def test_phm_weight_is_a_sum_of_kronecker_products():
    torch.manual_seed(0)
    layer = PHMLinear(8, 12, CompacterConfig(factorized_phm=False), bias=True)
    with torch.no_grad():
        expected = sum(torch.kron(layer.phm_rule[i], layer.W[i]) for i in range(4))  # (8, 12)
        torch.testing.assert_close(layer.weight(), expected)
        torch.testing.assert_close(layer(X), X @ expected + layer.b)


def test_compacter_frozen_rule_is_saved_but_not_trained(tmp_path):
    model = linear_model()
    handle = CompacterModel(model, modified_modules=["2"], reduction_factor=2, learn_phm=False)
    names = {n for n, _ in handle.named_parameters()}
    assert not any("phm_rule" in n for n in names)
    assert any("phm_rule" in n for n in handle.state_dict())
    randomize(handle)
    handle.save_finetuned(tmp_path / "c")
    fresh = linear_model()
    fxdelta.load(fresh, tmp_path / "c")
    assert torch.equal(fresh(X), model(X))


def test_low_rank_adapter_projections_are_rank_r():
    model = linear_model()
    handle = LowRankAdapterModel(model, modified_modules=["2"], reduction_factor=2, low_rank_rank=2)
    (delta,) = [e.delta for e in handle.entries]
    with torch.no_grad():
        down = delta.down_proj.W_left @ delta.down_proj.W_right  # (8, 4)
        assert torch.linalg.matrix_rank(down) <= 2
        assert torch.equal(delta.up_proj.W_right, torch.zeros_like(delta.up_proj.W_right))  # identity at init


# -- trainable parameters: the README's formulas ---------------------------------------------------
def formula(method: str, d: int, layers: int, ff: int, **kw) -> int:
    """Trainable parameters per method with default positions, for a BERT/GPT-2-shaped encoder
    (hidden d, ``layers`` blocks, FFN width ``ff``); the same formulas are in the README."""
    if method == "lora":  # q and v: A (r, d) + B (d, r)
        r = kw.get("lora_r", 8)
        return layers * 2 * (2 * d * r)
    if method == "dora":  # LoRA + a magnitude per output feature
        r = kw.get("lora_r", 8)
        return layers * 2 * (2 * d * r + d)
    if method == "adapter":  # after attn.o and ff.w2: down (d->m) + up (m->d) with biases
        m = kw.get("bottleneck_dim", 24)
        return layers * 2 * (2 * d * m + m + d)
    if method == "bitfit":  # a bias on q, k, v, o, ff.w1, ff.w2 and the two block norms
        return layers * (4 * d + ff + d + 2 * d)
    if method == "ia3":  # k, v and the FFN activation
        return layers * (2 * d + ff)
    if method == "low_rank_adapter":  # two rank-1 projections d <-> m, with biases
        m, r = d // kw.get("reduction_factor", 32), kw.get("low_rank_rank", 1)
        return layers * 2 * ((d * r + r * m + m) + (m * r + r * d + d))
    if method == "compacter":  # two PHM layers: n rules (n, n, n) + factorized weights + biases
        n, m = kw.get("hypercomplex_division", 4), d // kw.get("reduction_factor", 16)

        def phm(i, o):
            return n**3 + n * (i // n) + n * (o // n) + o  # rank-1 factors

        return layers * 2 * (phm(d, m) + phm(m, d))
    if method == "parallel_adapter":  # around attention, and FFN input -> FFN output
        m = kw.get("bottleneck_dim", 24)
        return layers * 2 * (2 * d * m + m + d)
    if method == "prefix":  # the reparameterization MLP: embedding, hidden layer, all layers' keys and values
        p, e, h = kw.get("prefix_token_num", 6), kw.get("embed_dim", 512), kw.get("mid_dim", 512)
        return p * e + e * h + h + h * (layers * 2 * d) + layers * 2 * d
    if method == "prefix (merged)":
        return layers * 2 * kw.get("prefix_token_num", 6) * d
    if method == "soft_prompt":  # N soft tokens of width d
        return kw.get("soft_token_num", 100) * d
    raise KeyError(method)


@pytest.mark.parametrize(
    "method",
    [
        "lora",
        "dora",
        "adapter",
        "bitfit",
        "ia3",
        "low_rank_adapter",
        "compacter",
        "parallel_adapter",
        "prefix",
        "prefix (merged)",
        "soft_prompt",
    ],
)
def test_parameter_counts_follow_the_formula(method):
    torch.manual_seed(0)
    d, layers, ff = 64, 2, 128  # a miniature of BERT-base (768, 12, 3072); the README has the full sizes
    model = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=50, hidden_size=d, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=ff
        )
    )
    fxdelta.compile(model, {"delta_type": method.split()[0]})
    (handle,) = fxdelta.delta_models(model).values()
    if "merged" in method:
        handle.fold_reparameterization()
    assert handle.num_parameters() == formula(method, d, layers, ff)


def test_default_positions_follow_opendelta_self_attention_and_final_norms():
    """T5's LoRA defaults are the self-attention q/v only (no EncDecAttention), as in OpenDelta; BitFit's
    include every stack's final norm (T5's final_layer_norm, GPT-2's ln_f)."""
    from zoo import ZOO

    t5 = ZOO["t5"].build()
    lora = fxdelta.LoraModel(t5)
    assert lora.targets == [
        f"{stack}.block.{i}.layer.0.SelfAttention.{m}"
        for stack in ("encoder", "decoder")
        for i in range(2)
        for m in ("q", "v")
    ]
    assert {"encoder.final_layer_norm", "decoder.final_layer_norm"} <= set(fxdelta.BitFitModel(t5).targets)
    assert "transformer.ln_f" in fxdelta.BitFitModel(ZOO["gpt2"].build()).targets
