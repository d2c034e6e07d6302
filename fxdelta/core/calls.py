"""Call conventions: where a module's hidden state sits in its arguments and in its output.

``h_in`` is the first positional argument, or the first parameter or ``hidden_states`` passed by
keyword; ``h_out`` is the output, element 0 of a tuple, or the first field of a ``ModelOutput``.
Hooks read and replace them here, and rebind other arguments by name.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import FxDeltaError


class OutKind(enum.Enum):
    TENSOR = "tensor"
    SEQUENCE = "sequence"  # tuple/list whose element 0 is the hidden state
    MAPPING = "mapping"  # ModelOutput / dict whose first value is the hidden state
    OTHER = "other"


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


def repack(out: Any, kind: OutKind, hidden: torch.Tensor) -> Any:
    """``out`` with its hidden state replaced by ``hidden`` (the inverse of ``first_hidden``)."""
    if kind is OutKind.TENSOR:
        return hidden
    if kind is OutKind.SEQUENCE:
        return type(out)((hidden, *out[1:])) if isinstance(out, tuple) else [hidden, *out[1:]]
    key = next(iter(out.keys()))
    out[key] = hidden  # ModelOutput keeps its attribute and item views in sync
    return out


def forward_parameters(module: nn.Module) -> tuple[inspect.Parameter, ...] | None:
    """The parameters of ``module.forward`` (without ``self``), or None when it has no signature."""
    forward = module.forward
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
        return _method_parameters(type(module).forward)  # the class's own: one signature per class
    return _parameters(forward)


@functools.lru_cache(maxsize=1024)
def _method_parameters(function: Any) -> tuple[inspect.Parameter, ...] | None:
    return _parameters(functools.partial(function, None))  # ``self`` bound, as in a bound method


def _parameters(fn: Any) -> tuple[inspect.Parameter, ...] | None:
    try:
        return tuple(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def first_param_name(module: nn.Module) -> str | None:
    """The name of the first parameter of ``module.forward`` (None when it has none or no signature)."""
    for p in forward_parameters(module) or ():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return p.name
    return None


def hidden_slot(args: tuple[Any, ...], kwargs: Mapping[str, Any], first_param: str | None) -> int | str | None:
    """Where ``h_in`` sits in a call: first positional, the first parameter by keyword, or ``hidden_states``."""
    if args:
        return 0 if isinstance(args[0], torch.Tensor) else None
    for key in (first_param, "hidden_states"):
        if key and isinstance(kwargs.get(key), torch.Tensor):
            return key
    return None


def replace_slot(
    args: tuple[Any, ...], kwargs: dict[str, Any], slot: int | str, value: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with the one at ``slot`` replaced by ``value``."""
    if isinstance(slot, int):
        return (*args[:slot], value, *args[slot + 1 :]), kwargs
    return args, {**kwargs, slot: value}


def by_name(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], *, keep_first: bool = False
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` with every argument addressable by name (``**kwargs`` flattened).

    ``keep_first`` leaves a lone positional argument where it is (an attention's hidden states):
    the callers in transformers pass at most that one positionally, and binding costs time per call.
    """
    if not args or (keep_first and len(args) == 1):
        return args, dict(kwargs)
    bound = signature.bind_partial(*args, **kwargs)
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            raise FxDeltaError(f"fxdelta: a hook cannot rebind *{name} by name")
        else:
            out[name] = value
    return (), out
