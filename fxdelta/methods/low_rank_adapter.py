"""LowRankAdapter (Mahabadi et al. 2021, Compacter paper): an adapter whose projections are rank-r products."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fxdelta.core.routes import Route
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.bottleneck import Bottleneck, fold_refusal
from fxdelta.methods.low_rank import LowRankLinear, WeightInit, bottleneck_size
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True, kw_only=True)
class LowRankAdapterConfig(DeltaConfig):
    """``reduction_factor``: bottleneck = features // reduction_factor; ``low_rank_rank``: rank of each
    projection; ``low_rank_w_init``: init of the factors; ``non_linearity``: the activation."""

    delta_type: ClassVar[str] = "low_rank_adapter"

    reduction_factor: int = 32
    non_linearity: NonLinearity | str = "gelu_new"
    low_rank_w_init: WeightInit | str = "glorot-uniform"
    low_rank_rank: int = 1

    def validate(self) -> None:
        self._positive_int("reduction_factor")
        self._positive_int("low_rank_rank")
        self._enum("non_linearity", NonLinearity)
        self._enum("low_rank_w_init", WeightInit)


class LowRankAdapterDelta(Bottleneck):
    """``d(h) = up(act(down(h)))`` with rank-r ``down``/``up``; ``up`` starts at zero (identity)."""

    def __init__(
        self,
        features: int,
        bottleneck: int,
        config: LowRankAdapterConfig,
        *,
        feature_axis: int = -1,
        dtype=None,
        device=None,
    ) -> None:
        kw = dict(dtype=dtype, device=device)
        init = WeightInit(config.low_rank_w_init)  # validated: already a member
        down = LowRankLinear(features, bottleneck, config.low_rank_rank, init, **kw)
        up = LowRankLinear(bottleneck, features, config.low_rank_rank, init, zero=True, **kw)
        super().__init__(down, up, config.non_linearity, feature_axis=feature_axis)


def build(config: LowRankAdapterConfig, target: TargetInfo) -> LowRankAdapterDelta:
    features = target.out_features
    bottleneck = bottleneck_size(features, config.reduction_factor, type(config).__name__, target.path)
    return LowRankAdapterDelta(
        features, bottleneck, config, feature_axis=target.feature_axis, dtype=target.dtype, device=target.device
    )


METHOD = Method(
    delta_type="low_rank_adapter",
    config=LowRankAdapterConfig,
    build=build,
    route=Route.OUTPUT,
    fold_refusal=fold_refusal(),
    default_positions=("attn", "ff"),
    summary="Adapters with rank-``low_rank_rank`` projections (output route); default positions: the attention "
    "block and FFN outputs.",
    aliases=("lowrankadapter",),
    small={"reduction_factor": 8},
)
