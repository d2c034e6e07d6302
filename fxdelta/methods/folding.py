"""What the folding methods share: which modules hold a per-feature weight and bias, in which layout.

A fold computes new values for a module's own parameters in float32 (float64 stays float64); the
caller casts them to each parameter's dtype, so a bfloat16 layer is rounded once.
"""

from __future__ import annotations

import torch
from torch import nn

from fxdelta.spec.method import is_linear_like

# Modules whose output is ``weight * normalized(x) + bias``, elementwise per feature.
_AFFINE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_KINDS = "linear layers (nn.Linear, transformers Conv1D), convolutions and affine norms"


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype a fold computes in."""
    return t.double() if t.dtype == torch.float64 else t.float()


def out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A linear-like layer's weight as (out, in), or an (out, in) weight back in its layout: transformers'
    ``Conv1D`` stores it as (in, out)."""
    return weight if isinstance(module, nn.Linear) else weight.t()


def _plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _foldable(module: nn.Module) -> bool:
    return is_linear_like(module) or _plain_conv(module) or isinstance(module, _AFFINE_NORMS)


def scaled_weight(module: nn.Module, weight: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor | str:
    """``weight`` with the row of each output feature ``f`` times ``scale[f]`` (``scale``: (F,)), in the
    layout ``module`` stores it in; or why ``module``'s output cannot be scaled through its weight."""
    if not _foldable(module):
        return f"fxdelta folds only into {_KINDS}, and this is a {type(module).__name__}"
    if weight is None:
        return f"this {type(module).__name__} has no weight to scale"
    if is_linear_like(module):
        return out_in(module, wide(out_in(module, weight)) * scale[:, None])  # (out, in) rows
    if _plain_conv(module):
        return wide(weight) * scale.view(-1, *(1,) * (weight.dim() - 1))  # (C_out, C_in / groups, *kernel)
    return wide(weight) * scale  # (C,) or LayerNorm's (..., F)


def foldable_bias(module: nn.Module, bias: torch.Tensor | None) -> torch.Tensor | str:
    """``module``'s bias, added to output feature ``f`` as ``bias[..., f]``; or why there is none to fold into."""
    if not (_foldable(module) or isinstance(module, nn.modules.conv._ConvNd)):
        return f"fxdelta folds only into {_KINDS}, and this is a {type(module).__name__}"
    if bias is None:
        return (
            f"this {type(module).__name__} has no bias; folding would add a parameter its class does not declare "
            f"(a state_dict key a freshly built model would not load)"
        )
    return wide(bias)
