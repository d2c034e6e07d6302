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
