"""The code of the OpenDelta pages and paper in ../shared/seeds/, run on fxdelta.

Only two changes from the pages: ``from fxdelta import ...`` and models built from config classes.
"""

import io

import pytest
import torch
import transformers

from fxdelta import AdapterModel, AutoDeltaConfig, AutoDeltaModel, LoraModel, Visualization

from zoo import T5_TINY


def tiny_bart_classifier(seed=0):
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return transformers.BartForSequenceClassification(config).eval()


def tiny_bert_mlm(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    return transformers.BertForMaskedLM(config).eval()


def batch():
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    ids[:, -1] = 2  # BART classifies from the last eos token
    return ids


def test_basic_usage_page(capsys):
    model = tiny_bart_classifier()
    ids = batch()
    before = model(input_ids=ids).logits

    # STEP 2.1: visualise, then put an adapter after every fc2
    Visualization(model).structure_graph()
    assert "fc2 (Linear)" in capsys.readouterr().out
    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    delta_model.log()
    assert "deltas (adapter)" in capsys.readouterr().out
    assert len(delta_model.targets) == 4  # 2 encoder + 2 decoder layers
    assert torch.equal(model(input_ids=ids).logits, before)  # adapters start as identity

    # STEP 2.2: default positions on BERT
    bert = tiny_bert_mlm()
    bert_delta = AdapterModel(bert)
    bert_delta.log()
    assert any(t.endswith("attention.output.dense") for t in bert_delta.targets)
    assert any(t.endswith("layer.1.output.dense") for t in bert_delta.targets)

    # "Try different positions": a second adapter after each final_layer_norm (this one is not used later)
    moved = AdapterModel(backbone_model=model, modified_modules=["final_layer_norm"], bottleneck_dim=12)
    assert torch.equal(model(input_ids=ids).logits, before)
    moved.detach()

    # STEP 3: freeze everything but the deltas and the embedding layer norms
    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"], set_state_dict=True)
    delta_model.log()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".deltas." in n or "layernorm_embedding" in n for n in trainable)
    assert set(model.state_dict()) == trainable  # set_state_dict=True keeps only trainable tensors

    # STEP 4: train the backbone with an optimizer built on model.parameters()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(3):
        loss = model(input_ids=ids, labels=torch.tensor([0, 2])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model(input_ids=ids).logits, before)


def test_multitask_page(tmp_path):
    model = tiny_bart_classifier()
    ids = batch()
    base = model(input_ids=ids).logits

    delta_model = LoraModel(backbone_model=model, modified_modules=["fc2"])
    delta_model.log(file=io.StringIO())
    with torch.no_grad():
        for p in delta_model.parameters():
            p.normal_()
    with_lora = model(input_ids=ids).logits
    assert not torch.allclose(with_lora, base)

    delta_model.detach()
    assert torch.equal(model(input_ids=ids).logits, base)
    delta_model.attach()
    assert torch.equal(model(input_ids=ids).logits, with_lora)

    delta_model2 = AdapterModel(backbone_model=model, modified_modules=["fc1"])
    with torch.no_grad():
        for p in delta_model2.parameters():
            p.normal_()
    both = model(input_ids=ids).logits

    delta_model.detach()  # only the adapter is left
    only_adapter = model(input_ids=ids).logits
    assert not torch.allclose(only_adapter, both) and not torch.allclose(only_adapter, base)

    delta_model2.detach()  # nothing left
    assert torch.equal(model(input_ids=ids).logits, base)
    delta_model.attach()  # only the lora
    assert torch.equal(model(input_ids=ids).logits, with_lora)
    delta_model2.attach()  # both again, attached in the other order: same numbers
    assert torch.equal(model(input_ids=ids).logits, both)

    # save one delta and load it onto a fresh backbone
    delta_model.save_finetuned(tmp_path / "lora")
    fresh = tiny_bart_classifier()
    loaded = AutoDeltaModel.from_finetuned(tmp_path / "lora", backbone_model=fresh)
    assert isinstance(loaded, LoraModel)
    assert torch.equal(fresh(input_ids=ids).logits, with_lora)


def test_auto_delta_from_dict():
    model = tiny_bert_mlm()
    delta_config = AutoDeltaConfig.from_dict({"delta_type": "lora"})
    delta_model = AutoDeltaModel.from_config(delta_config, model)
    assert isinstance(delta_model, LoraModel)
    assert all(t.endswith(("query", "value")) for t in delta_model.targets)
    assert delta_model.config.lora_r == 8 and delta_model.config.lora_alpha == 16


def test_delta_model_is_not_called():
    model = tiny_bert_mlm()
    delta_model = LoraModel(model)
    with pytest.raises(Exception, match="call the backbone"):
        delta_model(torch.zeros(1, 3, dtype=torch.long))


# -- the paper (arXiv 2307.03084), figures 2, 4 and 5 -------------------------------------------------
def test_paper_figure_2_migration():
    torch.manual_seed(0)  # AutoModel of bert-base-cased: a BertModel, which has a pooler
    model = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
        )
    )
    Visualization(model).structure_graph(file=io.StringIO())
    delta_model = LoraModel(backbone_model=model, modified_modules=["output.dense", "query"])
    delta_model.freeze_module(exclude=["deltas", "pooler"], set_state_dict=True)
    Visualization(model).structure_graph(file=io.StringIO())
    # "output.dense" is a tail: both the attention output and the FFN output of each layer
    assert sum(t.endswith("output.dense") for t in delta_model.targets) == 4
    assert all(".deltas." in k or k.startswith("pooler.") for k in model.state_dict())
    assert any(k.startswith("pooler.") for k in model.state_dict())


def test_paper_figure_4_multitask_serving():
    """One backbone, three task deltas: attach, generate, detach, per request."""
    torch.manual_seed(0)
    config = transformers.T5Config(**T5_TINY)
    model = transformers.T5ForConditionalGeneration(config).eval()
    deltas = {}
    for task in ("spelling", "topic", "question"):
        delta = LoraModel(model, name=task)
        with torch.no_grad():
            for p in delta.parameters():
                p.normal_(std=2.0)
        delta.detach()
        deltas[task] = delta
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(5))

    def multi_task(delta_model):
        delta_model.attach()
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
        delta_model.detach()
        return out

    served = {task: multi_task(d) for task, d in deltas.items()}
    for task, delta in deltas.items():  # each answer is what the model gives with that delta alone
        delta.attach()
        assert torch.equal(model.generate(input_ids=ids, max_new_tokens=5, do_sample=False), served[task])
        delta.detach()
    assert len({tuple(t.flatten().tolist()) for t in served.values()}) > 1


def test_paper_figure_5_autodelta(tmp_path):
    backbone_model = tiny_bert_mlm()
    delta_config = AutoDeltaConfig.from_dict({"delta_type": "lora"})
    delta_model = AutoDeltaModel.from_config(delta_config, backbone_model)
    delta_model.save_finetuned(tmp_path / "save_dir")
    delta = AutoDeltaModel.from_finetuned(tmp_path / "save_dir", tiny_bert_mlm())
    assert delta.config.replace(name=None) == delta_model.config and delta.targets == delta_model.targets
    assert delta.name == delta_model.name == "lora"
