"""Meta compile: LoRA onto a Llama-70B-shaped backbone built on the ``meta`` device, fxdelta against PEFT.

Both get the same model and the same LoRA (r=8 on ``q_proj`` and ``v_proj``, fxdelta's default positions
for Llama and the ones given to PEFT): ``fxdelta.compile`` against ``peft.get_peft_model``. Each round
builds a fresh backbone for each (building is not timed), then times both in a fresh random order, with
garbage collected before and the collector off during each sample, as ``timing.interleaved`` does.
Several depths show how the time grows with the number of layers.
"""

from __future__ import annotations

import gc
import random
import time
import warnings
from collections.abc import Callable

import torch
import transformers
from torch import nn

import fxdelta

from report import Row
from timing import summarize

R = 8
SPEC = {"delta_type": "lora", "lora_r": R}  # fxdelta's defaults on Llama: q_proj and v_proj
TARGETS = ["q_proj", "v_proj"]


def llama_70b_shape(layers: int) -> nn.Module:
    """Llama-3-70B's shapes (8192 wide, 64 heads, 8 KV heads, 28672 MLP, 128256 tokens) on ``meta``."""
    config = transformers.LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=layers,
        num_attention_heads=64,
        num_key_value_heads=8,
    )
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


def _compilers() -> dict[str, Callable[[nn.Module], nn.Module]]:
    import peft

    def with_peft(model: nn.Module) -> nn.Module:
        return peft.get_peft_model(model, peft.LoraConfig(r=R, target_modules=TARGETS))

    return {"fxdelta": lambda model: fxdelta.compile(model, SPEC), "peft": with_peft}


def _check_same_work(compilers: dict[str, Callable[[nn.Module], nn.Module]], layers: int) -> None:
    """Both patch exactly the same modules: the comparison is of the same job."""
    fx_model = compilers["fxdelta"](llama_70b_shape(layers))
    ours = sorted(e.target for h in fxdelta.delta_models(fx_model).values() for e in h.entries)
    peft_model = compilers["peft"](llama_70b_shape(layers))
    theirs = sorted(
        name.removeprefix("base_model.model.")
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and m.lora_A
    )
    if ours != theirs or len(ours) != 2 * layers:
        raise AssertionError(f"fxdelta patches {len(ours)} modules and PEFT {len(theirs)}: not the same job")


def bench_meta_compile(layer_counts: tuple[int, ...], reps: int, seed: int = 0) -> list[Row]:
    try:
        compilers = _compilers()
    except ImportError:
        print("# meta compile skipped: peft is not installed", flush=True)
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notices inside PEFT
        for compile_ in compilers.values():  # one-time costs (lazy imports, FakeTensor set-up) first
            compile_(llama_70b_shape(2))
        rng = random.Random(seed)
        rows = []
        for layers in layer_counts:
            _check_same_work(compilers, layers)
            times: dict[str, list[float]] = {name: [] for name in compilers}
            for _ in range(reps):
                names = list(compilers)
                rng.shuffle(names)
                for name in names:
                    model = llama_70b_shape(layers)
                    gc.collect()
                    gc.disable()  # a collection of the last round's models would be charged to this sample
                    try:
                        t0 = time.perf_counter()
                        compilers[name](model)
                        times[name].append(time.perf_counter() - t0)
                    finally:
                        gc.enable()
                    del model
            label = f"llama-70b-{layers}L"
            rows += [Row("meta compile", label, f"lora: {name}", "s", summarize(t)) for name, t in times.items()]
            ratio = [a / b for a, b in zip(times["fxdelta"], times["peft"], strict=True)]
            rows.append(Row("meta compile", label, "lora: fxdelta / peft", "x", summarize(ratio)))
    return rows
