"""Damaged, foreign or mismatched checkpoints raise CheckpointError and leave the fresh model unchanged."""

import pytest
import torch
import transformers
from torch import nn

import fxdelta
from fxdelta import AutoDeltaModel, BitFitModel, CheckpointError, LoraModel

from snapshot import assert_unchanged, snapshot
from zoo import ZOO


@pytest.fixture
def bert():
    return ZOO["bert"].build(), ZOO["bert"].inputs()


def _saved(tmp_path, model=None):
    """A real checkpoint of a perturbed LoRA on tiny BERT; returns its folder."""
    model = model if model is not None else ZOO["bert"].build()
    handle = LoraModel(model)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.1)
    folder = tmp_path / "ckpt"
    handle.save_finetuned(folder)
    return folder


def _bert(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    return transformers.BertForMaskedLM(config).eval()


def _corrupt_tensors(folder):
    (folder / "delta.safetensors").write_bytes(b"\x00garbage\xff" * 20)


def _corrupt_json(folder):
    (folder / "delta_config.json").write_text("{not json")


def _missing_tensor(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "delta.safetensors"))
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, str(folder / "delta.safetensors"))


def _wrong_shape(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "delta.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, str(folder / "delta.safetensors"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt_tensors, "corrupt or not a safetensors file"),
        (_corrupt_json, "is not valid JSON"),
        (_missing_tensor, "is missing from delta.safetensors"),  # fails after the deltas were built
        (_wrong_shape, "has shape"),
    ],
    ids=["garbage-safetensors", "corrupt-json", "missing-tensor", "wrong-shape"],
)
@pytest.mark.parametrize("loader", ["from_finetuned", "fxdelta.load"])
def test_damaged_checkpoint(tmp_path, damage, message, loader):
    folder = _saved(tmp_path)
    damage(folder)
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=message):
        if loader == "from_finetuned":
            AutoDeltaModel.from_finetuned(folder, backbone_model=fresh)
        else:
            fxdelta.load(fresh, folder)
    assert_unchanged(fresh, before, inputs)


def test_missing_folder_and_folder_without_config(tmp_path, bert):
    fresh, inputs = bert
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match="no delta checkpoint folder at"):
        AutoDeltaModel.from_finetuned(tmp_path / "nope", backbone_model=fresh)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"has no delta_config\.json"):
        fxdelta.load(fresh, tmp_path / "empty")
    assert_unchanged(fresh, before, inputs)


@pytest.mark.parametrize(
    "target, saved_as, loaded_as",
    [
        (lambda: ZOO["gpt2"].build(), "BertForMaskedLM", "GPT2LMHeadModel"),
        (lambda: _bert(48), "BertForMaskedLM", "BertForMaskedLM"),
    ],
    ids=["bert-to-gpt2", "hidden32-to-hidden48"],
)
def test_checkpoint_onto_another_architecture(tmp_path, target, saved_as, loaded_as):
    folder = _saved(tmp_path, _bert(32))
    fresh = target()
    inputs = ZOO["gpt2"].inputs() if loaded_as.startswith("GPT2") else ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=rf"saved for a {saved_as} whose parameters differ from this {loaded_as}"):
        AutoDeltaModel.from_finetuned(folder, backbone_model=fresh)
    assert_unchanged(fresh, before, inputs)


def test_from_finetuned_refuses_a_multi_delta_checkpoint(tmp_path):
    model = ZOO["bert"].build()
    first = LoraModel(model)
    BitFitModel(model, modified_modules=["output.dense"])
    first.freeze_module(exclude=["deltas", "LayerNorm"])  # the checkpoint then holds the LayerNorms too
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    fxdelta.save(model, tmp_path / "two")
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=r"holds 2 deltas; use fxdelta\.load"):
        AutoDeltaModel.from_finetuned(tmp_path / "two", backbone_model=fresh)
    assert_unchanged(fresh, before, inputs)


def _edit_json(field_path, value):
    """A damage that sets one field of delta_config.json (``deltas.0.sources``, ``backbone``, ...)."""

    def damage(folder):
        import json

        meta = json.loads((folder / "delta_config.json").read_text())
        *where, last = field_path.split(".")
        node = meta
        for key in where:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
        (folder / "delta_config.json").write_text(json.dumps(meta))

    return damage


