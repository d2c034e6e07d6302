"""Adapter (Houlsby et al. 2019): a bottleneck MLP added after a module's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fxdelta.config import DeltaConfig
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.base import Method, TargetInfo, on_feature_axis
from fxdelta.routes import Route


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(DeltaConfig):
    """``bottleneck_dim``: width of the bottleneck; ``non_linearity``: its activation."""

    delta_type: ClassVar[str] = "adapter"

    bottleneck_dim: int = 24
    non_linearity: NonLinearity | str = "gelu_new"

    def validate(self) -> None:
        self._positive_int("bottleneck_dim")
        self._enum("non_linearity", NonLinearity)


class AdapterDelta(nn.Module):
    """``d(h) = up(act(down(h)))`` on the feature axis; ``up`` starts at zero, so the patch starts as identity."""

    def __init__(self, features: int, config: AdapterConfig, *, feature_axis: int = -1, dtype=None, device=None) -> None:
        super().__init__()
        self.down_proj = nn.Linear(features, config.bottleneck_dim, dtype=dtype, device=device)
        self.up_proj = nn.Linear(config.bottleneck_dim, features, dtype=dtype, device=device)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)
        self.non_linearity = NonLinearity(config.non_linearity)
        self.feature_axis = feature_axis

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return on_feature_axis(self._bottleneck, h, self.feature_axis)

    def _bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        return self.up_proj(self.non_linearity(self.down_proj(h)))  # (..., features)

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity.value}, feature_axis={self.feature_axis}"


def build(config: AdapterConfig, target: TargetInfo) -> AdapterDelta:
    return AdapterDelta(
        target.out_features, config, feature_axis=target.feature_axis, dtype=target.dtype, device=target.device
    )


METHOD = Method(
    delta_type="adapter",
    config=AdapterConfig,
    build=build,
    route=Route.OUTPUT,
    default_positions=("attn.o", "ff.w2"),
)
