"""PEFT's adapter format both ways: fxdelta writes folders ``peft.PeftModel.from_pretrained`` loads, and
loads PEFT's own, with the same logits (perturbed deltas, task heads as ``modules_to_save``); PEFT options
fxdelta cannot express are refused and leave the model as it was."""

import json

import peft
import pytest
import torch
import transformers

import fxdelta
from fxdelta import LoraModel

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
    assert handle.checkpoint_entry()[0]["unfrozen"] == ["classifier.weight", "classifier.bias"]


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
