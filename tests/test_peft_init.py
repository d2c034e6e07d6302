"""PEFT LoRA/DoRA adapters whose config names how they were initialised.

An ``init_lora_weights`` that only sets the adapter's starting values (True, False, "gaussian", "eva",
"orthogonal", "mica", PEFT 0.22's "nora") leaves nothing for the forward but the trained tensors: such
adapters, saved by real PEFT after training (here: perturbed), load with PEFT's outputs, bit for bit. One
that also rewrites the base weights (PiSSA, OLoRA, CorDA, Astra, LoRA-GA, LoftQ) is refused with the way PEFT
converts it into a plain LoRA adapter, and the conversion PEFT writes loads with the trained model's outputs.
"""

import json
import warnings

import peft
import pytest
import torch
from peft.tuners.lora.layer import LoraLayer

import fxdelta
from fxdelta import CheckpointError
from fxdelta.compiler.state import BackboneState

from zoo import ZOO

pytestmark = [
    # PEFT 0.21 calls a transformers method that 5.23 deprecates (tests fail on FutureWarnings otherwise).
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    # PEFT's advice for real EVA runs, and its warning when the initial PiSSA/OLoRA adapter is loaded to convert.
    pytest.mark.filterwarnings("ignore:lora with eva initialization:UserWarning"),
    pytest.mark.filterwarnings("ignore:.* changes the base weights of the model:UserWarning"),
]

LLAMA = ZOO["llama"]
INPUTS = ZOO["bert"].inputs()  # ids and mask
TARGETS = ["q_proj", "v_proj", "down_proj"]

# init_lora_weights values the pinned PEFT builds; "nora" needs PEFT 0.22 (a 0.21 LoraLayer has no nora_init).
INIT_ONLY = [True, False, "gaussian", "Gaussian", "eva", "orthogonal", "mica", "nora"]
BASE_CHANGING = ["pissa", "pissa_niter_4", "olora", "OLoRA", "corda", "astra", "lora_ga", "loftq"]
CONVERSION = "path_initial_model_for_weight_conversion"


def logits(model):
    with torch.no_grad():
        return model(**INPUTS).logits


