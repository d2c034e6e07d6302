"""Select: which modules a delta patches, its selectors (or default positions) resolved on one backbone.

Most methods patch a list of targets. Methods whose route spans two modules read their selectors
as ``[source, target, source, target, ...]`` pairs; each source selector must match as many
modules as its target selector, and matches are paired in module order (layer 0 with layer 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fxdelta.core.entries import DELTA_NAMESPACE, DeltaContainer
from fxdelta.core.errors import ConfigError, SelectorError
from fxdelta.core.paths import backbone_module_names, parent_paths
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method
from fxdelta.spec.selectors import select
from fxdelta.spec.structure import default_selectors

Pair = tuple[str | None, str]  # (source or None, target)


def select_targets(backbone: nn.Module, method: Method, config: DeltaConfig) -> list[Pair]:
    """``(source, target)`` for every module the delta patches; ``source`` is None unless it differs."""
    names = backbone_module_names(backbone)
    exclude = config.exclude_modules
    if method.locate is not None:
        return [(None, _located(backbone, method.locate, config, names))]
    if method.pairs:
        pairs = [_pair(names, s, t, exclude) for s, t in _selector_pairs(backbone, method, config)]
        chosen = [(None if s == t else s, t) for group in pairs for s, t in group]
    else:
        selectors = config.modified_modules or default_selectors(backbone, method.default_positions, config.delta_type)
        chosen = [(None, t) for t in select(names, selectors, exclude)]
    modules = dict(backbone.named_modules())
    for s, t in chosen:
        for path in {t, s or t}:
            _outside_torchscript(modules, path)
        _check_target(modules[t], t, method, config)
    return chosen


def _outside_torchscript(modules: dict[str, nn.Module], path: str) -> None:
    for p in [path, *parent_paths(path)]:
        if isinstance(modules[p], torch.jit.ScriptModule):
            raise SelectorError(
                f"{path or '<root>'} is inside the TorchScript module {p or '<root>'} (torch.jit.script): its "
                f"calls run in TorchScript, where fxdelta cannot add a delta; patch modules outside it, or script "
                f"it after compiling"
            )


def _located(backbone: nn.Module, locate: Callable[[nn.Module], str], config: DeltaConfig, names: Sequence[str]) -> str:
    path = locate(backbone)
    if config.modified_modules is not None and select(names, config.modified_modules, config.exclude_modules) != [path]:
        raise ConfigError(
            f"{config.delta_type} finds its own place on the backbone ({path or '<root>'}); modified_modules "
            f"{list(config.modified_modules)} would put it elsewhere: leave modified_modules unset"
        )
    return path


def _selector_pairs(
    backbone: nn.Module, method: Method, config: DeltaConfig
) -> list[tuple[Sequence[str], Sequence[str]]]:
    if config.modified_modules is None:
        positions = method.default_positions
        groups = [default_selectors(backbone, [p], config.delta_type) for p in positions]
    else:
        if len(config.modified_modules) % 2:
            raise ConfigError(
                f"{type(config).__name__}.modified_modules is read as [source, target, source, target, ...] pairs; "
                f"got {len(config.modified_modules)} selectors"
            )
        groups = [(s,) for s in config.modified_modules]
    return list(zip(groups[0::2], groups[1::2], strict=True))


def _pair(
    names: Sequence[str], sources: Sequence[str], targets: Sequence[str], exclude: Sequence[str]
) -> list[tuple[str, str]]:
    src = select(names, sources, exclude)
    dst = select(names, targets, exclude)
    if len(src) != len(dst):
        raise SelectorError(
            f"source selectors {list(sources)} match {len(src)} modules but target selectors {list(targets)} match "
            f"{len(dst)}; each source needs exactly one target (e.g. 'fc1' with 'fc2' in every layer)"
        )
    return list(zip(src, dst, strict=True))


def _check_target(module: nn.Module, path: str, method: Method, config: DeltaConfig) -> None:
    reason = method.can_patch(module)
    if reason:
        raise SelectorError(f"{config.delta_type} cannot patch {path or '<root>'}: {reason}; fix modified_modules")
    container = getattr(module, DELTA_NAMESPACE, None)
    if container is not None and not isinstance(container, DeltaContainer):
        raise SelectorError(
            f"{path} already has an attribute named {DELTA_NAMESPACE!r}, where fxdelta keeps deltas; "
            f"it cannot be patched"
        )
