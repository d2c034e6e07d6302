"""Precision: a delta computes in its own dtype and hands the backbone back the backbone's.

A delta may be kept in another dtype than the module it patches (float32 deltas on a bfloat16
backbone: ``DeltaConfig.delta_dtype``). Every edge-route delta is called through ``run``: its
floating inputs are cast to the delta's dtype, its output to the dtype of the hidden state it is
added to. The delta's dtype is read at each call, so a delta cast by hand (``delta.to(torch.float32)``)
or with the backbone (``model.to(torch.bfloat16)``) keeps working.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import ConfigError, FxDeltaError

_FLOATS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_ALIASES = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "fp32": "float32"}
_HALF = (torch.float16, torch.bfloat16)


def dtype_name(owner: str, value: Any) -> str | None:
    """``value`` (None, a floating torch dtype, or its name) as the name a config records, e.g. ``"float32"``."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
    elif isinstance(value, str):
        name = value.removeprefix("torch.")
        name = _ALIASES.get(name, name)
    else:
        name = ""
    if name not in _FLOATS:
        raise ConfigError(
            f"{owner}.delta_dtype must be None (float32 on float16/bfloat16 modules, else the module's own dtype) "
            f"or a floating-point dtype: one of {sorted(_FLOATS)} or torch.float32 etc., got {value!r}"
        )
    return name


def resolve(wanted: str | torch.dtype | None, target: torch.dtype) -> torch.dtype:
    """The dtype a delta is built in on a module computing in ``target``, for ``delta_dtype=wanted``.

    ``None`` is PEFT's ``autocast_adapter_dtype=True``: float32 on half-precision modules, else ``target``.
    """
    name = dtype_name("DeltaConfig", wanted)
    if name is not None:
        return _FLOATS[name]
    return torch.float32 if target in _HALF else target


def dtype_of(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (else buffer), or None if it has none."""
    for table in ("_parameters", "_buffers"):
        stack = [module]
        while stack:
            m = stack.pop()
            tensors: dict[str, torch.Tensor | None] = getattr(m, table)
            for t in tensors.values():
                if t is not None and t.is_floating_point():
                    return t.dtype
            stack.extend(c for c in reversed(m._modules.values()) if c is not None)
    return None


def own_parameter(module: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter of ``module`` that is not a delta's: where its dtype and device show."""
    own = (p for n, p in module.named_parameters() if p.is_floating_point() and not n.startswith(f"{DELTA_NAMESPACE}."))
    return next(own, None)


def run(delta: nn.Module, like: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``delta(*inputs)`` computed in the delta's dtype, returned in ``like``'s (the hidden state it joins)."""
    dtype = dtype_of(delta)
    if dtype is not None:
        inputs = tuple(x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x for x in inputs)
    try:
        out: torch.Tensor = delta(*inputs)
    except RuntimeError as e:
        mixed = sorted({str(t.dtype) for t in _floats(delta)})
        if len(mixed) < 2:
            raise
        raise FxDeltaError(
            f"a {type(delta).__name__} delta holds tensors of several dtypes ({', '.join(mixed)}), so it cannot "
            f"compute; cast it as a whole, e.g. delta.to(torch.float32) (the error was: {e})"
        ) from e
    return out.to(like.dtype) if out.dtype != like.dtype else out


def _floats(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
