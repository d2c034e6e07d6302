"""The delta configs shipped in OpenDelta's examples/examples_prompt/configs/*/*.json, run on fxdelta.

Each dict holds a config's delta keys only: ``delta_type``, ``modified_modules``, ``unfrozen_modules`` and
the method's hyper-parameters that OpenDelta's delta class takes (compacter_blenderbot-3b's
``hypercomplex_adapters``, ``normalize_phm_weight`` and ``phm_clamp`` are left out: OpenDelta's
``from_config`` drops them too). Each runs as src/run.py runs it: ``AutoDeltaConfig.from_dict``,
``AutoDeltaModel.from_config`` and ``freeze_module(set_state_dict=True)``, on the model class the
example's backbones/*.py loads, built tiny from its config class (hidden 64 for Compacter, whose
default reduction factor 16 and division 4 need it; 28 GPT-J layers, since the config names layers
20-27; a vocabulary and position table that hold 100 soft tokens).

Selectors in these configs are OpenDelta's: a name that matches nothing is silently skipped there, and
"attn"/"ff" are common-structure names. The tests expect what the config asks for where the model has
those modules, and fxdelta's clear error where it has none (transformers 5 renamed ViT's and BEiT's).
An ``unfrozen_modules`` name the model lacks is read as a common-structure name (``layer_norm``: the
norms of every layer), so these configs train what their authors meant; one that names nothing even so
(``final_layer_norm`` on BERT) is a warning.
"""

import re

import pytest
import torch
from od_tiny import ids, tiny, tiny_clip, trainable, under

import fxdelta
from fxdelta import AutoDeltaConfig, AutoDeltaModel

UNFROZEN = ["deltas", "layer_norm", "final_layer_norm"]
COMPACTER = {  # compacter_blenderbot-3b/sst2.json's Compacter hyper-parameters
    "factorized_phm": True,
    "factorized_phm_rule": False,
    "hypercomplex_division": 4,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "learn_phm": True,
    "non_linearity": "gelu_new",
    "phm_c_init": "normal",
    "phm_init_range": 0.0001,
    "shared_phm_rule": False,
    "use_bias_down_sampler": True,
    "use_bias_up_sampler": True,
}


def run_py(model, config_dict):
    """What src/run.py does with the config (lines 169-174)."""
    delta_config = AutoDeltaConfig.from_dict(config_dict)
    delta_model = AutoDeltaModel.from_config(delta_config, backbone_model=model)
    delta_model.freeze_module(set_state_dict=True)
    return delta_model


def check_freeze(model, delta_model, unfrozen, common=None):
    """Trainable: the ``unfrozen`` names, plus the modules (a regex) the common structure reads them as."""
    expected = {n for n, _ in model.named_parameters() if under(n, unfrozen)}
    if common:
        expected |= {n for n, _ in model.named_parameters() if re.fullmatch(rf"(?:{common})\.(?:weight|bias)", n)}
    assert {n for n, _ in delta_model.named_parameters()} <= expected
    assert trainable(model) == expected
    assert set(model.state_dict()) == expected


def seq2seq_inputs():
    return dict(input_ids=ids(), decoder_input_ids=ids(seq=4))


def check_runs(model, inputs, before):
    with torch.no_grad():
        assert model(**inputs).logits.shape == before.shape


def test_adapter_clip_vit_base_patch32_beans():
    model = tiny_clip()  # backbones/clip.py: CLIPModel; no modified_modules: the default positions
    config = {"delta_type": "adapter", "bottleneck_dim": 24, "unfrozen_modules": UNFROZEN}
    with pytest.raises(fxdelta.UnsupportedModelError, match="modified_modules"):  # no CLIP mapping in OpenDelta
        run_py(model, config)


def test_adapter_opt_350m_wikitext():
    model = tiny("OPTForCausalLM")
    before = model(input_ids=ids()).logits
    config = {
        "delta_type": "adapter",
        "bottleneck_dim": 24,
        "unfrozen_modules": UNFROZEN,
        "modified_modules": ["self_attn"],
    }
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"model.decoder.layers.{i}.self_attn" for i in range(2)]
    check_freeze(model, delta_model, UNFROZEN, common=r"model\.decoder\.layers\.\d+\.self_attn_layer_norm")
    check_runs(model, dict(input_ids=ids()), before)


def test_adapter_vit_large_patch16_224_in21k_beans():
    model = tiny("ViTForImageClassification", num_labels=3)
    config = {
        "delta_type": "adapter",
        "bottleneck_dim": 24,
        "unfrozen_modules": UNFROZEN,
        "modified_modules": ["output"],
    }
    with pytest.raises(fxdelta.SelectorError, match="'output'"):  # transformers 5's ViT has no *.output modules
        run_py(model, config)
    assert fxdelta.delta_models(model) == {}


def test_bitfit_t5_large_rte():
    model = tiny("T5ForConditionalGeneration")
    before = model(**seq2seq_inputs()).logits
    config = {"delta_type": "bitfit", "unfrozen_modules": UNFROZEN, "modified_modules": ["attn", "ff", "layer_norm"]}
    delta_model = run_py(model, config)
    for stack in ("encoder", "decoder"):  # the attention, the feed-forward and the norms of every block
        for block in range(2):
            mine = [t for t in delta_model.targets if t.startswith(f"{stack}.block.{block}.")]
            assert any(".SelfAttention" in t for t in mine)
            assert any(".DenseReluDense" in t for t in mine)
            assert any(t.endswith("layer_norm") for t in mine)
    check_freeze(model, delta_model, UNFROZEN)
    check_runs(model, seq2seq_inputs(), before)


