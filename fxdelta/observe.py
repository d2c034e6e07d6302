"""Observe how the backbone calls its modules, with FakeTensors: shapes, dtypes, call patterns.

This replaces OpenDelta's real dummy forward. The backbone runs once under ``FakeTensorMode``
(no real compute) in eval mode without autograd, the mode in which fused inference fast paths
(e.g. ``nn.TransformerEncoderLayer``) skip calling their submodules. Each module of interest has
its ``forward`` wrapped by a recorder, not hooked, because torch disables some fast paths when
hooks are present; a module that is not called here would silently never see its delta.
Everything the forward touched (training flags, attributes, buffers) is restored afterwards.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from fxdelta.examples import Example

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and device of one tensor seen during observation."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls(tuple(int(s) for s in t.shape), t.dtype, t.device)

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point

    def real(self) -> torch.Tensor:
        """A real tensor of this spec (random for floats, zeros otherwise), for validation runs."""
        if self.floating:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


class OutKind(enum.Enum):
    TENSOR = "tensor"
    SEQUENCE = "sequence"  # tuple/list whose element 0 is the hidden state
    MAPPING = "mapping"  # ModelOutput / dict whose first value is the hidden state
    OTHER = "other"


def _spec(value: Any) -> TensorSpec | None:
    return TensorSpec.of(value) if isinstance(value, torch.Tensor) else None


def first_hidden(out: Any) -> tuple[OutKind, Any]:
    """The hidden state inside a module's output, and how it is packed."""
    if isinstance(out, torch.Tensor):
        return OutKind.TENSOR, out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return OutKind.SEQUENCE, out[0]
    if isinstance(out, Mapping) and out:
        first = next(iter(out.values()))
        if isinstance(first, torch.Tensor):
            return OutKind.MAPPING, first
    return OutKind.OTHER, None


def hidden_slot(args: tuple, kwargs: Mapping[str, Any], first_param: str | None) -> int | str | None:
    """Where ``h_in`` sits in a call: first positional, the first parameter by keyword, or ``hidden_states``."""
    if args:
        return 0 if isinstance(args[0], torch.Tensor) else None
    for key in (first_param, "hidden_states"):
        if key and isinstance(kwargs.get(key), torch.Tensor):
            return key
    return None


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

    @property
    def all_tensor_inputs(self) -> bool:
        return all(s is not None for s in self.args) and all(s is not None for _, s in self.kwargs)

    @property
    def single_tensor(self) -> bool:
        """One tensor in (as ``h_in``), one tensor out: the shape an opaque graph node can wrap."""
        return (
            self.out_kind is OutKind.TENSOR
            and self.h_in is not None
            and len(self.args) + len(self.kwargs) == 1
        )


def first_param_name(module: nn.Module) -> str | None:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return p.name
    return None


def _capture(args: tuple, kwargs: Mapping[str, Any], out: Any, first_param: str | None) -> CallRecord:
    slot = hidden_slot(args, kwargs, first_param)
    h_in = None if slot is None else (args[slot] if isinstance(slot, int) else kwargs[slot])
    kind, hidden = first_hidden(out)
    outputs = None
    if kind is OutKind.TENSOR:
        outputs = (TensorSpec.of(out),)
    elif isinstance(out, tuple) and all(isinstance(o, torch.Tensor) for o in out):
        outputs = tuple(TensorSpec.of(o) for o in out)
    return CallRecord(
        args=tuple(_spec(a) for a in args),
        kwargs=tuple((k, _spec(v)) for k, v in kwargs.items()),
        h_in_slot=slot,
        h_in=_spec(h_in),
        out_kind=kind,
        h_out=_spec(hidden),
        outputs=outputs,
    )


@contextlib.contextmanager
def restored_after(model: nn.Module) -> Iterator[None]:
    """Undo whatever a forward pass wrote into the model (flags, attributes, buffers, params)."""
    saved = [
        (m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()
    ]
    try:
        yield
    finally:
        for m, attrs, params, buffers, modules in saved:
            m._parameters.clear(), m._parameters.update(params)
            m._buffers.clear(), m._buffers.update(buffers)
            m._modules.clear(), m._modules.update(modules)
            m.__dict__.clear()
            m.__dict__.update(attrs)


def as_fake(value: Any, mode: FakeTensorMode) -> Any:
    if isinstance(value, torch.Tensor):
        return mode.from_tensor(value)
    if isinstance(value, (tuple, list)):
        return type(value)(as_fake(v, mode) for v in value)
    if isinstance(value, dict):
        return {k: as_fake(v, mode) for k, v in value.items()}
    return value


def observe(
    backbone: nn.Module,
    example: Example,
    paths: Iterable[str],
    *,
    hooked: Iterable[str] = (),
) -> tuple[dict[str, CallRecord], str | None]:
    """Run ``backbone`` once on FakeTensors and record the first call of each module in ``paths``.

    ``hooked`` modules get a no-op forward hook during the run, to learn whether a module that
    is skipped without hooks is called once hooks are present. Returns the records and, if the
    forward failed, the reason (the records are then partial).
    """
    modules = dict(backbone.named_modules())
    records: dict[str, CallRecord] = {}
    counts: dict[str, int] = {}

    def recorder(path: str, module: nn.Module, original: Any) -> Any:
        first = first_param_name(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            counts[path] = counts.get(path, 0) + 1
            if path not in records:
                records[path] = _capture(args, kwargs, out, first)
            return out

        return forward

    failure = None
    with restored_after(backbone):
        handles = []
        try:
            for path in paths:
                module = modules[path]
                module.forward = recorder(path, module, module.forward)
            for path in hooked:
                handles.append(modules[path].register_forward_hook(lambda *_: None))
            backbone.eval()
            with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
                backbone(*as_fake(example.args, mode), **as_fake(example.kwargs, mode))
        except Exception as e:  # any failure only means less information; the caller decides
            failure = f"{type(e).__name__}: {e}"
            logger.info("fxdelta: FakeTensor observation of %s failed: %s", type(backbone).__name__, failure)
        finally:
            for h in handles:
                h.remove()
    out = {p: _with_calls(r, counts[p]) for p, r in records.items()}
    return out, failure


def _with_calls(record: CallRecord, calls: int) -> CallRecord:
    return CallRecord(**{**record.__dict__, "calls": calls})
