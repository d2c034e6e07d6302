"""Task heads train with the deltas and are saved with them; compile freezes like PEFT's get_peft_model."""

import pytest
import torch
import transformers

import fxdelta
from fxdelta import LoraModel
from fxdelta.spec.heads import task_heads

IDS = torch.arange(1, 9).unsqueeze(0)
_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def classifier(seed=0, labels=3):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT, num_labels=labels)).eval()


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_the_known_heads_of_task_models():
    assert task_heads(classifier()) == ["classifier"]
    llama = transformers.LlamaForSequenceClassification(
        transformers.LlamaConfig(**_BERT, num_key_value_heads=2, pad_token_id=0)
    )
    assert task_heads(llama) == ["score"]
    qa = transformers.BertForQuestionAnswering(transformers.BertConfig(**_BERT))
    assert task_heads(qa) == ["qa_outputs"]
    assert task_heads(transformers.BertForMaskedLM(transformers.BertConfig(**_BERT))) == []  # a pre-trained LM head


def test_default_freezing_keeps_the_head_trainable_and_the_checkpoint_carries_it(tmp_path):
    model = classifier()
    handle = LoraModel(model)
    handle.freeze_module()
    assert trainable(model) == {n for n, _ in handle.named_parameters()} | {"classifier.weight", "classifier.bias"}
    with torch.no_grad():
        model.classifier.weight.normal_()
        for p in handle.parameters():
            p.normal_()
    expected = model(input_ids=IDS).logits
    handle.save_finetuned(tmp_path / "ckpt")
    fresh = classifier()
    with torch.no_grad():
        fresh.classifier.weight.normal_()  # another random head: the checkpoint must bring the trained one
    assert not torch.equal(fresh(input_ids=IDS).logits, expected)
    fxdelta.AutoDeltaModel.from_finetuned(tmp_path / "ckpt", fresh)
    assert torch.equal(fresh(input_ids=IDS).logits, expected)


def test_an_exclude_list_that_freezes_the_head_is_honoured_with_a_warning():
    model = classifier()
    handle = LoraModel(model)
    with pytest.warns(
        fxdelta.FxDeltaWarning, match="'classifier', the task head of BertForSequenceClassification, frozen"
    ):
        handle.freeze_module(exclude=["deltas"])
    assert trainable(model) == {n for n, _ in handle.named_parameters()}


def test_compile_freezes_all_but_deltas_and_heads_and_keeps_the_state_dict_whole():
    model = classifier()
    keys = set(model.state_dict())
    fxdelta.compile(model, [{"delta_type": "lora"}, {"delta_type": "bitfit", "modified_modules": ["output.dense"]}])
    deltas = {n for h in fxdelta.delta_models(model).values() for n, _ in h.named_parameters()}
    assert trainable(model) == deltas | {"classifier.weight", "classifier.bias"}
    assert keys < set(model.state_dict())
    untouched = classifier()
    fxdelta.compile(untouched, {"delta_type": "lora"}, freeze=False)
    assert all(p.requires_grad for p in untouched.parameters())


def test_compile_honours_the_specs_unfrozen_modules():
    model = classifier()
    with pytest.warns(fxdelta.FxDeltaWarning, match="'classifier'"):
        fxdelta.compile(model, {"delta_type": "lora", "unfrozen_modules": ["deltas", "LayerNorm"]}, freeze=True)
    assert "classifier.weight" not in trainable(model)  # as given
    assert "bert.embeddings.LayerNorm.weight" in trainable(model)


def _train_a_task(model, name, seed):
    fxdelta.compile(model, {"delta_type": "lora", "name": name})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # the delta and the head both move
    return model(input_ids=IDS).logits


def test_each_delta_owns_its_head_and_attach_detach_switch_it(tmp_path):
    model = classifier()
    base = model(input_ids=IDS).logits
    base_head = model.classifier.weight
    logits_a = _train_a_task(model, "taskA", 1)
    fxdelta.save(model, tmp_path / "a")
    a = fxdelta.delta_models(model)["taskA"]
    a.detach()
    assert model.classifier.weight is base_head and torch.equal(model(input_ids=IDS).logits, base)
    logits_b = _train_a_task(model, "taskB", 2)
    fxdelta.save(model, tmp_path / "b")
    b = fxdelta.delta_models(model)["taskB"]
    assert not torch.allclose(logits_a, logits_b)
    b.detach()
    a.attach()
    assert torch.equal(model(input_ids=IDS).logits, logits_a)
    with pytest.raises(fxdelta.StateError, match="one head at a time"):
        b.attach()
    assert not b.attached and torch.equal(model(input_ids=IDS).logits, logits_a)  # the refusal changed nothing
    a.detach()
    b.attach()
    assert torch.equal(model(input_ids=IDS).logits, logits_b)
    b.detach()
    assert model.classifier.weight is base_head and torch.equal(model(input_ids=IDS).logits, base)

    fresh = classifier()
    fxdelta.load(fresh, tmp_path / "a")
    assert torch.equal(fresh(input_ids=IDS).logits, logits_a)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(fxdelta.StateError, match="one head at a time"):
        fxdelta.load(fresh, tmp_path / "b")  # task A's head is in use
    assert before.keys() == fresh.state_dict().keys()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())
    fxdelta.delta_models(fresh)["taskA"].detach()
    fxdelta.load(fresh, tmp_path / "b")
    assert torch.equal(fresh(input_ids=IDS).logits, logits_b)


def test_deltas_compiled_together_train_and_save_one_head(tmp_path):
    model = classifier()
    fxdelta.compile(model, [{"delta_type": "lora"}, {"delta_type": "bitfit"}])
    lora, bitfit = fxdelta.delta_models(model).values()
    assert lora.heads is bitfit.heads and model.classifier.weight is lora.heads["classifier.weight"]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    expected = model(input_ids=IDS).logits
    bitfit.detach()  # the head stays: lora shares it
    assert model.classifier.weight is lora.heads["classifier.weight"]
    bitfit.attach()
    fxdelta.save(model, tmp_path / "both")
    fresh = classifier()
    fxdelta.load(fresh, tmp_path / "both")
    assert torch.equal(fresh(input_ids=IDS).logits, expected)


def test_a_head_copy_follows_the_backbone_to_another_dtype():
    model = classifier()
    handle = LoraModel(model)
    handle.detach()
    model.to(torch.float64)
    handle.attach()
    assert model.classifier.weight.dtype == torch.float64 and handle.heads["classifier.weight"].dtype == torch.float64
    handle.detach()
    assert model.classifier.weight.dtype == torch.float64


def test_a_merged_delta_keeps_its_head_and_detaching_it_brings_the_backbones_back():
    model = classifier()
    base_head = model.classifier.weight
    expected = _train_a_task(model, "taskA", 1)
    a = fxdelta.delta_models(model)["taskA"]
    fxdelta.merge(model)
    assert a.merged and model.classifier.weight is a.heads["classifier.weight"]
    assert torch.allclose(model(input_ids=IDS).logits, expected, atol=1e-5)
    other = LoraModel(model, name="other", lora_r=2)
    assert other.heads is a.heads  # a new delta shares the head in use, merged or attached
    other.detach()
    assert model.classifier.weight is a.heads["classifier.weight"]  # still the merged delta's
    a.detach()  # unmerges, and the head leaves with the delta
    assert model.classifier.weight is base_head
