"""PEFT's adapter format both ways: fxdelta writes folders ``peft.PeftModel.from_pretrained`` loads, and
loads PEFT's own, with the same logits (perturbed deltas, task heads as ``modules_to_save``); PEFT options
fxdelta cannot express are refused and leave the model as it was."""

import json
import re
import warnings

import peft
import pytest
import torch
import transformers

import fxdelta
from fxdelta import CheckpointError, ConfigError, IA3Model, LoraModel
from fxdelta.compiler.state import BackboneState

from zoo import _COMMON, ZOO

# PEFT 0.21 calls a transformers method that 5.23 deprecates (tests fail on FutureWarnings otherwise).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
TOL = 1e-5


def bert_classifier():
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_COMMON)).eval()


MODELS = {"bert": bert_classifier, "gpt2": ZOO["gpt2"].build, "llama": ZOO["llama"].build}
INPUTS = ZOO["bert"].inputs()  # ids and mask, fine for all three


def logits(model, inputs=INPUTS):
    with torch.no_grad():
        out = model(**inputs).logits
    return out


def perturb(model, seed=3, scale=0.3):
    """Move every delta tensor and the task head (fxdelta's), or every adapter tensor (PEFT's), off its start."""
    g = torch.Generator().manual_seed(seed)
    ours = (".deltas.", "classifier")
    theirs = ("lora_", "ia3_l", "prompt_encoder", "modules_to_save")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in (theirs if isinstance(model, peft.PeftModel) else ours)):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def peft_logits(model, inputs=INPUTS):
    """PEFT's causal-LM prompt learning returns logits for the virtual tokens too: the real tokens are last."""
    with warnings.catch_warnings():
        # PEFT 0.21 hands prefixes to the model as `past_key_values`, which transformers 5.24 deprecates; fxdelta's
        # own calls are held to the no-FutureWarning rule by the rest of the suite.
        warnings.filterwarnings("ignore", "`past_key_values` is deprecated", FutureWarning)
        out = logits(model, inputs)
    return out[:, -inputs["input_ids"].shape[1] :] if out.dim() == 3 else out


SPECS = {
    "lora": {"delta_type": "lora", "lora_r": 4, "lora_dropout": 0.1},
    "dora": {"delta_type": "dora", "lora_r": 4},
    "ia3": {"delta_type": "ia3"},
    "soft_prompt": {"delta_type": "soft_prompt", "soft_token_num": 3, "pool_real_cls": False},
    "prefix": {"delta_type": "prefix", "prefix_token_num": 3},
}
CASES = [(m, s) for m in MODELS for s in SPECS if not (m == "bert" and s == "prefix")]


@pytest.mark.parametrize(("model", "method"), CASES)
def test_fxdelta_writes_what_peft_loads_and_reads_it_back(tmp_path, model, method):
    build = MODELS[model]
    patched = build()
    base = logits(patched)
    fxdelta.compile(patched, SPECS[method])
    perturb(patched)
    want = logits(patched)
    assert (want - base).abs().max() > 30 * TOL  # the deltas (and the head) do something
    fxdelta.save(patched, tmp_path / "adapter", format="peft")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    theirs = peft.PeftModel.from_pretrained(build(), tmp_path / "adapter").eval()
    torch.testing.assert_close(peft_logits(theirs), want, atol=TOL, rtol=0)
    ours = build()
    fxdelta.load(ours, tmp_path / "adapter")
    torch.testing.assert_close(logits(ours), want, atol=TOL, rtol=0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == (["classifier"] if model == "bert" else None)


def _peft_config(method, model):
    if method in ("lora", "dora"):
        targets = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "down_proj"]}
        return peft.LoraConfig(r=4, target_modules=targets[model], use_dora=method == "dora", lora_dropout=0.1)
    if method == "ia3":  # PEFT's defaults for GPT-2 and Llama: k/v (fused c_attn), and the FFN's down projection
        return peft.IA3Config(task_type="CAUSAL_LM")
    if method == "soft_prompt":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)


PEFT_CASES = [("bert", "lora"), ("bert", "dora")] + [
    (m, s) for m in ("gpt2", "llama") for s in ("lora", "dora", "ia3", "soft_prompt", "prefix")
]


