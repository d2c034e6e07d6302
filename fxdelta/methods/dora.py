"""DoRA (Liu et al. 2024): LoRA on the direction of a linear layer's weight, with a learned magnitude.

The patched layer computes ``(m / ||W + s B A||) * (x (W + s B A)^T) + b`` (norm over the input
dimension, per output feature). As an in-out delta on the layer's own output ``h = x W^T + b``:
``d(x, h) = (m / ||V|| - 1) * (h - b) + (m / ||V||) * s * (dropout(x) A^T B^T)``. ``m`` starts at
``||W||`` and ``B`` at zero, so the patch starts as an exact identity. The norm is treated as a
constant in backward, as in the paper (section 4.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from fxdelta.core.routes import Route
from fxdelta.methods.folding import out_in, wide
from fxdelta.methods.lora import LoraConfig, LoraDelta, weight_update
from fxdelta.methods.peft_lora import peft_format
from fxdelta.spec.method import Method, TargetInfo, linear_only


@dataclass(frozen=True, kw_only=True)
class DoraConfig(LoraConfig):
    """LoRA's fields (``lora_r=8, lora_alpha=16, lora_dropout=0.0``); the magnitude has no hyper-parameter."""

    delta_type: ClassVar[str] = "dora"


def _weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as (out, in): transformers' Conv1D stores it transposed."""
    weight = cast(torch.Tensor, layer.weight)
    return weight if isinstance(layer, nn.Linear) else weight.t()


class DoraDelta(LoraDelta):
    """LoRA's ``lora_A``/``lora_B`` plus ``magnitude`` (out,); reads the patched layer's weight and bias live."""

    _layer: nn.Module

    def __init__(self, layer: nn.Module, config: DoraConfig, *, dtype=None, device=None) -> None:
        weight = _weight(layer)
        super().__init__(weight.shape[1], weight.shape[0], config, dtype=dtype, device=device)
        object.__setattr__(self, "_layer", layer)  # not a submodule: its weights stay the backbone's
        with torch.no_grad():
            # The norm in the delta's dtype, as forward computes it: the patch starts as an exact identity.
            self.magnitude = nn.Parameter(weight.detach().to(dtype=dtype or weight.dtype).norm(dim=1))  # (out,)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # in-out route
        weight = _weight(self._layer)
        with torch.no_grad():  # ||W + s B A|| per output row, a constant for backward
            norm = (weight + (self.lora_B @ self.lora_A) * self.scaling).norm(dim=1)  # (out,)
        # A row with no direction (all zero) keeps scale 1: m / 0 would turn the whole output NaN.
        nonzero = norm > 0
        scale = torch.where(nonzero, self.magnitude / torch.where(nonzero, norm, 1.0), 1.0)  # (out,)
        bias = getattr(self._layer, "bias", None)
        base = h if bias is None else h - bias  # (..., out): x W^T
        lora = LoraDelta.forward(self, x)  # (..., out): LoRA's own update, s * B(A(dropout(x)))
        return (scale - 1) * base + scale * lora


def build(config: DoraConfig, target: TargetInfo) -> DoraDelta:
    target.factor(type(config).__name__, "lora_alpha", config.lora_alpha / config.lora_r)
    return DoraDelta(target.module, config, dtype=target.dtype, device=target.device)


def fold(delta: nn.Module, layer: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``diag(m / ||V||) V`` with ``V = W + s B A``: the layer then computes ``(m / ||V||) * (x V^T) + b``, which
    is the patched output (rows with no direction keep scale 1, as in ``forward``; the bias is unchanged)."""
    d = cast(DoraDelta, delta)
    direction = wide(out_in(layer, params["weight"])) + weight_update(d)  # (out, in)
    norm = direction.norm(dim=1)  # (out,)
    nonzero = norm > 0
    scale = torch.where(nonzero, wide(d.magnitude) / torch.where(nonzero, norm, 1.0), 1.0)  # (out,)
    return {"weight": out_in(layer, direction * scale[:, None])}


METHOD = Method(
    delta_type="dora",
    config=DoraConfig,
    build=build,
    route=Route.IN_OUT,
    default_positions=("attn.q", "attn.v"),
    can_patch=linear_only,
    needs_h_in=True,
    fold=fold,
    peft=peft_format(with_magnitude=True),
    summary="DoRA: LoRA on the weight's direction plus a learned magnitude (in-out route); default positions: "
    "attention q and v.",
    small={"lora_r": 4, "lora_alpha": 8},
)
