"""Compacter (Mahabadi et al. 2021): an adapter whose projections are sums of Kronecker products (PHM layers)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from fxdelta.core.errors import ConfigError
from fxdelta.core.routes import Route
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.bottleneck import Bottleneck, fold_refusal
from fxdelta.methods.low_rank import WeightInit, bottleneck_size, init_weight
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


class RuleInit(enum.Enum):
    NORMAL = "normal"  # N(0, 0.01)
    UNIFORM = "uniform"  # U(-0.01, 0.01)


@dataclass(frozen=True, kw_only=True)
class CompacterConfig(DeltaConfig):
    """OpenDelta's CompacterModel fields and defaults. ``hypercomplex_division`` (n) is the number of
    Kronecker terms; ``phm_c_init`` inits the n x n rules; ``hypercomplex_nonlinearity`` (OpenDelta's
    name) inits the weight factors; ``factorized_phm`` makes each weight a rank-``phm_rank`` product;
    ``factorized_phm_rule`` makes each rule rank 1; ``learn_phm=False`` freezes the rules."""

    delta_type: ClassVar[str] = "compacter"

    reduction_factor: int = 16
    non_linearity: NonLinearity | str = "gelu_new"
    phm_c_init: RuleInit | str = "normal"
    hypercomplex_division: int = 4
    learn_phm: bool = True
    hypercomplex_nonlinearity: WeightInit | str = "glorot-uniform"
    shared_phm_rule: bool = False
    factorized_phm: bool = True
    shared_W_phm: bool = False
    factorized_phm_rule: bool = False
    phm_rank: int = 1
    phm_init_range: float = 0.0001
    use_bias_up_sampler: bool = True
    use_bias_down_sampler: bool = True

    def validate(self) -> None:
        for field in ("reduction_factor", "hypercomplex_division", "phm_rank"):
            self._positive_int(field)
        self._number("phm_init_range", 0.0, low_inclusive=False)
        self._enum("non_linearity", NonLinearity)
        self._enum("phm_c_init", RuleInit)
        self._enum("hypercomplex_nonlinearity", WeightInit)
        for field in (
            "learn_phm",
            "factorized_phm",
            "factorized_phm_rule",
            "use_bias_up_sampler",
            "use_bias_down_sampler",
        ):
            self._require(field, isinstance(getattr(self, field), bool), "True or False")
        for field in ("shared_phm_rule", "shared_W_phm"):
            if getattr(self, field) is not False:
                raise ConfigError(
                    f"CompacterConfig.{field}=True is not supported: every PHM layer owns its rule and weights"
                )


class PHMLinear(nn.Module):
    """``y = x H + b`` with ``H = sum_i A_i kron W_i`` (in, out): n rules ``A_i`` (n, n), n weights ``W_i``
    (in/n, out/n).

    ``zero=True`` starts the weights at zero (the right factor, when factorized), so the map starts as exactly zero.
    """

    def __init__(
        self, n_in: int, n_out: int, config: CompacterConfig, *, bias: bool, zero: bool = False, dtype=None, device=None
    ) -> None:
        super().__init__()
        n = config.hypercomplex_division
        kw = dict(dtype=dtype, device=device)
        self.n, self.n_in, self.n_out = n, n_in, n_out
        rule_shapes = [(n, n, 1), (n, 1, n)] if config.factorized_phm_rule else [(n, n, n)]
        names = ["phm_rule_left", "phm_rule_right"] if config.factorized_phm_rule else ["phm_rule"]
        for name, shape in zip(names, rule_shapes, strict=True):
            rule = torch.empty(shape, **kw)
            if config.phm_c_init is RuleInit.NORMAL:
                rule.normal_(0, 0.01)
            else:
                rule.uniform_(-0.01, 0.01)
            # A frozen rule is a buffer: still saved with the delta, never made trainable by freeze_module.
            if config.learn_phm:
                self.register_parameter(name, nn.Parameter(rule))
            else:
                self.register_buffer(name, rule)
        r_in, r_out = n_in // n, n_out // n
        shapes = (
            {"W_left": (n, r_in, config.phm_rank), "W_right": (n, config.phm_rank, r_out)}
            if config.factorized_phm
            else {"W": (n, r_in, r_out)}
        )
        for name, shape in shapes.items():
            w = nn.Parameter(torch.empty(shape, **kw))
            for i in range(n):
                init_weight(w[i], WeightInit(config.hypercomplex_nonlinearity), config.phm_init_range)
            if zero and name in ("W", "W_right"):
                nn.init.zeros_(w)
            self.register_parameter(name, w)
        self.b = nn.Parameter(torch.zeros(n_out, **kw)) if bias else None

    def _tensor(self, name: str) -> torch.Tensor:
        return cast(torch.Tensor, getattr(self, name))  # a parameter, or a buffer when the rules are frozen

    def rule(self) -> torch.Tensor:
        if hasattr(self, "phm_rule"):
            return self._tensor("phm_rule")
        return torch.bmm(self._tensor("phm_rule_left"), self._tensor("phm_rule_right"))  # (n, n, n)

    def weight(self) -> torch.Tensor:
        """The (in, out) matrix ``H``."""
        if hasattr(self, "W_left"):
            w = torch.bmm(self._tensor("W_left"), self._tensor("W_right"))  # (n, in/n, out/n)
        else:
            w = self._tensor("W")
        # H[a*r + k, c*s + p] = sum_i A_i[a, c] W_i[k, p]: the Kronecker layout
        return torch.einsum("iac,ikp->akcp", self.rule(), w).reshape(self.n_in, self.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight()
        return y if self.b is None else y + self.b

    def extra_repr(self) -> str:
        return f"in={self.n_in}, out={self.n_out}, n={self.n}"


class CompacterDelta(Bottleneck):
    """``d(h) = up(act(down(h)))`` with PHM projections; ``up`` starts at zero, so the patch starts as identity."""

    def __init__(
        self,
        features: int,
        bottleneck: int,
        config: CompacterConfig,
        *,
        feature_axis: int = -1,
        dtype=None,
        device=None,
    ) -> None:
        kw = dict(dtype=dtype, device=device)
        down = PHMLinear(features, bottleneck, config, bias=config.use_bias_down_sampler, **kw)
        up = PHMLinear(bottleneck, features, config, bias=config.use_bias_up_sampler, zero=True, **kw)
        super().__init__(down, up, config.non_linearity, feature_axis=feature_axis)


def build(config: CompacterConfig, target: TargetInfo) -> CompacterDelta:
    features = target.out_features
    bottleneck = bottleneck_size(features, config.reduction_factor, "CompacterConfig", target.path)
    n = config.hypercomplex_division
    if features % n or bottleneck % n:
        raise ConfigError(
            f"CompacterConfig.hypercomplex_division={n} must divide both the {features} features of {target.path} "
            f"and the bottleneck {bottleneck} (= {features} // reduction_factor {config.reduction_factor})"
        )
    return CompacterDelta(
        features, bottleneck, config, feature_axis=target.feature_axis, dtype=target.dtype, device=target.device
    )


METHOD = Method(
    delta_type="compacter",
    config=CompacterConfig,
    build=build,
    route=Route.OUTPUT,
    fold_refusal=fold_refusal(),
    default_positions=("attn", "ff"),
    summary="Adapters with PHM (sum-of-Kronecker) projections (output route); default positions: the attention "
    "block and FFN outputs.",
    small={"reduction_factor": 8},
)
