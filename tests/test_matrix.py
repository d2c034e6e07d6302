"""The zoo x method matrix: every invariant of DESIGN.md section 4 on every zoo model x method.

One test per invariant group per cell, each on a freshly built tiny model. HF families use the
method's default positions; the plain torch models use ``TORCH_TARGETS``. Cells a user would not
expect to pass are not generated (no dropout to switch); core bugs are strict xfails.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import fxdelta
from fxdelta import AutoDeltaModel
from fxdelta.spec.heads import task_heads

from invariants import (
    LORA_LIKE,
    METHODS,
    NOISE,
    delta_kwargs,
    generation_inputs,
    module_types,
    patch,
    perturb,
    run,
    snapshot,
    spec,
    state_copy,
)
from zoo import ZOO

# (test, model, method) -> reason; (test, None, method) covers every model. Empty: every cell passes.
_NO_PREFIX = {
    "deberta-v2": "DeBERTa-v2's disentangled attention neither takes a cache nor calls a registered attention "
    "function, so fxdelta has no place to put prefix keys/values",
    "transformer-encoder": "nn.MultiheadAttention takes keys and values as arguments and has no cache: "
    "prefixes for it are not implemented",
}
KNOWN_GAPS: dict[tuple[str | None, str | None, str], str] = {
    **{(None, name, "prefix"): reason for name, reason in _NO_PREFIX.items()},
}
# Methods that cannot start as an identity: a prefix adds keys the queries attend to, a soft prompt tokens.
NO_IDENTITY_AT_INIT = {"prefix", "soft_prompt"}


def applies(zm, method: str) -> bool:
    """Prefixes need self-attention (not the MLP and the CNN); soft prompts need token embeddings (only
    the text models of transformers have them; ViT's patches are not tokens)."""
    if method == "prefix":
        return zm.name not in ("mlp", "cnn")
    if method == "soft_prompt":
        return zm.is_hf and zm.name != "vit"
    return True


def cells(test: str, where=lambda zm, method: True) -> list:
    """The generated matrix for one test: ``pytest.param(model, method, id="bert-lora")``."""
    out = []
    for name, method in itertools.product(ZOO, METHODS):
        if not applies(ZOO[name], method) or not where(ZOO[name], method):
            continue
        reason = next(
            (
                KNOWN_GAPS[k]
                for k in [(test, name, method), (test, None, method), (None, name, method)]
                if k in KNOWN_GAPS
            ),
            None,
        )
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, method, id=f"{name}-{method}", marks=marks))
    return out


def delta_names(handle) -> set[str]:
    return {n for n, _ in handle.named_parameters()}


