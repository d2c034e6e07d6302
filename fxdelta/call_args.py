"""Rebinding a call's arguments by name, for hooks that must read or replace some of them."""

from __future__ import annotations

import inspect
from typing import Any

from fxdelta.errors import FxDeltaError


def by_name(signature: inspect.Signature, args: tuple, kwargs: dict, *, keep_first: bool = False) -> tuple[tuple, dict]:
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
