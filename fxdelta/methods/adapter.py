"""Adapter (Houlsby et al. 2019): a bottleneck MLP added after a module's output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fxdelta.core.routes import Route
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.bottleneck import Bottleneck, dense_bottleneck, fold_refusal
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(DeltaConfig):
    """``bottleneck_dim``: width of the bottleneck; ``non_linearity``: its activation."""

    delta_type: ClassVar[str] = "adapter"

    bottleneck_dim: int = 24
    non_linearity: NonLinearity | str = "gelu_new"

    def validate(self) -> None:
        self._positive_int("bottleneck_dim")
        self._enum("non_linearity", NonLinearity)


class AdapterDelta(Bottleneck):
    """``d(h) = up(act(down(h)))`` on the feature axis, dense projections; ``up`` starts at zero."""

    def __init__(
        self, features: int, config: AdapterConfig, *, feature_axis: int = -1, dtype=None, device=None
    ) -> None:
        down, up = dense_bottleneck(features, config.bottleneck_dim, features, dtype=dtype, device=device)
        super().__init__(down, up, config.non_linearity, feature_axis=feature_axis)


def build(config: AdapterConfig, target: TargetInfo) -> AdapterDelta:
    return AdapterDelta(
        target.out_features, config, feature_axis=target.feature_axis, dtype=target.dtype, device=target.device
    )


METHOD = Method(
    delta_type="adapter",
    config=AdapterConfig,
    build=build,
    route=Route.OUTPUT,
    fold_refusal=fold_refusal(),
    default_positions=("attn.o", "ff.w2"),
    summary="Bottleneck adapters after modules (output route); default positions: attention output and FFN output.",
    small={"bottleneck_dim": 16},
)