@pytest.mark.parametrize(("model", "method"), PEFT_CASES)
def test_fxdelta_loads_what_peft_writes(tmp_path, model, method):
    build = MODELS[model]
    theirs = peft.get_peft_model(build(), _peft_config(method, model))
    perturb(theirs)
    theirs.eval()
    want = peft_logits(theirs)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = build()
    base = logits(ours)
    handle = fxdelta.AutoDeltaModel.from_finetuned(tmp_path / "adapter", backbone_model=ours)
    assert (want - base).abs().max() > 30 * TOL
    torch.testing.assert_close(logits(ours), want, atol=TOL, rtol=0)
    if method in ("lora", "dora"):  # PEFT's defaults, mapped: lora_alpha 8 (fxdelta's is 16), its dropout
        assert (handle.config.lora_alpha, handle.config.lora_dropout) == (8, 0.1)
    handle.save_finetuned(tmp_path / "again", format="peft")  # and out again, PEFT loads it
    again = peft.PeftModel.from_pretrained(build(), tmp_path / "again").eval()
    torch.testing.assert_close(peft_logits(again), want, atol=TOL, rtol=0)


def test_a_trained_task_head_goes_both_ways_as_modules_to_save(tmp_path):
    theirs = peft.get_peft_model(bert_classifier(), peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    perturb(theirs)
    theirs.eval()
    theirs.save_pretrained(tmp_path / "adapter")
    ours = bert_classifier()
    handle = LoraModel.from_finetuned(tmp_path / "adapter", backbone_model=ours)
    torch.testing.assert_close(logits(ours), logits(theirs), atol=TOL, rtol=0)
    assert handle.checkpoint_entry()[0]["unfrozen"] == ["classifier.bias", "classifier.weight"]


def test_an_absent_lora_alpha_is_peft_default_and_fxdelta_writes_its_own(tmp_path):
    model = bert_classifier()
    LoraModel(model, lora_r=4)  # fxdelta's lora_alpha: 16
    perturb(model)
    fxdelta.save(model, tmp_path / "a", format="peft")
    file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(file.read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 16)
    del config["lora_alpha"]  # PEFT reads 8
    file.write_text(json.dumps(config))
    theirs = peft.PeftModel.from_pretrained(bert_classifier(), tmp_path / "a").eval()
    ours = bert_classifier()
    assert fxdelta.AutoDeltaModel.from_finetuned(tmp_path / "a", ours).config.lora_alpha == 8
    torch.testing.assert_close(logits(ours), logits(theirs), atol=TOL, rtol=0)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    state = BackboneState.find(model)
    assert state is None or not state.handles


@pytest.fixture
def lora_folder(tmp_path):
    model = bert_classifier()
    fxdelta.compile(model, {"delta_type": "lora", "lora_r": 4})
    fxdelta.save(model, tmp_path / "lora", format="peft")
    return tmp_path / "lora"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_rslora", True),
        ("layers_to_transform", [0]),
        ("bias", "all"),
        ("megatron_config", {"tensor_model_parallel_size": 2}),
        ("rank_pattern", {"query": 2}),
        ("init_lora_weights", "pissa"),
        ("a_field_of_a_newer_peft", 3),
    ],
)
def test_peft_options_fxdelta_cannot_express_are_refused(lora_folder, field, value):
    file = lora_folder / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {field: value}))
    model = bert_classifier()
    before = _state(model)
    with pytest.raises(CheckpointError, match=re.escape(f"{field}={value!r}")):
        fxdelta.load(model, lora_folder)
    _unchanged(model, before)


def test_a_newer_peft_field_left_off_loads(lora_folder):
    file = lora_folder / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"some_new_option": None, "use_new_thing": False}))
    fxdelta.load(bert_classifier(), lora_folder)


def _peft_folder(tmp_path, model, config):
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "theirs")
    return tmp_path / "theirs"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: peft.LoraConfig(target_modules=["word_embeddings"]), "Embedding; fxdelta's LoRA and DoRA patch"),
        (lambda: peft.LoHaConfig(target_modules=["query"]), "'LOHA' .* has no fxdelta counterpart"),
        # PEFT's BERT default also scales the input of attention.output.dense, which no FFN activation makes
        (lambda: peft.IA3Config(task_type="SEQ_CLS"), "attention.output.dense is a feedforward module"),
        (
            lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, prefix_projection=True),
            "prefix_projection=True",
        ),
        # PEFT's prefixes are a past: BERT's positions would start after them; fxdelta's encoder prefixes keep them
        (lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2), "are not causal"),
    ],
)
def test_peft_adapters_fxdelta_cannot_express_are_refused(tmp_path, config, match):
    folder = _peft_folder(tmp_path, bert_classifier(), config())
    model = bert_classifier()
    before = _state(model)
    with pytest.raises(CheckpointError, match=match):
        fxdelta.load(model, folder)
    _unchanged(model, before)