def trained(model, seed=3, scale=0.3):
    """Move every adapter tensor off its start, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def peft_builds(init):
    return init != "nora" or hasattr(LoraLayer, "nora_init")


def lora_config(init, dora=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "eva" without an eva_config: PEFT warns it uses its default one
        return peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=init, use_dora=dora, lora_dropout=0.1)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    found = BackboneState.find(model)
    assert found is None or not found.handles


CASES = [(init, dora) for init in INIT_ONLY for dora in (False, True) if not (dora and init == "mica")]


@pytest.mark.parametrize(("init", "dora"), CASES)
def test_an_adapter_peft_initialised_its_own_way_loads_with_peft_outputs(tmp_path, init, dora):
    if not peft_builds(init):
        pytest.skip(f"PEFT {peft.__version__} has no init_lora_weights={init!r} (PEFT 0.22 has)")
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config(init, dora)))
    want = logits(theirs)
    theirs.save_pretrained(tmp_path / "adapter")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["init_lora_weights"] == init
    ours = LLAMA.build()
    base = logits(ours)
    handle = fxdelta.AutoDeltaModel.from_finetuned(tmp_path / "adapter", backbone_model=ours)
    assert handle.config.delta_type == ("dora" if dora else "lora")
    assert (want - base).abs().max() > 1e-3
    assert torch.equal(logits(ours), want)
    again = peft.PeftModel.from_pretrained(LLAMA.build(), tmp_path / "adapter").eval()
    assert torch.equal(logits(again), want)  # and PEFT itself reads the file as it wrote it


@pytest.mark.parametrize("init", ["nora", "eva", "mica"])
def test_an_init_only_value_loads_whichever_peft_wrote_it(tmp_path, init):
    # PEFT 0.21 has no "nora": the same trained tensors under a config naming it (as PEFT 0.22 writes) load the same.
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config(True)))
    theirs.save_pretrained(tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"init_lora_weights": init}))
    ours = LLAMA.build()
    fxdelta.load(ours, tmp_path / "adapter")
    assert torch.equal(logits(ours), logits(theirs))


@pytest.mark.parametrize("init", BASE_CHANGING)
def test_an_init_that_rewrites_the_base_weights_is_refused_with_peft_conversion(tmp_path, init):
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config(True)))
    theirs.save_pretrained(tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"init_lora_weights": init}))
    model = LLAMA.build()
    before = state(model)
    with pytest.raises(CheckpointError) as e:
        fxdelta.load(model, tmp_path / "adapter")
    assert f"init_lora_weights={init!r}" in str(e.value)
    assert "base weights" in str(e.value)
    if init == "loftq":  # PEFT's LoftQ recipe: keep the LoftQ base model, save the adapter with init True
        assert "init_lora_weights=True" in str(e.value) and "base_model.save_pretrained" in str(e.value)
    else:
        assert CONVERSION in str(e.value)
    unchanged(model, before)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_peft_conversion_of_a_base_rewriting_adapter_loads_with_the_trained_outputs(tmp_path, init):
    peft_model = peft.get_peft_model(LLAMA.build(), lora_config(init))
    peft_model.save_pretrained(tmp_path / "initial")  # before training, as PEFT's conversion needs
    trained(peft_model)
    want = logits(peft_model)  # the residual base weights with the trained adapter
    peft_model.save_pretrained(tmp_path / "adapter")
    model = LLAMA.build()
    before = state(model)
    with pytest.raises(CheckpointError, match=CONVERSION):
        fxdelta.load(model, tmp_path / "adapter")
    unchanged(model, before)
    peft_model.save_pretrained(tmp_path / "converted", **{CONVERSION: str(tmp_path / "initial")})
    assert json.loads((tmp_path / "converted" / "adapter_config.json").read_text())["init_lora_weights"] is True
    fxdelta.load(model, tmp_path / "converted")  # a plain LoRA of twice the rank, on the original base weights
    torch.testing.assert_close(logits(model), want, atol=1e-5, rtol=0)


def test_the_init_only_sub_configs_load(tmp_path):
    # PEFT writes the sub-config of its data-driven inits; each only parameterises its init (or preprocessing).
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config("eva")))
    theirs.save_pretrained(tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    written = json.loads(file.read_text())
    assert isinstance(written["eva_config"], dict)
    extra = {
        "corda_config": {"corda_method": "kpm"},
        "lora_ga_config": {"direction": "ArB2r"},
        "astra_config": {"verbose": True},
    }
    file.write_text(json.dumps(written | extra))
    ours = LLAMA.build()
    fxdelta.load(ours, tmp_path / "adapter")
    assert torch.equal(logits(ours), logits(theirs))


@pytest.mark.parametrize("init", ["kaiming", "PISSA", 3])
def test_an_init_peft_does_not_know_is_refused(tmp_path, init):
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config(True)))
    theirs.save_pretrained(tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"init_lora_weights": init}))
    with pytest.raises(CheckpointError, match=f"init_lora_weights={init!r}"):
        fxdelta.load(LLAMA.build(), tmp_path / "adapter")


def test_what_peft_0_22_writes_by_default_loads(tmp_path):
    # PEFT 0.22's LoraConfig adds astra_config (None unless init_lora_weights="astra"); the rest it writes is 0.21's.
    theirs = trained(peft.get_peft_model(LLAMA.build(), lora_config(True)))
    theirs.save_pretrained(tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | {"astra_config": None, "peft_version": "0.22.0"}))
    ours = LLAMA.build()
    fxdelta.load(ours, tmp_path / "adapter")
    assert torch.equal(logits(ours), logits(theirs))
