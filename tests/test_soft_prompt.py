"""Soft prompts: the inputs_embeds oracle, padded batches, generate with and without cache, labels,
training, and the errors."""

import pytest
import torch

import fxdelta
from fxdelta import FxDeltaError, PrefixModel, SoftPromptModel, UnsupportedModelError

from hf_compat import enable_checkpointing, returned_cache, with_cache
from padding import assert_padded_row_equals_row_alone, padded_mask
from zoo import ZOO

N = 4


def prompted(name, **kw):
    zm = ZOO[name]
    model = zm.build()
    handle = SoftPromptModel(model, soft_token_num=N, **kw)
    return zm, model, handle


def soft(handle, batch):
    (entry,) = handle.entries
    return entry.delta.weight.detach().unsqueeze(0).expand(batch, -1, -1)


def ids_and_mask(left, lengths=(6, 4), seed=1):
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(seed))
    return ids, padded_mask(lengths, 6, left)


@pytest.mark.parametrize("name", ["gpt2", "llama", "opt", "bert", "roberta", "distilbert", "t5", "bart"])
def test_equals_the_model_given_the_prompt_as_inputs_embeds(name):
    zm, model, handle = prompted(name)
    ids, mask = ids_and_mask(left=False, lengths=(6, 6))
    extra = {"decoder_input_ids": ids[:, :3]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        got = zm.run(model, {"input_ids": ids, "attention_mask": mask, **extra})
        handle.detach()
        embeds = torch.cat([soft(handle, 2), model.get_input_embeddings()(ids)], dim=1)
        extended = torch.cat([torch.ones(2, N, dtype=mask.dtype), mask], dim=1)
        want = zm.run(model, {"inputs_embeds": embeds, "attention_mask": extended, **extra})
    if not model.config.is_encoder_decoder:
        assert got.shape == ids.shape + got.shape[2:]  # outputs keep the real tokens' length
        want = want[:, N:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, left", [("bert", False), ("t5", False), ("gpt2", True), ("llama", True)])
def test_padded_rows_equal_the_rows_alone(name, left):
    zm, model, _handle = prompted(name)
    ids, mask = ids_and_mask(left)
    assert_padded_row_equals_row_alone(zm, model, ids, mask, left)


@pytest.mark.parametrize("name", ["gpt2", "llama", "opt", "t5", "bart"])
def test_generate_with_and_without_cache_on_a_padded_batch(name):
    _zm, model, _handle = prompted(name)
    ids, mask = ids_and_mask(left=not model.config.is_encoder_decoder)
    kw = dict(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    with torch.no_grad():
        cached, uncached = model.generate(**kw, use_cache=True), model.generate(**kw, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    # per-step logits: a mask that misses the soft tokens on cached steps changes them, not always the tokens
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-4, rtol=0)


def test_causal_lm_labels_work_unchanged():
    zm, model, _handle = prompted("gpt2")
    x = zm.inputs()
    out = model(**x, labels=x["input_ids"])
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    want = torch.nn.functional.cross_entropy(logits, x["input_ids"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, want)


def test_training_reaches_only_the_soft_tokens_and_checkpointing_agrees():
    grads = []
    for checkpointing in (False, True):
        zm, model, handle = prompted("llama")
        handle.freeze_module()
        model.train()
        if checkpointing:
            enable_checkpointing(model)
        x = zm.inputs()
        model(**x, labels=x["input_ids"]).loss.backward()
        assert [n for n, p in model.named_parameters() if p.grad is not None] == [
            n for n, _ in handle.named_parameters()
        ]
        grads.append(next(handle.parameters()).grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_with_a_prefix_on_the_same_stack_the_order_of_attach_does_not_matter():
    outputs = []
    for prefix_first in (True, False):
        zm = ZOO["llama"]
        model = zm.build()
        make = [
            lambda model=model: PrefixModel(model, prefix_token_num=2, reparameterize=False),
            lambda model=model: SoftPromptModel(model, soft_token_num=N),
        ]
        for build in make if prefix_first else make[::-1]:
            build()
        with torch.no_grad():
            outputs.append(zm.run(model, zm.inputs()))
    assert torch.equal(*outputs)


def test_restarting_generate_from_a_returned_cache_with_the_full_sequence_is_an_error():
    _zm, model, _handle = prompted("llama")
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        with pytest.raises(FxDeltaError, match="Pass only the new input_ids"):
            model(
                input_ids=first.sequences,
                attention_mask=torch.ones_like(first.sequences),
                **with_cache(model, returned_cache(first)),
            )


def test_token_init_and_errors():
    _zm, model, handle = prompted("bert", token_init="first")
    embedding = model.get_input_embeddings()
    assert torch.equal(next(handle.parameters()), embedding.weight[:N])
    _, _, sampled = prompted("bert")
    rows = {tuple(r.tolist()) for r in embedding.weight}
    assert all(tuple(r.tolist()) in rows for r in next(sampled.parameters()))  # real rows, not specials
    _, _, uniform = prompted("bert", token_init=False, init_range=0.1)
    assert next(uniform.parameters()).abs().max() <= 0.1
    with pytest.raises(UnsupportedModelError, match="soft prompt on a model without input embeddings"):
        SoftPromptModel(ZOO["vit"].build())
    with pytest.raises(fxdelta.ConfigError, match="leaves no room in the 64 learned positions"):
        SoftPromptModel(ZOO["gpt2"].build(), soft_token_num=64)
    with pytest.raises(fxdelta.ConfigError, match="leave modified_modules unset"):
        SoftPromptModel(ZOO["gpt2"].build(), soft_token_num=N, modified_modules=["h.0.mlp"])


BARE = {
    "bert": ("BertConfig", "BertModel", {"intermediate_size": 48}),
    "gpt2": ("GPT2Config", "GPT2Model", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}),
    "llama": ("LlamaConfig", "LlamaModel", {"intermediate_size": 48, "num_key_value_heads": 2}),
}


@pytest.mark.parametrize("name", sorted(BARE))
def test_a_bare_stack_is_cut_back_to_the_real_tokens(name):
    """The embedding stack is the backbone itself: the site's hooks and the per-forward reset share one module."""
    import transformers

    config_cls, model_cls, extra = BARE[name]
    size = {} if name == "gpt2" else {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(vocab_size=64, **size, **extra)).eval()
    SoftPromptModel(model, soft_token_num=N)
    ids, mask = ids_and_mask(left=False, lengths=(6, 6))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    assert out.last_hidden_state.shape[:2] == ids.shape
    if name == "bert":  # the pooler reads the real [CLS], the first real token
        with torch.no_grad():
            torch.testing.assert_close(out.pooler_output, model.pooler(out.last_hidden_state))
