"""Threads sharing one patched model: concurrent inference is right, and attach/detach waits for it."""

import threading

import pytest
import torch

import fxdelta
from fxdelta import StateError
from fxdelta.compiler.state import BackboneState
from fxdelta.sites.base import SiteKind

from zoo import ZOO

THREADS, ROUNDS = 4, 60


def _batches(zm, n):
    out = []
    for i in range(n):
        x = zm.inputs()
        g = torch.Generator().manual_seed(i)
        x["input_ids"] = torch.randint(3, 64, x["input_ids"].shape, generator=g)
        out.append(x)
    return out


def _run_threads(target, n=THREADS):
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


def _perturbed(handle):
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(torch.randn_like(p) * 0.2)


@pytest.mark.parametrize(
    "name, spec, kind",
    [
        ("gpt2", {"delta_type": "soft_prompt", "soft_token_num": 4}, SiteKind.SOFT_PROMPT),
        ("bert", {"delta_type": "parallel_adapter", "bottleneck_dim": 4}, SiteKind.INPUT_CARRIER),
        ("llama", {"delta_type": "prefix", "prefix_token_num": 2}, SiteKind.PREFIX_REFRESH),
    ],
    ids=["soft-prompt", "carried-pairs", "reparameterized-prefix"],
)
def test_concurrent_inference_gives_each_thread_its_own_right_answer(name, spec, kind):
    zm = ZOO[name]
    model = zm.build()
    fxdelta.compile(model, spec)
    assert kind in {s.kind for s in BackboneState.find(model).sites}
    _perturbed(next(iter(fxdelta.delta_models(model).values())))
    batches = _batches(zm, THREADS)
    with torch.no_grad():
        expected = [zm.run(model, x) for x in batches]
    wrong = []

    def infer(i):
        with torch.no_grad():
            for _ in range(ROUNDS):
                if not torch.equal(zm.run(model, batches[i]), expected[i]):
                    wrong.append(i)

    _run_threads(infer)
    assert wrong == []


def test_attach_and_detach_wait_for_running_forwards():
    zm = ZOO["bert"]
    model = zm.build()
    handle = fxdelta.LoraModel(model)
    _perturbed(handle)
    x = zm.inputs()
    with torch.no_grad():
        patched = zm.run(model, x)
        handle.detach()
        bare = zm.run(model, x)
        handle.attach()
    mixed = []
    stop = threading.Event()

    def infer(i):
        with torch.no_grad():
            while not stop.is_set():
                out = zm.run(model, x)
                if not (torch.equal(out, patched) or torch.equal(out, bare)):
                    mixed.append(out)

    def toggle(i):
        try:
            for _ in range(ROUNDS):
                handle.detach()
                handle.attach()
        finally:
            stop.set()

    _run_threads(lambda i: toggle(i) if i == 0 else infer(i), n=3)
    assert mixed == []
    with torch.no_grad():
        assert torch.equal(zm.run(model, x), patched)


def test_changing_deltas_from_inside_a_forward_is_refused():
    zm = ZOO["bert"]
    model = zm.build()
    handle = fxdelta.LoraModel(model)
    caught = []

    def hook(module, args, out):
        try:
            handle.detach()
        except StateError as e:
            caught.append(e)

    model.bert.encoder.register_forward_hook(hook)
    with torch.no_grad():
        zm.run(model, zm.inputs())
    assert caught and "from inside a forward" in str(caught[0])
    assert handle.attached
