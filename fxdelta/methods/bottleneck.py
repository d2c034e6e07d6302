"""The bottleneck shared by every adapter: ``d(h) = scaled * up(act(down(h)))`` on the feature axis.

Adapters differ only in what ``down_proj`` and ``up_proj`` are (dense, low-rank, PHM) and in where
they read and write; ``up_proj`` always starts at zero, so every adapter starts as an identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fxdelta.methods.activations import NonLinearity


def fold_refusal(aside: str = "") -> str:
    """Why an adapter's bottleneck cannot be merged into the patched module's weights (``Method.fold_refusal``);
    ``aside``, if given, is a parenthesis an adapter adds (``"(and it may read another module's input)"``)."""
    projections = f"its two projections {aside}" if aside else "its two projections"
    return f"its bottleneck has a nonlinearity between {projections}, which no weight of the patched module can hold"


def on_feature_axis(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply a last-dim ``fn`` along ``axis`` (channels-first outputs keep their layout)."""
    if axis == -1:
        return fn(h)
    return fn(h.movedim(axis, -1)).movedim(-1, axis)


class Bottleneck(nn.Module):
    def __init__(
        self,
        down_proj: nn.Module,
        up_proj: nn.Module,
        non_linearity: NonLinearity | str,
        *,
        feature_axis: int = -1,
        scaled: float = 1.0,
    ) -> None:
        super().__init__()
        self.down_proj = down_proj
        self.up_proj = up_proj
        self.non_linearity = NonLinearity(non_linearity)
        self.feature_axis = feature_axis
        self.scaled = scaled

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = on_feature_axis(self._bottleneck, h, self.feature_axis)
        return out if self.scaled == 1.0 else out * self.scaled

    def _bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        return self.up_proj(self.non_linearity(self.down_proj(h)))  # (..., out)

    def extra_repr(self) -> str:
        scaled = "" if self.scaled == 1.0 else f", scaled={self.scaled:g}"
        return f"non_linearity={self.non_linearity.value}, feature_axis={self.feature_axis}{scaled}"


def dense_bottleneck(n_in: int, bottleneck: int, n_out: int, *, dtype=None, device=None) -> tuple[nn.Linear, nn.Linear]:
    """Dense ``down_proj`` (default init) and zero ``up_proj``."""
    down = nn.Linear(n_in, bottleneck, dtype=dtype, device=device)
    up = nn.Linear(bottleneck, n_out, dtype=dtype, device=device)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)
    return down, up