def _deep_json(folder):
    (folder / "delta_config.json").write_text('{"format": "fxdelta", "deltas": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _infinite_alpha(folder):
    text = (folder / "delta_config.json").read_text()
    (folder / "delta_config.json").write_text(text.replace('"lora_alpha": 16', '"lora_alpha": Infinity'))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_edit_json("deltas.0.sources", 5), "sources must be"),
        (_edit_json("deltas.0.unfrozen", [[1]]), "unfrozen must be"),
        (_edit_json("deltas.0.name", ["a"]), "must be an object with a string 'name'"),
        (_edit_json("deltas.0.targets", "bert.encoder"), "targets must be"),
        (_edit_json("deltas.0", 3), r"deltas\[0\] must be an object"),
        (_edit_json("backbone", "bert"), "'backbone' must be"),
        (_deep_json, "not valid JSON"),
        (_infinite_alpha, "lora_alpha must be a finite number"),
    ],
    ids=["sources-int", "unfrozen-nested", "name-list", "targets-str", "delta-int", "backbone-str", "deep", "inf"],
)
def test_malformed_fields_are_refused_before_anything_is_built(tmp_path, damage, message):
    folder = _saved(tmp_path)
    damage(folder)
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=message):
        fxdelta.load(fresh, folder)
    assert fxdelta.delta_models(fresh) == {}
    assert_unchanged(fresh, before, inputs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_tensors_that_would_change_on_load_are_refused(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    tensors = load_file(str(folder / "delta.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, str(folder / "delta.safetensors"))
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match=rf"saved as {dtype} but the delta holds torch.float32"):
        fxdelta.load(fresh, folder)
    assert_unchanged(fresh, before, inputs)


def test_a_narrower_float_is_refused(tmp_path):
    folder = _saved(tmp_path, ZOO["bert"].build().to(torch.float64))
    fresh = ZOO["bert"].build().to(torch.float16)  # whose deltas are float32 (delta_dtype=None)
    with pytest.raises(CheckpointError, match=r"saved as torch\.float64 but the delta holds torch\.float32"):
        fxdelta.load(fresh, folder)
    assert fxdelta.delta_models(fresh) == {}


def test_a_wider_float_loads_exactly(tmp_path):
    model = ZOO["bert"].build().to(torch.float64)
    folder = _saved(tmp_path, ZOO["bert"].build().to(torch.bfloat16))
    fxdelta.load(model, folder)  # bfloat16 into float64 keeps every value
    assert next(iter(fxdelta.delta_models(model).values())).attached


def test_loading_what_is_already_attached_is_refused(tmp_path):
    model = ZOO["bert"].build()
    folder = _saved(tmp_path, model)  # the very delta now on model
    with pytest.raises(CheckpointError, match="already on this BertForMaskedLM as delta 'lora'"):
        fxdelta.load(model, folder)
    assert list(fxdelta.delta_models(model)) == ["lora"]
    fresh, inputs = ZOO["bert"].build(), ZOO["bert"].inputs()
    fxdelta.load(fresh, folder)
    before = snapshot(fresh, inputs)
    with pytest.raises(CheckpointError, match="apply it twice"):  # a re-run notebook cell
        fxdelta.load(fresh, folder)
    assert_unchanged(fresh, before, inputs)
    with torch.no_grad():  # equal config, other tensors: a second task, which loads beside the first
        for p in fxdelta.delta_models(fresh)["lora"].parameters():
            p.mul_(2)
    fxdelta.save(fresh, tmp_path / "task-b")
    served = fxdelta.load(fxdelta.load(ZOO["bert"].build(), folder), tmp_path / "task-b")
    assert sorted(fxdelta.delta_models(served)) == ["lora", "lora_1"]


def test_loading_onto_something_that_is_not_a_module(tmp_path):
    folder = _saved(tmp_path)
    with pytest.raises(fxdelta.UnsupportedModelError, match=r"torch\.nn\.Module"):
        fxdelta.load("not a model", folder)
    with pytest.raises(CheckpointError, match="folder path"):
        fxdelta.load(ZOO["bert"].build(), None)