def test_tensors_of_an_untargeted_module_are_refused(lora_folder):
    file = lora_folder / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"target_modules": ["layer.0.attention.self.query"]}))
    model = bert_classifier()
    with pytest.raises(CheckpointError, match="which its config does not target"):
        fxdelta.load(model, lora_folder)


def test_an_encoder_decoder_second_prompt_is_refused(tmp_path):
    model = ZOO["gpt2"].build()
    fxdelta.compile(model, {"delta_type": "soft_prompt", "soft_token_num": 2})
    fxdelta.save(model, tmp_path / "p", format="peft")
    file = tmp_path / "p" / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"num_transformer_submodules": 2}))
    with pytest.raises(CheckpointError, match="num_transformer_submodules=2"):
        fxdelta.load(ZOO["gpt2"].build(), tmp_path / "p")


@pytest.mark.parametrize(
    ("build", "specs", "match"),
    [
        (bert_classifier, [{"delta_type": "adapter"}], r"no adapter type for fxdelta's 'adapter'.*\['dora', 'ia3'"),
        (bert_classifier, [{"delta_type": "lora"}, {"delta_type": "ia3"}], "holds one adapter"),
        (bert_classifier, [{"delta_type": "prefix", "prefix_token_num": 2}], "shifts the real tokens' positions"),
        (bert_classifier, [{"delta_type": "soft_prompt", "soft_token_num": 2}], "pool_real_cls=False"),
        (ZOO["bert"].build, [{"delta_type": "soft_prompt", "soft_token_num": 2}], "BertForMaskedLM has none"),
        (ZOO["gpt2"].build, [{"delta_type": "ia3", "modified_modules": ["ln_1"]}], "LayerNorm that is neither"),
        # the head stays trainable by default, and PEFT would train it whole, without the LoRA in it
        (bert_classifier, [{"delta_type": "lora", "modified_modules": ["classifier"]}], "inside a module it also"),
    ],
)
def test_what_peft_cannot_hold_is_not_written(tmp_path, build, specs, match):
    model = build()
    fxdelta.compile(model, specs)
    with pytest.raises(CheckpointError, match=match):
        fxdelta.save(model, tmp_path / "out", format="peft")
    assert not (tmp_path / "out").exists()


def test_save_finetuned_writes_peft_and_from_finetuned_checks_the_method(tmp_path):
    model = bert_classifier()
    handle = LoraModel(model, lora_r=2)
    with pytest.raises(ConfigError, match="format must be one of 'fxdelta', 'peft', got 'onnx'"):
        handle.save_finetuned(tmp_path / "x", format="onnx")
    handle.save_finetuned(tmp_path / "x", format="peft")
    with pytest.raises(CheckpointError, match="holds a 'lora' delta, not 'ia3'"):
        IA3Model.from_finetuned(tmp_path / "x", backbone_model=bert_classifier())
    assert isinstance(LoraModel.from_finetuned(tmp_path / "x", backbone_model=bert_classifier()), LoraModel)


def test_a_config_class_names_the_way_to_load_a_peft_folder(lora_folder):
    with pytest.raises(CheckpointError, match=r"It is a PEFT adapter folder: load it with fxdelta\.load"):
        fxdelta.AutoDeltaConfig.from_finetuned(lora_folder)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_encoder_decoder_adapters_load_in_peft_without_its_seq2seq_class(tmp_path, method):
    # PEFT 0.21's SEQ_2_SEQ_LM class fails to build on transformers 5.23; its base class computes the same.
    t5 = ZOO["t5"]
    model = t5.build()
    fxdelta.compile(model, {"delta_type": method})
    perturb(model)
    inputs = t5.inputs()
    want = t5.run(model, inputs)
    fxdelta.save(model, tmp_path / "a", format="peft")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["task_type"] is None
    theirs = peft.PeftModel.from_pretrained(t5.build(), tmp_path / "a").eval()
    torch.testing.assert_close(theirs(**inputs).logits, want, atol=TOL, rtol=0)
