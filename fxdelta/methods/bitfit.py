"""BitFit (Ben Zaken et al. 2021) as a delta: a new zero bias added to a module's output.

Unlike unfreezing the backbone's own biases, a separate bias can be detached, saved alone and
swapped per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from fxdelta.core.routes import Route
from fxdelta.methods.folding import foldable_bias
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True, kw_only=True)
class BitFitConfig(DeltaConfig):
    """BitFit has no hyper-parameters beyond where to patch."""

    delta_type: ClassVar[str] = "bitfit"


class BitFitDelta(nn.Module):
    """``d(h) = b``, broadcast over every axis but the feature axis; ``b`` starts at zero."""

    def __init__(self, shape: tuple[int, ...], *, dtype=None, device=None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))  # (F,) or (C, 1, ..., 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.bias


def build(config: BitFitConfig, target: TargetInfo) -> BitFitDelta:
    features = target.out_features
    trailing = len(target.h_out.shape) - 2 if target.feature_axis == 1 else 0
    return BitFitDelta((features,) + (1,) * trailing, dtype=target.dtype, device=target.device)


def fold(delta: nn.Module, module: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | str:
    """``h + b`` folds into the module's own bias; a module without one (Llama's projections and RMSNorms,
    T5's) is refused rather than given a new parameter."""
    bias = foldable_bias(module, params.get("bias"))
    if isinstance(bias, str):
        return bias
    return {"bias": bias + cast(BitFitDelta, delta).bias.detach().flatten()}  # (F,) onto (..., F)


METHOD = Method(
    delta_type="bitfit",
    config=BitFitConfig,
    build=build,
    route=Route.OUTPUT,
    default_positions=("attn.q", "attn.k", "attn.v", "attn.o", "ff.w1", "ff.w2", "layer_norm", "final_layer_norm"),
    fold=fold,
    summary="A new zero bias on module outputs (output route); default positions: every attention and FFN "
    "projection and the block layer norms.",
)