def test_compacter_blenderbot_3b_sst2():
    model = tiny("BlenderbotForConditionalGeneration", d_model=64)
    before = model(**seq2seq_inputs()).logits
    config = {"delta_type": "compacter", **COMPACTER, "unfrozen_modules": UNFROZEN, "modified_modules": ["fc2"]}
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"model.{s}.layers.{i}.fc2" for s in ("encoder", "decoder") for i in range(2)]
    check_freeze(model, delta_model, UNFROZEN)
    check_runs(model, seq2seq_inputs(), before)


def test_compacter_deberta_v2_xlarge_mnli():
    model = tiny("DebertaV2ForMaskedLM", hidden_size=64, intermediate_size=96)
    before = model(input_ids=ids()).logits
    config = {"delta_type": "compacter", "unfrozen_modules": UNFROZEN, "modified_modules": ["attention"]}
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"deberta.encoder.layer.{i}.attention" for i in range(2)]
    check_freeze(
        model, delta_model, UNFROZEN, common=r"deberta\.encoder\.layer\.\d+\.(?:attention\.)?output\.LayerNorm"
    )
    check_runs(model, dict(input_ids=ids()), before)


def test_compacter_long_t5_tglobal_large_rte():
    model = tiny("LongT5ForConditionalGeneration", d_model=64)
    config = {"delta_type": "compacter", "unfrozen_modules": UNFROZEN, "modified_modules": ["attn", "ff", "layer_norm"]}
    with pytest.raises(fxdelta.SelectorError, match="'attn'"):  # LongT5 has no common structure mapping
        run_py(model, config)
    assert fxdelta.delta_models(model) == {}


def test_lora_beit_large_patch16_224_cifar10():
    model = tiny("BeitForImageClassification", num_labels=10)
    config = {"delta_type": "lora", "unfrozen_modules": UNFROZEN, "modified_modules": ["query", "value"]}
    with pytest.raises(fxdelta.SelectorError, match="'query'"):  # transformers 5's BEiT names them q_proj/v_proj
        run_py(model, config)
    assert fxdelta.delta_models(model) == {}


def test_lora_gpt_j_6b_wikitext():
    model = tiny("GPTJForCausalLM", n_layer=28)
    before = model(input_ids=ids()).logits
    layers = [f"{i}.attn.q_proj" for i in range(20, 28)]
    config = {"delta_type": "lora", "unfrozen_modules": UNFROZEN, "modified_modules": layers}
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"transformer.h.{name}" for name in layers]
    check_freeze(model, delta_model, UNFROZEN)
    check_runs(model, dict(input_ids=ids()), before)


@pytest.mark.parametrize(
    ("source", "model_class"),
    [
        ("lora_roberta-large/superglue-boolq", "RobertaForMaskedLM"),
        ("lora_xlm-roberta-large/superglue-wic", "XLMRobertaForMaskedLM"),
    ],
    ids=["roberta-large", "xlm-roberta-large"],
)
def test_lora_roberta_large_and_xlm_roberta_large(source, model_class):
    model = tiny(model_class)
    before = model(input_ids=ids()).logits
    config = {"delta_type": "lora", "unfrozen_modules": UNFROZEN, "modified_modules": ["query", "value"]}
    delta_model = run_py(model, config)
    assert delta_model.targets == [
        f"roberta.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    ]
    check_freeze(model, delta_model, UNFROZEN)
    check_runs(model, dict(input_ids=ids()), before)


def test_low_rank_adapter_gpt2_wikitext():
    model = tiny("GPT2LMHeadModel")
    before = model(input_ids=ids()).logits
    config = {"delta_type": "low_rank_adapter", "unfrozen_modules": UNFROZEN, "modified_modules": ["attn", "mlp"]}
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn", "mlp")]
    check_freeze(model, delta_model, UNFROZEN, common=r"transformer\.(?:h\.\d+\.ln_[12]|ln_f)")
    check_runs(model, dict(input_ids=ids()), before)


def test_prefix_bert_large_cased_rte():
    model = tiny("BertForMaskedLM")
    before = model(input_ids=ids()).logits
    config = {"delta_type": "prefix", "unfrozen_modules": UNFROZEN, "modified_modules": ["attention"]}
    delta_model = run_py(model, config)
    assert delta_model.targets == [f"bert.encoder.layer.{i}.attention" for i in range(2)]
    check_freeze(model, delta_model, UNFROZEN, common=r"bert\.encoder\.layer\.\d+\.(?:attention\.)?output\.LayerNorm")
    check_runs(model, dict(input_ids=ids()), before)


def test_soft_prompt_bart_large_superglue_boolq():
    model = tiny("BartForConditionalGeneration", vocab_size=128, max_position_embeddings=256)
    inputs = dict(input_ids=ids(vocab=128), decoder_input_ids=ids(seq=4, vocab=128))
    before = model(**inputs).logits
    config = {"delta_type": "soft_prompt", "soft_token_num": 100, "token_init": True, "unfrozen_modules": ["deltas"]}
    delta_model = run_py(model, config)
    assert delta_model.num_parameters() == 100 * 32  # 100 soft tokens of the embedding width
    check_freeze(model, delta_model, ["deltas"])
    check_runs(model, inputs, before)
