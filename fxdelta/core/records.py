"""What observation records: the shapes and call pattern of a module, as seen on FakeTensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxdelta.core.calls import OutKind


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and device of one tensor seen during observation."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(int(s) for s in t.shape), t.dtype, t.device)

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point

    def real(self) -> torch.Tensor:
        """A real tensor of this spec (random for floats, zeros otherwise), for validation runs."""
        if self.floating:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


@dataclass(frozen=True)
class CallRecord:
    """How a module was first called during observation (and how often)."""

    args: tuple[TensorSpec | None, ...]  # per positional argument; None when not a tensor
    kwargs: tuple[tuple[str, TensorSpec | None], ...]
    h_in_slot: int | str | None
    h_in: TensorSpec | None
    out_kind: OutKind
    h_out: TensorSpec | None
    outputs: tuple[TensorSpec, ...] | None  # every output tensor when the output is a tensor/tuple of them
    calls: int = 1
    order: int = 0  # when its first call started, among the observed modules' first calls

    @property
    def all_tensor_inputs(self) -> bool:
        return all(s is not None for s in self.args) and all(s is not None for _, s in self.kwargs)

    @property
    def single_tensor(self) -> bool:
        """One tensor in (as ``h_in``), one tensor out: the shape an opaque graph node can wrap."""
        return self.out_kind is OutKind.TENSOR and self.h_in is not None and len(self.args) + len(self.kwargs) == 1

    @property
    def input_specs(self) -> list[TensorSpec | None]:
        """Positional arguments' specs, then keyword arguments', in call order."""
        return [*self.args, *(s for _, s in self.kwargs)]
