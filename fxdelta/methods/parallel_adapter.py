"""Parallel adapter (He et al. 2022): a bottleneck MLP from a module's input to (another) module's output.

``modified_modules`` is read as pairs ``[source, target, source, target, ...]``: the adapter reads
the input of ``source`` and adds to the output of ``target``; a pair with the same module twice is a
plain parallel adapter around it. Default pairs: each attention block with itself, and the FFN input
(``ff.in``) with the FFN output (``ff.w2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fxdelta.core.routes import Route
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.bottleneck import Bottleneck, dense_bottleneck, fold_refusal
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True, kw_only=True)
class ParallelAdapterConfig(DeltaConfig):
    """``bottleneck_dim``: width of the bottleneck; ``non_linearity``: its activation; ``scaled``: a fixed
    factor on the adapter's output."""

    delta_type: ClassVar[str] = "parallel_adapter"

    bottleneck_dim: int = 24
    non_linearity: NonLinearity | str = "gelu_new"
    scaled: float = 1.0

    def validate(self) -> None:
        self._positive_int("bottleneck_dim")
        self._enum("non_linearity", NonLinearity)
        self._number("scaled", 0.0, low_inclusive=False)


class ParallelAdapterDelta(Bottleneck):
    """``d(x) = scaled * up(act(down(x)))``, from the source's input width to the target's output width;
    ``up`` starts at zero."""

    def __init__(self, n_in: int, n_out: int, config: ParallelAdapterConfig, *, dtype=None, device=None) -> None:
        down, up = dense_bottleneck(n_in, config.bottleneck_dim, n_out, dtype=dtype, device=device)
        super().__init__(down, up, config.non_linearity, scaled=config.scaled)


def build(config: ParallelAdapterConfig, target: TargetInfo) -> ParallelAdapterDelta:
    target.factor(type(config).__name__, "scaled", config.scaled)
    return ParallelAdapterDelta(
        target.in_features, target.h_out.shape[-1], config, dtype=target.dtype, device=target.device
    )


METHOD = Method(
    delta_type="parallel_adapter",
    config=ParallelAdapterConfig,
    build=build,
    route=Route.PARALLEL,
    fold_refusal=fold_refusal("(and it may read another module's input)"),
    default_positions=("attn", "attn", "ff.in", "ff.w2"),
    needs_h_in=True,
    pairs=True,
    summary="Bottleneck adapters from a module's input to a (possibly other) module's output; ``modified_modules`` "
    "is read as ``[source, target, ...]`` pairs; default pairs: attention block with itself, FFN input to FFN output.",
    aliases=("parallel-adapter",),
    small={"bottleneck_dim": 16},
)
