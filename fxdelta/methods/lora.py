"""LoRA (Hu et al. 2021): a low-rank update in parallel with a linear layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from fxdelta.core.routes import Route
from fxdelta.methods.folding import out_in, wide
from fxdelta.methods.peft_lora import peft_format
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo, linear_only


@dataclass(frozen=True, kw_only=True)
class LoraConfig(DeltaConfig):
    """``lora_r``: rank; ``lora_alpha``: the update is scaled by ``lora_alpha / lora_r``;
    ``lora_dropout``: dropout on the LoRA branch's input."""

    delta_type: ClassVar[str] = "lora"

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def validate(self) -> None:
        self._positive_int("lora_r")
        self._number("lora_alpha", 0, low_inclusive=False)
        self._number("lora_dropout", 0.0, 1.0)


class LoraDelta(nn.Module):
    """``d(x) = dropout(x) A^T B^T * alpha / r``; B starts at zero, so the patched layer starts unchanged."""

    def __init__(self, in_features: int, out_features: int, config: LoraConfig, *, dtype=None, device=None) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(config.lora_r, in_features, dtype=dtype, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.lora_r, dtype=dtype, device=device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.lora_alpha / config.lora_r
        # No module at all when the rate is 0: an Identity call costs more than the two matmuls on small inputs.
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``s * B(A(dropout(x)))``; DoRA's forward calls this one too (``LoraDelta.forward``)."""
        if self.lora_dropout is not None:
            x = self.lora_dropout(x)
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # (..., out)

    def extra_repr(self) -> str:
        r, n_in = self.lora_A.shape
        return f"in={n_in}, out={self.lora_B.shape[0]}, r={r}, scaling={self.scaling:g}"


def build(config: LoraConfig, target: TargetInfo) -> LoraDelta:
    target.factor(type(config).__name__, "lora_alpha", config.lora_alpha / config.lora_r)
    return LoraDelta(target.in_features, target.out_features, config, dtype=target.dtype, device=target.device)


def weight_update(d: LoraDelta) -> torch.Tensor:
    """``B A * alpha / r`` (out, in), in the dtype a fold computes in: what folding adds to the weight (DoRA too)."""
    return (wide(d.lora_B) @ wide(d.lora_A)) * d.scaling


def fold(delta: nn.Module, layer: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``W + B A * alpha / r`` (dropout is the identity outside training, as a merged layer has none)."""
    d = cast(LoraDelta, delta)
    update = weight_update(d)  # (out, in)
    return {"weight": out_in(layer, wide(out_in(layer, params["weight"])) + update)}


METHOD = Method(
    delta_type="lora",
    config=LoraConfig,
    build=build,
    route=Route.PARALLEL,
    default_positions=("attn.q", "attn.v"),
    can_patch=linear_only,
    needs_h_in=True,
    fold=fold,
    peft=peft_format(with_magnitude=False),
    summary="LoRA on linear layers (parallel route); default positions: attention q and v.",
    small={"lora_r": 4, "lora_alpha": 8},
)
