"""The registry of delta methods: the one place that lists them all.

Everything else that names methods (the delta-model classes, the package's face, the demo) is
generated from ``METHODS``. Adding a method is one file in this folder and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fxdelta.core.errors import ConfigError
from fxdelta.methods import (
    adapter,
    bitfit,
    compacter,
    dora,
    ia3,
    lora,
    low_rank_adapter,
    parallel_adapter,
    prefix,
    soft_prompt,
)
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method
from fxdelta.spec.selectors import closest_names

METHODS: dict[str, Method] = {
    m.delta_type: m
    for m in (
        lora.METHOD,
        adapter.METHOD,
        bitfit.METHOD,
        low_rank_adapter.METHOD,
        compacter.METHOD,
        parallel_adapter.METHOD,
        ia3.METHOD,
        dora.METHOD,
        prefix.METHOD,
        soft_prompt.METHOD,
    )
}

ALIASES: dict[str, str] = {alias: m.delta_type for m in METHODS.values() for alias in m.aliases}


def method_for(delta_type: str) -> Method:
    """The method registered as ``delta_type`` (or an alias); unknown names raise ``ConfigError`` with suggestions."""
    try:
        return METHODS[ALIASES.get(delta_type, delta_type)]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown delta_type {delta_type!r}; known: {sorted(METHODS)} "
            f"(closest: {closest_names(str(delta_type), list(METHODS), n=1)})"
        ) from None


def config_from_dict(config: Mapping[str, Any] | object, *, unknown: Literal["error", "warn"] = "error") -> DeltaConfig:
    """The config a plain dict describes: ``{"delta_type": "lora", "lora_r": 4}`` -> ``LoraConfig(lora_r=4)``;
    ``unknown="warn"`` drops keys that are no field, with a warning (see ``DeltaConfig.from_kwargs``)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a delta spec must be a dict with a 'delta_type' key, got {type(config).__name__}")
    fields = dict(config)
    if "delta_type" not in fields:
        raise ConfigError(f"a delta spec needs a 'delta_type' key (e.g. 'lora'); got keys {sorted(fields)}")
    method = method_for(fields.pop("delta_type"))
    return method.config.from_kwargs(fields, unknown=unknown)
