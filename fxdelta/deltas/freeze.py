"""Freezing: which backbone parameters stay trainable, and a state_dict trimmed to them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from fxdelta.core.errors import FxDeltaWarning, SelectorError
from fxdelta.core.paths import delta_parameter_names
from fxdelta.spec.selectors import Expand, compile_pattern, unmatched


def warn_frozen_heads(backbone: nn.Module, heads: Sequence[str]) -> None:
    """A task head left frozen trains nothing and is not saved: say so, once per head."""
    modules = dict(backbone.named_modules())
    for head in heads:
        if not any(p.requires_grad for p in modules[head].parameters()):
            warnings.warn(
                f"freezing leaves {head!r}, the task head of {type(backbone).__name__}, frozen (new weights, "
                f"normally trained with the delta); add {head!r} to exclude (or unfrozen_modules) to train it and "
                f"save it with the delta",
                FxDeltaWarning,
                stacklevel=3,
            )


def _prefixes(name: str) -> list[str]:
    """``"a.b.weight"`` -> ``["a", "a.b", "a.b.weight"]``: a selector may name any enclosing module."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def freeze(
    backbone: nn.Module,
    exclude: Sequence[str],
    module_names: Sequence[str],
    *,
    within: nn.Module | None = None,
    expand: Expand | None = None,
) -> list[str]:
    """Freeze every parameter of ``within`` (default: the backbone) except those under ``exclude``.

    ``exclude`` selectors are matched against module and parameter names relative to ``within``;
    one that names nothing is read through ``expand`` (the family's common structure), and if it
    still matches nothing it is a warning (it keeps nothing trainable; OpenDelta's configs list names
    some models lack). Returns the names of the backbone's own (non-delta) trainable parameters.
    """
    if isinstance(exclude, str):
        raise SelectorError(
            f"exclude must be a list of selectors, got the bare string {exclude!r}; wrap it: [{exclude!r}]"
        )
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(p, str) and p for p in exclude):
        raise SelectorError(
            f"exclude must be a list of selector strings (e.g. ['deltas', 'classifier']), got {exclude!r}"
        )
    params = dict((within or backbone).named_parameters())
    keep: set[str] = set()
    for pattern in exclude:
        hits = _under(params, [pattern])
        if not hits and expand is not None:
            hits = _under(params, expand(pattern) or ())
        if not hits:
            unmatched(pattern, [*module_names, *params], "selector of what stays trainable (unfrozen_modules, exclude)")
        keep |= hits
    for name, p in params.items():
        p.requires_grad_(name in keep)
    deltas = delta_parameter_names(backbone)
    return sorted(n for n, p in backbone.named_parameters() if p.requires_grad and n not in deltas)


def _under(params: dict[str, nn.Parameter], selectors: Sequence[str]) -> set[str]:
    """The parameters named by ``selectors``, or inside a module they name."""
    predicates = [compile_pattern(s) for s in selectors]
    return {n for n in params if any(pred(prefix) for pred in predicates for prefix in _prefixes(n))}


def keep_trainable_in_state_dict(backbone: nn.Module) -> Any:
    """Make ``backbone.state_dict()`` hold only trainable parameters; returns the removable hook handle."""

    def trim(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        trainable = {prefix + n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
        for key in [k for k in state_dict if k.startswith(prefix) and k not in trainable]:
            del state_dict[key]

    return backbone.register_state_dict_post_hook(trim)  # type: ignore[no-untyped-call]  # torch leaves it untyped
