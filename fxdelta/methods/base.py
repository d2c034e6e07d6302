"""What a delta method is, as data: a config class, a module builder, one route, default positions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxdelta.config import DeltaConfig
from fxdelta.observe import TensorSpec
from fxdelta.routes import Route

# Modules whose outputs put features on dim 1 (N, C, ...), not on the last dim.
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


@dataclass(frozen=True)
class TargetInfo:
    """Everything a method needs to size the delta for one target module."""

    path: str
    module: nn.Module
    h_in: TensorSpec | None
    h_out: TensorSpec
    extra: dict[str, Any] = field(default_factory=dict)  # what the method's probe found

    @property
    def feature_axis(self) -> int:
        return 1 if isinstance(self.module, _CHANNELS_FIRST) and len(self.h_out.shape) > 2 else -1

    @property
    def in_features(self) -> int:
        assert self.h_in is not None
        return self.h_in.shape[-1]

    @property
    def out_features(self) -> int:
        return self.h_out.shape[self.feature_axis]

    @property
    def dtype(self) -> torch.dtype:
        weight = getattr(self.module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point:
            return weight.dtype
        return self.h_out.dtype if self.h_out.floating else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        return self.h_out.device


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's linear layer with a transposed weight)."""
    if isinstance(module, nn.Linear):
        return True
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def linear_only(module: nn.Module) -> str | None:
    if is_linear_like(module):
        return None
    return f"it is a {type(module).__name__}, and this method patches linear layers only (nn.Linear, transformers Conv1D)"


def any_module(module: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class Method:
    """One delta method. Core code reads these fields and never branches on method names."""

    delta_type: str
    config: type[DeltaConfig]
    build: Callable[[DeltaConfig, TargetInfo], nn.Module]
    route: Route
    default_positions: tuple[str, ...]  # names in the common structure map (fxdelta.structure)
    can_patch: Callable[[nn.Module], str | None] = any_module  # None, or why it cannot
    needs_h_in: bool = False  # whether the method reads the module's input (sizes the delta)
    pairs: bool = False  # selectors come in (source, target) pairs: h_in read at source, added at target
    # What a method needs to know beyond shapes (prefix tuning: each attention's heads and head size),
    # from its own FakeTensor run: probe(backbone, example, paths) -> {path: info}, into TargetInfo.extra.
    probe: Callable[[nn.Module, Any, list[str]], dict[str, Any]] | None = None
    # Ties a delta's modules together once all are built (prefix tuning: one shared MLP).
    link: Callable[..., None] | None = None
    # Methods that patch one place the method finds itself (soft prompts: where the ids are embedded).
    locate: Callable[[nn.Module], str] | None = None


def on_feature_axis(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply a last-dim ``fn`` along ``axis`` (channels-first outputs keep their layout)."""
    if axis == -1:
        return fn(h)
    return fn(h.movedim(axis, -1)).movedim(-1, axis)
