"""What the benchmark runs: the backbones, their inputs, and the variants of each (patched or not).

Every variant of one backbone is a separate model object built from the same seed, so all of them
hold the same weights and can be timed interleaved in one loop.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn

import fxdelta

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from zoo import ZOO

LORA = {"delta_type": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
ADAPTER = {"delta_type": "adapter"}
BITFIT = {"delta_type": "bitfit"}


@dataclass(frozen=True)
class Workload:
    """One backbone: how to build it (seeded) and a batch of inputs for it."""

    name: str
    build_fn: Callable[[], nn.Module]
    inputs_fn: Callable[[], dict[str, Any]]
    tiny: bool
    _pristine: nn.Module | None = field(default=None, repr=False, compare=False)

    def build(self) -> nn.Module:
        """A fresh copy of the seeded backbone (copying is much faster than initialising again)."""
        if self._pristine is None:
            torch.manual_seed(0)
            object.__setattr__(self, "_pristine", self.build_fn().eval())
        return copy.deepcopy(self._pristine)

    def inputs(self) -> dict[str, Any]:
        torch.manual_seed(1)
        return self.inputs_fn()


def _hf(config_cls: str, model_cls: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))

    return build


def _text(vocab: int, batch: int, seq: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        return {
            "input_ids": torch.randint(3, vocab, (batch, seq)),  # (B, T)
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        }

    return make


def workloads(batch: int = 4, seq: int = 128) -> list[Workload]:
    """Small-but-real base models (no LM head: its vocab matmul would hide the deltas) and the zoo's tiny ones."""
    vocab = 1000  # only the embedding table depends on it; kept small so building is fast
    small = [
        Workload(
            "bert-256",
            _hf(
                "BertConfig",
                "BertModel",
                vocab_size=vocab,
                hidden_size=256,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=1024,
            ),
            _text(vocab, batch, seq),
            False,
        ),
        Workload(
            "gpt2-256",
            _hf("GPT2Config", "GPT2Model", vocab_size=vocab, n_embd=256, n_layer=4, n_head=4),
            _text(vocab, batch, seq),
            False,
        ),
        Workload(
            "llama-256",
            _hf(
                "LlamaConfig",
                "LlamaModel",
                vocab_size=vocab,
                hidden_size=256,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=4,
                intermediate_size=688,
            ),
            _text(vocab, batch, seq),
            False,
        ),
    ]
    tiny = [
        Workload(f"{name}-tiny", ZOO[name].build_fn, ZOO[name].inputs_fn, True) for name in ("bert", "gpt2", "llama")
    ]
    return small + tiny


# -- the naive baseline ---------------------------------------------------------------------------
class NaiveLoraLinear(nn.Module):
    """What one would write by hand: the target layer replaced by ``base(x) + x A^T B^T * alpha / r``."""

    def __init__(self, base: nn.Module, r: int, alpha: float) -> None:
        super().__init__()
        n_in, n_out = _features(base)
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, n_in))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # (..., out)


def _features(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    n_in, n_out = m.weight.shape  # transformers Conv1D keeps its weight as (in, out)
    return n_in, n_out


def naive_lora(model: nn.Module, targets: list[str]) -> nn.Module:
    """Replace each target (the paths fxdelta patched) by a ``NaiveLoraLinear`` wrapper."""
    for path in targets:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, child, NaiveLoraLinear(getattr(parent, child), LORA["lora_r"], LORA["lora_alpha"]))
    return model


# -- variants ---------------------------------------------------------------------------------------
FORWARD_VARIANTS = ["unpatched", "naive lora", "lora", "lora hooks_only", "adapter", "bitfit"]
TRAIN_VARIANTS = ["naive lora", "lora", "lora hooks_only"]


def build_variants(work: Workload, names: list[str]) -> dict[str, nn.Module]:
    """Every variant in ``names``, with identical (perturbed) LoRA weights in the LoRA variants."""
    specs = {
        "lora": (LORA, False),
        "lora hooks_only": (LORA, True),
        "adapter": (ADAPTER, False),
        "bitfit": (BITFIT, False),
    }
    assert "naive lora" not in names or "lora" in names, (
        "the naive baseline copies the LoRA variant's targets and weights"
    )
    out: dict[str, nn.Module] = {}
    for name in names:
        model = work.build()
        if name in specs:
            spec, hooks_only = specs[name]
            fxdelta.compile(model, spec, hooks_only=hooks_only)
        out[name] = model
    if "lora" in out:
        _perturb(out["lora"])
        src = _lora_deltas(out["lora"])
        if "lora hooks_only" in out:
            dst = dict(_lora_deltas(out["lora hooks_only"]))
            _copy(src, {t: (d.lora_A, d.lora_B) for t, d in dst.items()})
        if "naive lora" in out:
            naive_lora(out["naive lora"], [t for t, _ in src])
            wrappers = {t: out["naive lora"].get_submodule(t) for t, _ in src}
            _copy(src, {t: (w.lora_A, w.lora_B) for t, w in wrappers.items()})
    return out


def _copy(src: list[tuple[str, nn.Module]], dst: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for target, d in src:
            dst[target][0].copy_(d.lora_A)
            dst[target][1].copy_(d.lora_B)


def _lora_deltas(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(e.target, e.delta) for h in fxdelta.delta_models(model).values() for e in h.entries]


def _perturb(model: nn.Module) -> None:
    """B starts at zero; make it non-zero so the parity check below compares real updates."""
    torch.manual_seed(2)
    with torch.no_grad():
        for _, d in _lora_deltas(model):
            d.lora_B.normal_(0, 0.02)


def output(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out[0]  # last_hidden_state or logits


def check_lora_parity(variants: dict[str, nn.Module], inputs: dict[str, Any]) -> float:
    """Max |difference| between the LoRA variants: the benchmark must compare the same computation."""
    lora = [variants[n] for n in ("lora", "lora hooks_only", "naive lora") if n in variants]
    with torch.no_grad():
        outs = [output(m, inputs) for m in lora]
        base = output(variants["unpatched"], inputs) if "unpatched" in variants else None
    worst = max((float((o - outs[0]).abs().max()) for o in outs[1:]), default=0.0)
    if worst > 1e-5:
        raise AssertionError(f"LoRA variants disagree by {worst:g}: the benchmark would compare different maths")
    if base is not None and torch.equal(base, outs[0]):
        raise AssertionError("the LoRA variant's output equals the unpatched one: the delta is not applied")
    return worst


def trainable(model: nn.Module, variant: str) -> list[nn.Parameter]:
    """Freeze the backbone; return the LoRA parameters (the optimizer's only parameters)."""
    if variant == "naive lora":
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        for h in fxdelta.delta_models(model).values():
            h.freeze_module()
    return [p for p in model.parameters() if p.requires_grad]
