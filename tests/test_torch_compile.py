"""torch.compile on patched models: no graph breaks, and switching deltas without recompiling (hot-swap).

Counted with dynamo's own counters and ``CompileCounter`` (a backend that counts the graphs it is given and
runs them as they are): the numbers the README states come from here.
"""

import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import fxdelta
from fxdelta.methods.registry import METHODS

from zoo import ZOO

FAMILIES = ["bert", "gpt2", "llama"]


def patched(family, method, seed=0, **extra):
    model = ZOO[family].build(seed)
    fxdelta.compile(model, {"delta_type": method, **METHODS[method].small, **extra})
    return model


def perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for h in fxdelta.delta_models(model).values():
            for p in h.parameters():
                p.normal_(0, 0.2)


def logits(model, inputs):
    torch.manual_seed(0)  # the same dropout masks in train mode
    return model(**inputs).logits


@pytest.fixture
def compiled():
    """``compiled(model)`` -> (torch.compile'd model, its CompileCounter), on a fresh dynamo cache."""
    torch._dynamo.reset()
    counters.clear()

    def make(model):
        counter = CompileCounter()
        return torch.compile(model, backend=counter), counter

    yield make
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_graph_per_mode_and_no_graph_break(family, method, compiled):
    """Eval, then a train step: one graph each, no break (prefix and soft prompts included), and the
    compiled model computes what the eager one does."""
    model = patched(family, method)
    perturb(model, 3)
    inputs = ZOO[family].inputs()
    fast, counter = compiled(model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch.no_grad():
            assert torch.allclose(logits(fast, inputs), logits(model, inputs), atol=1e-6)
        model.train()
        out = logits(fast, inputs)
        assert torch.allclose(out, logits(model, inputs), atol=1e-6)
        out.float().pow(2).mean().backward()
    assert [str(w.message) for w in seen if "fxdelta" in str(w.message) + w.filename] == []
    assert dict(counters["graph_break"]) == {}
    assert counter.frame_count == 2  # eval and train
    grads = [p.grad for h in fxdelta.delta_models(model).values() for p in h.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def saved_tasks(tmp_path, family, method, n, **save):
    """``n`` checkpoint folders of one delta config, each with other values (tasks trained apart)."""
    folders = []
    for task in range(n):
        model = patched(family, method)
        perturb(model, 10 + task)
        fxdelta.save(model, tmp_path / f"task{task}", **save)
        folders.append(tmp_path / f"task{task}")
    return folders


def expected(family, folders, mode):
    """Each task's logits from a fresh backbone that loaded it (eager)."""
    out = []
    for folder in folders:
        model = ZOO[family].build()
        fxdelta.load(model, folder)
        out.append(logits(model.train(mode == "train"), ZOO[family].inputs()))
    return out


@pytest.mark.parametrize(
    "family,method,mode",
    [("bert", m, "eval") for m in sorted(METHODS)]
    + [(f, m, "train") for f in ("gpt2", "llama") for m in ("lora", "prefix")],
)
def test_hotswap_serves_many_tasks_with_one_graph(tmp_path, family, method, mode, compiled):
    """12 hot-swaps among 3 tasks: no recompile, and each swap computes exactly what loading that task does."""
    folders = saved_tasks(tmp_path, family, method, 3)
    want = expected(family, folders, mode)
    model = ZOO[family].build()
    fxdelta.load(model, folders[0])
    model.train(mode == "train")
    inputs = ZOO[family].inputs()
    fast, counter = compiled(model)
    assert torch.equal(logits(fast, inputs), want[0])
    for i in range(12):
        task = (i + 1) % 3
        fxdelta.hotswap(fast, folders[task])  # through the torch.compile wrapper
        assert torch.equal(logits(fast, inputs), want[task])
    assert counter.frame_count == 1


@pytest.mark.parametrize("family", FAMILIES)
# PEFT 0.21 calls a transformers method that 5.23 deprecates (tests fail on FutureWarnings otherwise).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_switching_by_attach_compiles_once_per_delta_like_peft_set_adapter(family, compiled):
    """Detach one delta, attach another, 12 times: one graph per delta, then cached (PEFT's set_adapter: the same)."""
    peft = pytest.importorskip("peft")
    model = ZOO[family].build()
    for name in ("a", "b"):
        fxdelta.compile(model, {"delta_type": "lora", "name": name})
    a, b = fxdelta.delta_models(model).values()
    perturb(model, 4)
    b.detach()
    inputs = ZOO[family].inputs()
    fast, counter = compiled(model)
    fast(**inputs)
    for i in range(12):
        (a if i % 2 == 0 else b).detach()
        (b if i % 2 == 0 else a).attach()
        assert torch.equal(logits(fast, inputs), logits(model, inputs))
    ours = counter.frame_count

    torch._dynamo.reset()
    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}[family]
    config = peft.LoraConfig(r=8, target_modules=targets, fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D
    reference = peft.get_peft_model(ZOO[family].build(), config, "first")
    reference.add_adapter("second", config)
    reference.set_adapter("first")  # as each switch leaves it (set_adapter also sets requires_grad)
    fast, counter = compiled(reference)
    fast(**inputs)
    for i in range(12):
        reference.set_adapter("second" if i % 2 == 0 else "first")
        fast(**inputs)
    assert ours == counter.frame_count == 2
