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
from fxdelta.spec.selectors import compile_pattern, select
from fxdelta.spec.structure import common_selectors, default_selectors

Pair = tuple[str | None, str]  # (source or None, target)


def select_targets(backbone: nn.Module, method: Method, config: DeltaConfig) -> list[Pair]:
    """``(source, target)`` for every module the delta patches; ``source`` is None unless it differs."""
    names = backbone_module_names(backbone)
    pick = _Picker(backbone, names, config)
    if method.locate is not None:
        return [(None, _located(backbone, method.locate, config, pick))]
    if method.pairs:
        pairs = [_pair(pick, s, t) for s, t in _selector_pairs(backbone, method, config)]
        chosen = [(None if s == t else s, t) for group in pairs for s, t in group]
    elif config.modified_modules is not None:
        chosen = [(None, t) for t in pick(config.modified_modules)]
    else:
        chosen = [(None, t) for t in pick.defaults(method.default_positions)]
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


class _Picker:
    """Resolves selectors on one backbone: as names, else as its common-structure names."""

    def __init__(self, backbone: nn.Module, names: Sequence[str], config: DeltaConfig) -> None:
        self.backbone, self.names, self.config = backbone, names, config

    def _expand(self, selector: str) -> tuple[str, ...] | None:
        return common_selectors(self.backbone, selector)

    def __call__(self, selectors: Sequence[str]) -> list[str]:
        return select(
            self.names,
            selectors,
            self.config.exclude_modules,
            expand=self._expand,
            prefer_expand=self.config.common_structure,
        )

    def defaults(self, positions: Sequence[str]) -> list[str]:
        """The default positions' modules: a default selector this model variant lacks is skipped."""
        selectors = default_selectors(self.backbone, positions, self.config.delta_type)
        predicates = {s: compile_pattern(s) for s in selectors}
        present = [s for s, pred in predicates.items() if any(n and pred(n) for n in self.names)]
        if not present:
            raise SelectorError(
                f"none of {self.config.delta_type}'s default positions {list(positions)} exists in this "
                f"{type(self.backbone).__name__}; pass modified_modules=[...]"
            )
        return select(self.names, present, self.config.exclude_modules, expand=self._expand)


def _located(backbone: nn.Module, locate: Callable[[nn.Module], str], config: DeltaConfig, pick: _Picker) -> str:
    path = locate(backbone)
    if config.modified_modules is not None and pick(config.modified_modules) != [path]:
        raise ConfigError(
            f"{config.delta_type} finds its own place on the backbone ({path or '<root>'}); modified_modules "
            f"{list(config.modified_modules)} would put it elsewhere: leave modified_modules unset"
        )
    return path


def _selector_pairs(
    backbone: nn.Module, method: Method, config: DeltaConfig
) -> list[tuple[Sequence[str], Sequence[str]]]:
    if config.modified_modules is None:
        groups = [(p,) for p in method.default_positions]  # common-structure names: the picker reads them
    else:
        if len(config.modified_modules) % 2:
            raise ConfigError(
                f"{type(config).__name__}.modified_modules is read as [source, target, source, target, ...] pairs; "
                f"got {len(config.modified_modules)} selectors"
            )
        groups = [(s,) for s in config.modified_modules]
    return list(zip(groups[0::2], groups[1::2], strict=True))


def _pair(pick: _Picker, sources: Sequence[str], targets: Sequence[str]) -> list[tuple[str, str]]:
    src, dst = pick(sources), pick(targets)
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