def moved(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Clearly different, not just a rounding change."""
    return (a - b).abs().max().item() > tol


# -- 1 + 5: identity at init, backbone classes and state_dict keys ----------------------------------
@pytest.mark.parametrize("name, method", cells("identity"))
def test_identity_and_backbone_unchanged(name, method):
    p = patch(name, method)
    if method not in NO_IDENTITY_AT_INIT:
        assert torch.equal(p.out(), p.base), "default init must leave the output bit-identical"

    modules = dict(p.model.named_modules(remove_duplicate=False))
    for path, cls in p.types.items():
        assert type(modules[path]) is cls, f"{path or '<root>'} changed class"
        assert isinstance(modules[path], cls)
    before, after = set(p.before.state_keys), set(p.model.state_dict())
    assert before <= after, f"backbone keys lost: {sorted(before - after)[:3]}"
    added = after - before
    assert added and all(".deltas." in k for k in added), sorted(added)[:3]
    assert added == delta_names(p.handle)
    assert sum(q.numel() for q in p.model.parameters()) == p.before.n_params + p.handle.num_parameters()


# -- 2: perturbed deltas matter; freeze_module; gradients; one optimizer step --------------------
@pytest.mark.parametrize("name, method", cells("train_step"))
def test_perturb_freeze_and_step(name, method):
    p = patch(name, method)
    perturb(p.handle.parameters())
    perturbed = p.out()
    assert moved(perturbed, p.base), "perturbed deltas must change the output"

    p.handle.freeze_module()
    heads = task_heads(p.model)  # a *For<Task> model's head trains with the delta (ViT's classifier)
    names = delta_names(p.handle) | {n for n, _ in p.model.named_parameters() if n.split(".")[0] in heads}
    assert {n for n, q in p.model.named_parameters() if q.requires_grad} == names
    backbone_before = {k: v for k, v in state_copy(p.model).items() if k not in names}

    out = p.zm.run(p.model, p.inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))  # a loss every logit feeds
    (out * weights).sum().backward()
    for n, q in p.model.named_parameters():
        if n in names:
            assert q.grad is not None and q.grad.abs().sum() > 0, f"delta parameter {n} got no gradient"
        else:
            assert q.grad is None, f"frozen backbone parameter {n} got a gradient"

    # built on all parameters, as users do; lr 1: IA3's rescaling vectors get small gradients on tiny models
    torch.optim.SGD(p.model.parameters(), lr=1.0).step()
    assert moved(p.out(), perturbed), "an optimizer step on the deltas must change the output"
    state = p.model.state_dict()
    for k, v in backbone_before.items():
        assert torch.equal(state[k], v), f"backbone tensor {k} changed"


# -- 3: detach / attach, many cycles, no leaks ----------------------------------------------------
@pytest.mark.parametrize("name, method", cells("attach_detach"))
def test_attach_detach_cycles(name, method):
    p = patch(name, method)
    perturb(p.handle.parameters())
    perturbed = p.out()
    attached = snapshot(p.model)
    for _ in range(5):
        p.handle.detach()
        p.handle.detach()  # idempotent
        assert not p.handle.attached
        assert torch.equal(p.out(), p.base), "detach must give the backbone's output bit for bit"
        assert snapshot(p.model) == p.before, "detach left something behind"
        assert module_types(p.model) == p.types
        p.handle.attach()
        p.handle.attach()
        assert p.handle.attached
        assert torch.equal(p.out(), perturbed), "attach must restore the perturbed delta exactly"
        assert snapshot(p.model) == attached, "attach/detach cycles leak hooks, forwards or keys"


# -- 4a: train()/eval() still switch dropout ------------------------------------------------------
def _has_dropout_to_switch(zm, method) -> bool:
    # Models without dropout have nothing to switch, except the LoRA/DoRA branch's own dropout.
    return zm.has_dropout or method in LORA_LIKE


@pytest.mark.parametrize("name, method", cells("dropout", _has_dropout_to_switch))
def test_train_eval_switch_dropout(name, method):
    only_delta_dropout = not ZOO[name].has_dropout
    p = patch(name, method, **({"lora_dropout": 0.1} if only_delta_dropout else {}))
    perturb(p.handle.parameters())
    p.model.eval()  # a fresh delta's own mode is test_delta_follows_backbone_mode's business
    evaluated = p.out()
    saved = state_copy(p.model)  # train forwards update BatchNorm running stats
    deltas = [e.delta for e in p.handle.entries]

    p.model.train()
    assert all(d.training for d in deltas)
    torch.manual_seed(0)
    a, b = p.out(), p.out()
    assert moved(a, b), "train mode: dropout must make two forwards differ"
    torch.manual_seed(0)
    assert torch.equal(p.out(), a), "train mode: dropout must be the only randomness"

    p.model.eval()
    p.model.load_state_dict(saved)
    assert not any(d.training for d in deltas)
    assert torch.equal(p.out(), evaluated) and torch.equal(p.out(), evaluated)

    if only_delta_dropout:  # the randomness came from the delta: detached, train mode is deterministic
        p.handle.detach()
        p.model.train()
        assert torch.equal(p.out(), p.out())


@pytest.mark.parametrize("name, method", cells("delta_mode", lambda zm, method: method in LORA_LIKE))
def test_delta_follows_backbone_mode(name, method):
    """A delta runs in its backbone's train/eval mode: when created, and when re-attached."""
    p = patch(name, method, lora_dropout=0.1)  # the zoo builds models in eval mode
    perturb(p.handle.parameters())
    assert not any(e.delta.training for e in p.handle.entries), "a new delta must take the backbone's eval mode"
    evaluated = p.out()
    assert torch.equal(p.out(), evaluated), "eval mode: the LoRA dropout must be off"
    p.model.train()
    p.handle.detach()
    p.model.eval()  # e.g. training finished; serve with the delta
    p.handle.attach()
    assert not any(e.delta.training for e in p.handle.entries), "eval() while detached must reach the delta"
    assert torch.equal(p.out(), evaluated)


# -- 4b: generate() with and without the KV cache --------------------------------------------------
@pytest.mark.parametrize("name, method", cells("generate", lambda zm, method: zm.generates))
def test_generate_cache_matches_no_cache(name, method):
    p = patch(name, method)
    perturb(p.handle.parameters(), scale=NOISE * (3 if method == "ia3" else 1))  # rescaling needs more to show
    inputs = generation_inputs(p.inputs)

    def generate(use_cache: bool):
        with torch.no_grad():
            return p.model.generate(
                **inputs,
                max_new_tokens=6,
                do_sample=False,
                use_cache=use_cache,
                output_scores=True,
                return_dict_in_generate=True,
            )

    cached, uncached = generate(True), generate(False)
    assert torch.equal(cached.sequences, uncached.sequences)
    scores = torch.stack(cached.scores)  # (new tokens, B, vocab)
    torch.testing.assert_close(scores, torch.stack(uncached.scores), atol=1e-4, rtol=0)
    p.handle.detach()
    plain = torch.stack(generate(True).scores)
    assert plain.shape != scores.shape or moved(plain, scores, 1e-3), "the deltas must matter to generate()"


# -- 6: save_finetuned -> from_finetuned on a fresh backbone --------------------------------------
@pytest.mark.parametrize("name, method", cells("save_load"))
def test_save_and_load_on_fresh_backbone(name, method, tmp_path):
    p = patch(name, method)
    perturb(p.handle.parameters())
    perturbed = p.out()
    folder = tmp_path / "delta"
    p.handle.save_finetuned(folder)

    tensors = load_file(str(folder / "delta.safetensors"))
    params = {k: v.detach() for k, v in p.handle.named_parameters()}
    if method == "prefix":  # trained through an MLP, saved as the prefixes it makes
        params = {f"{e.qualified_name}.{k}": v for e in p.handle.entries for k, v in e.delta.exported_state().items()}
    assert set(tensors) == set(params), "the checkpoint must hold exactly the delta tensors"
    assert all(".deltas." in k for k in tensors)
    assert all(torch.equal(tensors[k], params[k]) for k in tensors)
    meta = json.loads((folder / "delta_config.json").read_text())
    (entry,) = meta["deltas"]
    assert entry["config"]["delta_type"] == method
    assert entry["targets"] == p.handle.targets
    assert meta["backbone"]["class"] == type(p.model).__name__

    fresh = ZOO[name].build(0)
    options = {k: v for k, v in delta_kwargs(name, method).items() if k == "example_inputs"}
    loaded = AutoDeltaModel.from_finetuned(folder, backbone_model=fresh, **options)
    assert type(loaded) is METHODS[method]
    assert loaded.targets == p.handle.targets
    assert torch.equal(run(p.zm, fresh, p.inputs), perturbed), "loading must reproduce the outputs exactly"
    loaded.detach()
    assert torch.equal(run(p.zm, fresh, p.inputs), p.base)


# -- 3 (several deltas): several methods at once, independent in any order ------------------------
COMBOS = {
    "lora+adapter+bitfit": ("lora", "adapter", "bitfit"),
    "dora+ia3+parallel": ("dora", "ia3", "parallel_adapter"),
    "lowrank+compacter": ("low_rank_adapter", "compacter"),
    "prefix+lora+ia3": ("prefix", "lora", "ia3"),
    "soft_prompt+prefix+adapter": ("soft_prompt", "prefix", "adapter"),
}


def combo_cells() -> list:
    return [
        pytest.param(name, combo, id=f"{name}-{combo}")
        for combo, methods in COMBOS.items()
        for name in ZOO
        if all(applies(ZOO[name], m) and (None, name, m) not in KNOWN_GAPS for m in methods)
    ]


@pytest.mark.parametrize("name, combo", combo_cells())
def test_methods_at_once_are_independent(name, combo):
    methods = COMBOS[combo]
    zm = ZOO[name]
    model = zm.build(0)
    inputs = zm.inputs()
    base, before = run(zm, model, inputs), snapshot(model)
    example = delta_kwargs(name, "lora").get("example_inputs")
    fxdelta.compile(model, [spec(name, m) for m in methods], example_inputs=example)
    handles = fxdelta.delta_models(model)
    assert sorted(handles) == sorted(methods)
    if not NO_IDENTITY_AT_INIT & set(methods):
        assert torch.equal(run(zm, model, inputs), base)
    full = snapshot(model)
    for i, h in enumerate(handles.values()):
        perturb(h.parameters(), seed=i)

    def set_attached(subset) -> None:
        for m in methods:
            (handles[m].attach if m in subset else handles[m].detach)()

    subsets = [frozenset(c) for r in range(len(methods) + 1) for c in itertools.combinations(methods, r)]
    recorded = {}
    for subset in subsets:
        set_attached(subset)
        recorded[subset] = run(zm, model, inputs)
    assert torch.equal(recorded[frozenset()], base)
    for s, t in itertools.combinations(subsets, 2):
        assert moved(recorded[s], recorded[t], 0), f"{set(s)} and {set(t)} give the same output"

    def check() -> None:
        current = frozenset(m for m, h in handles.items() if h.attached)
        assert torch.equal(run(zm, model, inputs), recorded[current]), f"attached {set(current)}"

    for order in itertools.permutations(methods):  # detach one by one, then attach, in every order
        for m in order:
            handles[m].detach()
            check()
        assert snapshot(model) == before
        for m in order:
            handles[m].attach()
            check()
        assert snapshot(model) == full
    rng = random.Random(0)
    for _ in range(12):  # a random walk of toggles
        h = handles[rng.choice(list(methods))]
        (h.detach if h.attached else h.attach)()
        check()
