"""Build: from a method and its config to the delta modules, one entry per target, not yet attached.

The first half of the pipeline: select the targets, observe the backbone on FakeTensors (shapes
and call patterns), run the method's own probe if it has one, and size each delta from what was
seen. Nothing on the backbone changes here; ``fxdelta.compiler.install.apply`` attaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.engines import refuse_wrapped
from fxdelta.compiler.examples import example_for
from fxdelta.compiler.select import Pair, select_targets
from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import Entry
from fxdelta.core.errors import ConfigError, SelectorError, UnsupportedModelError
from fxdelta.core.precision import own_parameter
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True)
class Built:
    """One delta's entries and the (source, target) pairs they were built for."""

    pairs: list[Pair]
    entries: list[Entry]

    @property
    def targets(self) -> list[str]:
        return [t for _, t in self.pairs]

    @property
    def sources(self) -> list[str | None]:
        return [s for s, _ in self.pairs]  # None where the delta reads its own target's input


def build_entries(
    state: BackboneState,
    method: Method,
    config: DeltaConfig,
    name: str,
    *,
    example_inputs: Any = None,
    hooks_only: bool = False,
) -> Built:
    """The delta modules of ``config`` on ``state.backbone``, as entries named ``name``."""
    backbone = state.backbone
    refuse_wrapped(backbone)
    pairs = select_targets(backbone, method, config)
    paths = {p for pair in pairs for p in pair if p is not None}
    example = example_for(backbone, example_inputs)
    state.observe(sorted(paths), example)
    targets = [t for _, t in pairs]
    probed = state.probe(method.probe, targets, example) if method.probe is not None else {}
    modules = dict(backbone.named_modules())
    order = state.next_serial()
    entries = []
    infos = []
    for source, target in pairs:
        info = _target_info(state, method, config, modules, source, target, probed.get(target))
        infos.append(info)
        entries.append(
            Entry(
                target,
                method.route,
                _delta(method, config, info),
                name,
                order,
                hooks_only=hooks_only,
                source=source,
                plan_sites=method.plan_sites,
                probed=info.probed,
                backbone_dtype=getattr(own_parameter(info.module), "dtype", None),
            )
        )
    if method.link is not None and entries:
        method.link(config, [e.delta for e in entries], dtype=infos[-1].dtype, device=infos[-1].device)
    return Built(pairs, entries)


def _delta(method: Method, config: DeltaConfig, info: TargetInfo) -> nn.Module:
    """The method's delta module for one target: allocated, and finite where it is real."""
    try:
        delta = method.build(config, info)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "alloc" not in str(e):
            raise
        raise ConfigError(
            f"{config.delta_type}: the delta for {info.path or '<root>'} does not fit in memory ({e}); "
            f"use smaller hyper-parameters"
        ) from e
    for name, t in [*delta.named_parameters(), *delta.named_buffers()]:
        if t.device.type != "meta" and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"{config.delta_type}: the delta for {info.path or '<root>'} starts with non-finite values in "
                f"{name}; check its hyper-parameters ({type(config).__name__})"
            )
    return delta


def _target_info(
    state: BackboneState,
    method: Method,
    config: DeltaConfig,
    modules: dict[str, nn.Module],
    source: str | None,
    target: str,
    probed: Any,
) -> TargetInfo:
    for path in {source or target, target}:
        if path not in state.records:
            raise UnsupportedModelError(_not_observed(state, path))
    h_in = state.records[source or target].h_in
    h_out = state.records[target].h_out
    if source is not None and state.records[source].order > state.records[target].order:
        raise SelectorError(
            f"{config.delta_type} pairs {source} with {target}, but {source} first runs after {target}, so its "
            f"input does not exist yet when {target} needs it; give each pair as [source, target] in the order they run"
        )
    if h_out is None or not h_out.floating:
        raise SelectorError(
            f"{target} does not output a floating-point hidden state, so {config.delta_type} cannot patch it"
        )
    if method.needs_h_in and (h_in is None or not h_in.floating):
        raise SelectorError(
            f"{source or target} takes no floating-point hidden state as first argument or 'hidden_states', "
            f"which {config.delta_type} needs"
        )
    return TargetInfo(
        path=target, module=modules[target], h_in=h_in, h_out=h_out, probed=probed, delta_dtype=config.delta_dtype
    )


def _not_observed(state: BackboneState, target: str) -> str:
    if state.failures:
        return (
            f"fxdelta could not observe the backbone on its example input ({state.failures[-1]}); "
            f"pass example_inputs=... that the backbone accepts"
        )
    return (
        f"{target} is never called when the backbone runs on its example input (its parent may use "
        f"its weights directly, or the input does not reach it); patch a module that is called, or pass "
        f"example_inputs=... that reach it"
    )
