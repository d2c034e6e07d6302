"""The Hugging Face save path: ``Trainer.save_model`` / ``save_pretrained`` of a patched model write the deltas
(and heads), which ``fxdelta.load`` / ``from_finetuned`` restore exactly; nothing silently drops them."""

import json

import pytest
import torch
import transformers
from torch.utils.data import Dataset

import fxdelta

_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
IDS = torch.arange(1, 9).unsqueeze(0)


def classifier(head_seed=None):
    """The same "pre-trained" backbone each time; ``head_seed`` draws another new head, as from_pretrained does."""
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT, num_labels=3))
    if head_seed is not None:
        torch.manual_seed(head_seed)
        model.classifier.reset_parameters()
    return model


class Toy(Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 64, (n, 8), generator=g)
        self.labels = self.ids[:, 0] % 3

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _trainer(model, out, **args):
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=5e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **args,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=Toy())


@pytest.mark.parametrize("spec", [{"delta_type": "lora"}, {"delta_type": "adapter"}, {"delta_type": "bitfit"}])
def test_trainer_save_model_round_trip(tmp_path, spec):
    model = classifier()
    fxdelta.compile(model, spec)
    trainer = _trainer(model, tmp_path / "out")
    trainer.train()
    model.eval()
    expected = model(input_ids=IDS).logits
    trainer.save_model(tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"delta.safetensors", "delta_config.json", "training_args.bin"} <= set(files)
    assert not any(f.startswith(("model", "pytorch_model")) for f in files)  # no full model to misload
    saved = json.loads((tmp_path / "out" / "delta_config.json").read_text())["deltas"][0]["unfrozen"]
    assert saved == ["classifier.bias", "classifier.weight"]  # the new head trained and is saved

    fresh = classifier(head_seed=1).eval()  # another random head: the checkpoint must bring the trained one
    assert not torch.allclose(fresh(input_ids=IDS).logits, expected)
    fxdelta.load(fresh, tmp_path / "out")
    assert torch.equal(fresh(input_ids=IDS).logits, expected)
    again = classifier(head_seed=2).eval()
    fxdelta.AutoDeltaModel.from_finetuned(tmp_path / "out", backbone_model=again)
    assert torch.equal(again(input_ids=IDS).logits, expected)


def test_from_pretrained_of_a_delta_folder_fails_loudly(tmp_path):
    model = classifier()
    model.save_pretrained(tmp_path / "out")  # a full model saved there before: its weights must go
    assert (tmp_path / "out" / "model.safetensors").exists()
    fxdelta.compile(model, {"delta_type": "lora"})
    model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    with pytest.raises(OSError):
        transformers.BertForSequenceClassification.from_pretrained(tmp_path / "out")


def test_save_pretrained_with_nothing_attached_saves_the_plain_model(tmp_path):
    model = classifier().eval()
    fxdelta.compile(model, {"delta_type": "lora"})
    fxdelta.delta_models(model)["lora"].detach()
    model.save_pretrained(tmp_path / "plain")
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    mine, saved = model.state_dict(), again.state_dict()
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in mine)  # the plain model
    # Equal weights, yet transformers' own reload is not bit-exact on every CPU (1.9e-9 apart seen): a tolerance.
    torch.testing.assert_close(again(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=1e-6)


def test_save_pretrained_writes_every_trained_tensor_when_nothing_was_frozen(tmp_path):
    model = classifier().eval()
    fxdelta.compile(model, {"delta_type": "lora"}, freeze=False)  # the whole model trains
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path / "all")
    fresh = classifier(head_seed=1).eval()
    fxdelta.load(fresh, tmp_path / "all")
    assert torch.equal(fresh(input_ids=IDS).logits, expected)


def test_save_pretrained_refuses_an_upload_and_keeps_the_folder(tmp_path):
    model = classifier()
    fxdelta.compile(model, {"delta_type": "lora"})
    with pytest.raises(fxdelta.FxDeltaError, match="local folders only"):
        model.save_pretrained(tmp_path / "up", push_to_hub=True)
    assert not (tmp_path / "up").exists()
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.save_pretrained(tmp_path / "up", shard_everything=True)


def test_a_failed_compile_leaves_no_save_pretrained_behind():
    model = classifier()
    with pytest.raises(fxdelta.FxDeltaError):
        fxdelta.compile(model, {"delta_type": "lora", "modified_modules": ["no_such_module"]})
    assert "save_pretrained" not in model.__dict__


def test_save_pretrained_onto_a_file_or_under_one_is_a_checkpoint_error(tmp_path):
    model = classifier()
    fxdelta.compile(model, {"delta_type": "lora"})
    (tmp_path / "file").write_text("mine")
    with pytest.raises(fxdelta.CheckpointError, match="is a file"):
        model.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(fxdelta.CheckpointError, match="could not write the delta checkpoint into"):
        model.save_pretrained(tmp_path / "file" / "under")  # a folder under a file cannot be made
    assert (tmp_path / "file").read_text() == "mine"
