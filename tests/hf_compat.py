"""What the tests need of transformers that moved between releases (the window fxdelta supports)."""

from __future__ import annotations

from typing import Any

from torch import nn

from fxdelta.sites.hf import cache_parameter


def enable_checkpointing(model: nn.Module, **kwargs: Any) -> None:
    """Activation checkpointing, under this release's name (``activation_checkpointing_enable`` from 5.23)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(**({"activation_checkpointing_kwargs": kwargs} if kwargs else {}))
    else:
        model.gradient_checkpointing_enable(**({"gradient_checkpointing_kwargs": kwargs} if kwargs else {}))


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands ``model`` a KV cache (``past_key_values``, ``cache`` from 5.24)."""
    name = cache_parameter(model)
    if name is None:
        raise TypeError(f"{type(model).__name__}.forward takes no KV cache")
    return {name: cache}


def returned_cache(out: Any) -> Any:
    """The KV cache a model or ``generate()`` returned, whatever its field is called."""
    from transformers.cache_utils import Cache

    return next(v for v in out.values() if isinstance(v, Cache))
