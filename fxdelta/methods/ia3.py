"""IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the FFN's intermediate activation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from fxdelta.core.routes import Route
from fxdelta.methods import peft_ia3
from fxdelta.methods.folding import scaled_weight, wide
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, ScaleReader, TargetInfo


@dataclass(frozen=True, kw_only=True)
class IA3Config(DeltaConfig):
    """IA3 has no hyper-parameters beyond where to patch (default: attention keys and values, and the
    FFN activation). On GPT-2, keys and values come out of the fused ``c_attn``, whose whole q/k/v
    output is rescaled."""

    delta_type: ClassVar[str] = "ia3"


class IA3Delta(nn.Module):
    """Rescale by ``l`` (ones at init): as an output-route delta, ``d(h) = (l - 1) * h``, so ``h + d(h) = l * h``."""

    def __init__(self, shape: tuple[int, ...], *, dtype=None, device=None) -> None:
        super().__init__()
        self.ia3_l = nn.Parameter(torch.ones(shape, dtype=dtype, device=device))  # (F,) or (C, 1, ..., 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.ia3_l - 1) * h


def build(config: IA3Config, target: TargetInfo) -> IA3Delta:
    trailing = len(target.h_out.shape) - 2 if target.feature_axis == 1 else 0
    return IA3Delta((target.out_features,) + (1,) * trailing, dtype=target.dtype, device=target.device)


def fold(
    delta: nn.Module, module: nn.Module, params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor] | ScaleReader:
    """``l * (W x + b)`` is ``(diag(l) W) x + l * b``: IA3 scales the module's output, so it folds into the
    rows of a linear layer or convolution (the output side; columns of GPT-2's transposed ``Conv1D``) and
    into both affine parameters of a norm. On an activation (the FFN's ``ff.act``, a default position)
    the scale is on what the FFN's down projection reads: it folds into that layer's input columns."""
    scale = wide(cast(IA3Delta, delta).ia3_l.detach().flatten())  # (F,)
    weight = scaled_weight(module, params.get("weight"), scale)
    if isinstance(weight, str):  # an activation, or a block whose output no weight of its own scales
        return ScaleReader(scale, weight)
    new = {"weight": weight}
    bias = params.get("bias")
    if bias is not None:
        new["bias"] = wide(bias) * scale
    return new


METHOD = Method(
    delta_type="ia3",
    config=IA3Config,
    build=build,
    route=Route.OUTPUT,
    default_positions=("attn.k", "attn.v", "ff.act"),
    fold=fold,
    summary="Learned rescaling vectors (ones at init) on keys, values and the FFN activation (output route).",
    aliases=("IA3",),
    peft=peft_ia3.FORMAT,
)
