"""Shared helpers of the zoo x method matrix: patching a zoo model, perturbing deltas, snapshots.

A snapshot records what a patch may add to a backbone (hooks, instance ``forward`` attributes,
state_dict keys, parameters), so leak checks compare two snapshots with one ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta import (
    AdapterModel,
    BitFitModel,
    CompacterModel,
    DeltaModel,
    DoraModel,
    IA3Model,
    LoraModel,
    LowRankAdapterModel,
    ParallelAdapterModel,
    PrefixModel,
    SoftPromptModel,
)

from snapshot import gate_hook_ids
from zoo import METHOD_KWARGS, TORCH_TARGETS, ZOO, ZooModel

METHODS: dict[str, type[DeltaModel]] = {
    "lora": LoraModel,
    "adapter": AdapterModel,
    "bitfit": BitFitModel,
    "low_rank_adapter": LowRankAdapterModel,
    "compacter": CompacterModel,
    "parallel_adapter": ParallelAdapterModel,
    "ia3": IA3Model,
    "dora": DoraModel,
    "prefix": PrefixModel,
    "soft_prompt": SoftPromptModel,
}
LORA_LIKE = ("lora", "dora")  # methods with their own dropout (lora_dropout)

NOISE = 0.2  # std of the noise added to delta parameters: big enough to move tiny models' logits


def delta_kwargs(model_name: str, method: str, **extra: Any) -> dict[str, Any]:
    """Constructor kwargs for ``method`` on a zoo model: HF families use default positions."""
    zm = ZOO[model_name]
    kwargs = {**METHOD_KWARGS.get(method, {}), **extra}
    if not zm.is_hf:
        kwargs["modified_modules"] = TORCH_TARGETS[model_name][method]
    if zm.example_inputs is not None:
        kwargs["example_inputs"] = zm.example_inputs
    return kwargs


def spec(model_name: str, method: str) -> dict[str, Any]:
    """The ``fxdelta.compile`` dict for ``method`` on a zoo model."""
    out: dict[str, Any] = {"delta_type": method, **METHOD_KWARGS.get(method, {})}
    if not ZOO[model_name].is_hf:
        out["modified_modules"] = TORCH_TARGETS[model_name][method]
    return out


@dataclass
class Patched:
    zm: ZooModel
    model: nn.Module
    inputs: Any
    base: torch.Tensor  # the backbone's output before patching
    before: Snapshot  # the backbone before patching
    types: dict[str, type]  # module path -> class, before patching
    handle: DeltaModel

    def out(self) -> torch.Tensor:
        return run(self.zm, self.model, self.inputs)


def patch(model_name: str, method: str, seed: int = 0, **extra: Any) -> Patched:
    """A fresh zoo model (eval mode), its output, then ``method`` attached with default init."""
    zm = ZOO[model_name]
    model = zm.build(seed)
    inputs = zm.inputs()
    base = run(zm, model, inputs)
    before, types = snapshot(model), module_types(model)
    handle = METHODS[method](model, **delta_kwargs(model_name, method, **extra))
    return Patched(zm, model, inputs, base, before, types, handle)


@torch.no_grad()
def run(zm: ZooModel, model: nn.Module, inputs: Any) -> torch.Tensor:
    return zm.run(model, inputs)


@torch.no_grad()
def perturb(params: Any, seed: int = 0, scale: float = NOISE) -> None:
    """Add seeded Gaussian noise to every parameter (so zero-initialised deltas do something)."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _hook_counts(module: nn.Module) -> tuple[tuple[str, int], ...]:
    """Sizes of every hook dict of a module (forward, pre, backward, state_dict, load ...), without the
    thread gate's two (on a backbone from its first delta model on, by design)."""
    gate = gate_hook_ids(module)
    return tuple(
        sorted(
            (k, len(set(v) - gate))
            for k, v in vars(module).items()
            if k.startswith("_") and "hooks" in k and isinstance(v, dict)
        )
    )


def _global_hook_counts() -> tuple[int, ...]:
    mod = torch.nn.modules.module
    names = [n for n in dir(mod) if n.startswith("_global_") and "hook" in n]
    return tuple(len(getattr(mod, n)) for n in sorted(names) if isinstance(getattr(mod, n), dict))


@dataclass(frozen=True)
class Snapshot:
    hooks: dict[str, tuple]  # module path -> hook dict sizes
    global_hooks: tuple[int, ...]
    forward_attrs: frozenset[str]  # paths of modules with an instance ``forward``
    state_keys: tuple[str, ...]
    n_params: int


def snapshot(model: nn.Module) -> Snapshot:
    modules = dict(model.named_modules(remove_duplicate=False))
    return Snapshot(
        hooks={path: _hook_counts(m) for path, m in modules.items()},
        global_hooks=_global_hook_counts(),
        forward_attrs=frozenset(path for path, m in modules.items() if "forward" in vars(m)),
        state_keys=tuple(model.state_dict().keys()),
        n_params=sum(p.numel() for p in model.parameters()),
    )


def module_types(model: nn.Module) -> dict[str, type]:
    return {path: type(m) for path, m in model.named_modules(remove_duplicate=False)}


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def generation_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """``generate()`` makes its own decoder inputs (seq2seq batches carry teacher-forcing ones)."""
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
