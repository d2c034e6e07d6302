"""What a delta method is, as data: a config class, a module builder, one route, default positions.

Core code reads these fields and never branches on method names. What a method can do beyond
building its delta modules is declared here too (its own probe and sites, merging, the state a
checkpoint holds), so nothing is found out with ``hasattr`` at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxdelta.core.entries import SitePlanner
from fxdelta.core.errors import ConfigError, UnsupportedModelError
from fxdelta.core.precision import resolve
from fxdelta.core.records import TensorSpec
from fxdelta.core.routes import Route
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.peft import PeftFormat

# Modules whose outputs put features on dim 1 (N, C, ...), not on the last dim.
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)


@dataclass(frozen=True)
class TargetInfo:
    """Everything a method needs to size the delta for one target module."""

    path: str
    module: nn.Module
    h_in: TensorSpec | None
    h_out: TensorSpec
    probed: Any = None  # what the method's own probe found at this target
    delta_dtype: str | torch.dtype | None = None  # the config's: None is float32 on half-precision targets

    @property
    def feature_axis(self) -> int:
        return 1 if isinstance(self.module, _CHANNELS_FIRST) and len(self.h_out.shape) > 2 else -1

    @property
    def in_features(self) -> int:
        if self.h_in is None:  # the build stage checks needs_h_in first; this names the slip if not
            raise UnsupportedModelError(f"{self.path} has no observed input, so its delta cannot be sized")
        return self.h_in.shape[-1]

    @property
    def out_features(self) -> int:
        return self.h_out.shape[self.feature_axis]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype to build the delta in (``DeltaConfig.delta_dtype`` for this target)."""
        return resolve(self.delta_dtype, self.target_dtype)

    @property
    def target_dtype(self) -> torch.dtype:
        """The dtype the target computes in: its weight's, else its output's."""
        weight = getattr(self.module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point:
            return weight.dtype
        return self.h_out.dtype if self.h_out.floating else torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        return self.h_out.device

    def factor(self, owner: str, field: str, value: float) -> float:
        """``value``, a constant the delta multiplies tensors by, once checked to stay finite in its dtype."""
        if not math.isfinite(value) or abs(value) > torch.finfo(self.dtype).max:
            raise ConfigError(
                f"{owner}.{field} makes the delta on {self.path or '<root>'} multiply by {value:g}, which is not "
                f"finite in {self.dtype}; use a smaller value"
            )
        return value


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's linear layer with a transposed weight)."""
    if isinstance(module, nn.Linear):
        return True
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def linear_only(module: nn.Module) -> str | None:
    if is_linear_like(module):
        return None
    return (
        f"it is a {type(module).__name__}, and this method patches linear layers only (nn.Linear, transformers Conv1D)"
    )


def any_module(module: nn.Module) -> str | None:
    return None


Probe = Callable[[nn.Module, Any, list[str]], Mapping[str, Any]]


@dataclass(frozen=True)
class ScaleReader:
    """A fold's answer for a delta that scales its target's output per feature where no weight of the target
    can hold that (an activation): scale the input features of the linear layer that reads the output."""

    scale: torch.Tensor  # (F,)
    why: str  # why the target itself cannot hold it


# fold(delta, module, params) -> new values of some of ``module``'s own parameters (by name: "weight",
# "bias"), computed from ``params`` (their current values), such that ``module`` with them computes what
# ``module`` with ``delta`` on its route did; or a ``ScaleReader``; or why it cannot fold.
Fold = Callable[[nn.Module, nn.Module, Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor] | ScaleReader | str]


@dataclass(frozen=True, kw_only=True)
class Method:
    """One delta method.

    ``build(config, target)`` makes the delta module for one target; ``route`` says how it joins the
    target's computation. Methods whose route is not an edge around a module (``Route.on_edge``)
    place their deltas with ``plan_sites(backbone, entries) -> sites`` instead of the graph and hook
    planner. ``summary`` is the one-line description of the method's delta-model class, ``small``
    hyper-parameters that suit a tiny backbone (hidden size 64; the demo uses them).
    """

    delta_type: str
    config: type[DeltaConfig]
    build: Callable[[Any, TargetInfo], nn.Module]
    route: Route
    default_positions: tuple[str, ...]  # names in the common structure map (fxdelta.spec.structure)
    summary: str
    aliases: tuple[str, ...] = ()  # other spellings accepted as delta_type (OpenDelta's)
    can_patch: Callable[[nn.Module], str | None] = any_module  # None, or why it cannot
    needs_h_in: bool = False  # whether the method reads the module's input (sizes the delta)
    pairs: bool = False  # selectors come in (source, target) pairs: h_in read at source, added at target
    # What a method needs to know beyond shapes (prefix tuning: each attention's heads and head size),
    # from its own FakeTensor run: probe(backbone, example, paths) -> {path: info}, into TargetInfo.probed.
    probe: Probe | None = None
    # Ties a delta's modules together once all are built (prefix tuning: one shared MLP).
    link: Callable[..., None] | None = None
    # Methods that patch one place the method finds itself (soft prompts: where the ids are embedded).
    locate: Callable[[nn.Module], str] | None = None
    plan_sites: SitePlanner | None = None
    # Folds what only serves training into the delta module (prefix tuning's MLP into its prefixes).
    fold_reparameterization: Callable[[nn.Module], None] | None = None
    # Folds one delta module into its target's weights (fxdelta.merge); None if the method cannot,
    # for the reason ``fold_refusal`` gives.
    fold: Fold | None = None
    fold_refusal: str = "its delta is not a function that a weight or bias of the patched module can hold"
    # The tensors a checkpoint holds for one delta module, when not its state_dict().
    exported_state: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    # How the method reads and writes PEFT's adapter format (fxdelta.spec.peft); None: PEFT has no counterpart.
    peft: PeftFormat | None = None
    identity_at_init: bool = True  # with default init, the patched backbone computes what it did
    small: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.delta_type != self.delta_type:
            raise TypeError(
                f"method {self.delta_type!r}: its config {self.config.__name__} says {self.config.delta_type!r}"
            )
        if not self.route.on_edge and self.plan_sites is None:
            raise TypeError(f"method {self.delta_type!r}: route {self.route.value!r} needs plan_sites (its own sites)")

    def state_of(self, delta: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds for one of this method's delta modules."""
        return self.exported_state(delta) if self.exported_state is not None else delta.state_dict()
