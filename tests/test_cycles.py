"""Long use: attach/detach cycles reuse what was built (flat memory and torch.fx caches); one
GraphModule per graph; validation leaves every random generator as it was."""

import gc
import linecache
from pathlib import Path

import torch
from torch.fx.graph_module import _loader  # torch.fx keeps the source of every generated forward here

import fxdelta
from fxdelta.compiler.state import BackboneState
from fxdelta.sites.base import SiteKind

from zoo import ZOO

CYCLES = 10_000


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def caches() -> tuple[int, int]:
    return len(_loader.eval_cache), len(linecache.cache)


def test_attach_detach_cycles_leave_memory_and_fx_caches_flat():
    zm = ZOO["bert"]
    model, x = zm.build(), zm.inputs()
    fxdelta.compile(model, [{"delta_type": "lora"}, {"delta_type": "adapter"}])
    lora = fxdelta.delta_models(model)["lora"]
    with torch.no_grad():
        expected = zm.run(model, x)
    for _ in range(100):  # warm-up: every plan state has been built once
        lora.detach().attach()
    gc.collect()
    sources, lines, rss, objects = *caches(), rss_kb(), len(gc.get_objects())
    for _ in range(CYCLES):
        lora.detach().attach()
    gc.collect()
    assert caches() == (sources, lines)  # no new generated code: the built sites are reused
    assert rss_kb() - rss < 4096  # KiB over 10,000 cycles (it grew ~7 KiB per cycle before the reuse)
    assert len(gc.get_objects()) - objects < 200  # Python objects: nothing piles up per cycle
    with torch.no_grad():
        assert torch.equal(zm.run(model, x), expected)


def test_one_graph_module_per_graph():
    zm = ZOO["gpt2"]
    model = zm.build()
    before = len(_loader.eval_cache)
    fxdelta.compile(model, {"delta_type": "adapter", "modified_modules": ["mlp.c_fc"]})
    sites = BackboneState.find(model).sites
    assert {s.kind for s in sites} == {SiteKind.TRACED_REGION} and len(sites) == 2  # the two GPT2MLPs
    # per region: its traced graph (also the one validation runs) and the rewritten one, nothing else
    assert len(_loader.eval_cache) - before == 2 * len(sites)


def test_a_re_attached_delta_runs_the_code_built_for_it_before():
    zm = ZOO["gpt2"]
    model = zm.build()
    handle = fxdelta.AdapterModel(model, modified_modules=["mlp.c_fc", "attn.c_proj"])
    first = {s.path: s.graph_module for s in BackboneState.find(model).sites}
    handle.detach()
    handle.attach()
    again = {s.path: s.graph_module for s in BackboneState.find(model).sites}
    assert again.keys() == first.keys() and all(again[p] is first[p] for p in first)


def test_validation_leaves_every_random_generator_as_it_was():
    zm = ZOO["gpt2"]
    model = zm.build()  # seeds torch (and queues a CUDA reseed, on machines without CUDA)
    cpu = torch.random.get_rng_state()
    pending_cuda = torch.cuda._lazy_seed_tracker.get_calls()
    # BitFit starts at zero (no random init); the GPT2MLPs trace, so validation runs with seeded dropout
    fxdelta.compile(model, {"delta_type": "bitfit", "modified_modules": ["mlp.c_fc"]})
    assert {s.kind for s in BackboneState.find(model).sites} == {SiteKind.TRACED_REGION}
    assert torch.equal(torch.random.get_rng_state(), cpu)
    assert torch.cuda._lazy_seed_tracker.get_calls() == pending_cuda  # no CUDA generator reseeded


def test_soak_of_random_attach_detach_over_several_deltas_keeps_memory_flat():
    import random

    zm = ZOO["gpt2"]
    model, x = zm.build(), zm.inputs()
    handles = [
        fxdelta.LoraModel(model),
        fxdelta.AdapterModel(model),
        fxdelta.BitFitModel(model, modified_modules=["mlp.c_fc"]),
        fxdelta.SoftPromptModel(model, soft_token_num=2),
    ]
    rng = random.Random(0)

    def steps(n):
        for _ in range(n):
            h = rng.choice(handles)
            h.detach() if h.attached else h.attach()

    steps(300)  # every combination has been built
    gc.collect()
    sources, rss, objects = len(_loader.eval_cache), rss_kb(), len(gc.get_objects())
    steps(3000)
    gc.collect()
    assert len(_loader.eval_cache) == sources
    assert rss_kb() - rss < 4096
    assert len(gc.get_objects()) - objects < 200
    for h in handles:
        h.attach()
    with torch.no_grad():
        zm.run(model, x)
