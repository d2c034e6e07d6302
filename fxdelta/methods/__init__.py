"""The registry of delta methods: the one place that lists them all."""

from __future__ import annotations

from fxdelta.errors import ConfigError
from fxdelta.methods import adapter, bitfit, lora
from fxdelta.methods.base import Method, TargetInfo
from fxdelta.select import closest_names

METHODS: dict[str, Method] = {
    "lora": lora.METHOD,
    "adapter": adapter.METHOD,
    "bitfit": bitfit.METHOD,
}


def method_for(delta_type: str) -> Method:
    """The method registered as ``delta_type``; unknown names raise ``ConfigError`` with suggestions."""
    try:
        return METHODS[delta_type]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown delta_type {delta_type!r}; known: {sorted(METHODS)} "
            f"(closest: {closest_names(str(delta_type), list(METHODS), n=1)})"
        ) from None


__all__ = ["METHODS", "Method", "TargetInfo", "method_for"]
