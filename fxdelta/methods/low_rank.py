"""Building blocks shared by the bottleneck adapters: low-rank and PHM linear maps, weight inits."""

from __future__ import annotations

import enum
import math

import torch
from torch import nn

from fxdelta.core.errors import ConfigError


class WeightInit(enum.Enum):
    """How the factors of a structured weight are initialised (OpenDelta's names)."""

    GLOROT_UNIFORM = "glorot-uniform"
    GLOROT_NORMAL = "glorot-normal"
    NORMAL = "normal"  # N(0, init_range), Compacter's phm_init_range


def init_weight(t: torch.Tensor, how: WeightInit, init_range: float = 1e-4) -> None:
    """Glorot inits with gain sqrt(2) (ReLU-family activations), as in the Compacter paper's code."""
    with torch.no_grad():
        if how is WeightInit.GLOROT_UNIFORM:
            nn.init.xavier_uniform_(t, gain=math.sqrt(2))
        elif how is WeightInit.GLOROT_NORMAL:
            nn.init.xavier_normal_(t, gain=math.sqrt(2))
        else:
            t.normal_(0.0, init_range)


def bottleneck_size(features: int, reduction_factor: int, owner: str, target: str) -> int:
    size = features // reduction_factor
    if size < 1:
        raise ConfigError(
            f"{owner}.reduction_factor={reduction_factor} leaves no bottleneck for the {features} features of "
            f"{target}; use a reduction_factor <= {features}"
        )
    return size


class LowRankLinear(nn.Module):
    """``y = x (W_left W_right) + b`` with ``W_left`` (in, rank) and ``W_right`` (rank, out).

    ``zero=True`` starts ``W_right`` (and ``b``) at zero, so the map starts as exactly zero.
    """

    def __init__(
        self, n_in: int, n_out: int, rank: int, init: WeightInit, *, zero: bool = False, dtype=None, device=None
    ):
        super().__init__()
        self.W_left = nn.Parameter(torch.empty(n_in, rank, dtype=dtype, device=device))
        self.W_right = nn.Parameter(torch.empty(rank, n_out, dtype=dtype, device=device))
        self.b = nn.Parameter(torch.zeros(n_out, dtype=dtype, device=device))
        init_weight(self.W_left, init)
        if zero:
            nn.init.zeros_(self.W_right)
        else:
            init_weight(self.W_right, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.W_left) @ self.W_right + self.b  # (..., out); never forms the (in, out) matrix
