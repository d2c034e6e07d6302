"""The non-linearities a delta module may use, by OpenDelta's names."""

import enum

import torch
import torch.nn.functional as F


class NonLinearity(enum.Enum):
    GELU_NEW = "gelu_new"  # tanh approximation of GELU (GPT-2, OpenDelta's adapter default)
    GELU = "gelu"
    RELU = "relu"
    SILU = "silu"
    SWISH = "swish"
    TANH = "tanh"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONS[self](x)


_FUNCTIONS = {
    NonLinearity.GELU_NEW: lambda x: F.gelu(x, approximate="tanh"),
    NonLinearity.GELU: F.gelu,
    NonLinearity.RELU: F.relu,
    NonLinearity.SILU: F.silu,
    NonLinearity.SWISH: F.silu,
    NonLinearity.TANH: torch.tanh,
}
