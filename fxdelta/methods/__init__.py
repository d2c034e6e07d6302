"""The registry of delta methods: the one place that lists them all."""

from __future__ import annotations

from fxdelta.errors import ConfigError
from fxdelta.methods import adapter, bitfit, compacter, dora, ia3, lora, low_rank_adapter, parallel_adapter, prefix, soft_prompt
from fxdelta.methods.base import Method, TargetInfo
from fxdelta.select import closest_names

METHODS: dict[str, Method] = {
    "lora": lora.METHOD,
    "adapter": adapter.METHOD,
    "bitfit": bitfit.METHOD,
    "low_rank_adapter": low_rank_adapter.METHOD,
    "compacter": compacter.METHOD,
    "parallel_adapter": parallel_adapter.METHOD,
    "ia3": ia3.METHOD,
    "dora": dora.METHOD,
    "prefix": prefix.METHOD,
    "soft_prompt": soft_prompt.METHOD,
}

# OpenDelta's spellings of the same methods
ALIASES: dict[str, str] = {
    "lowrankadapter": "low_rank_adapter", "parallel-adapter": "parallel_adapter", "IA3": "ia3", "soft-prompt": "soft_prompt",
}


def method_for(delta_type: str) -> Method:
    """The method registered as ``delta_type``; unknown names raise ``ConfigError`` with suggestions."""
    try:
        return METHODS[ALIASES.get(delta_type, delta_type)]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown delta_type {delta_type!r}; known: {sorted(METHODS)} "
            f"(closest: {closest_names(str(delta_type), list(METHODS), n=1)})"
        ) from None


__all__ = ["METHODS", "Method", "TargetInfo", "method_for"]
