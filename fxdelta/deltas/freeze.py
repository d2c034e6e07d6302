"""Freezing: which backbone parameters stay trainable, and a state_dict trimmed to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from fxdelta.core.errors import SelectorError
from fxdelta.core.paths import delta_parameter_names
from fxdelta.spec.selectors import closest_names, compile_pattern


def _prefixes(name: str) -> list[str]:
    """``"a.b.weight"`` -> ``["a", "a.b", "a.b.weight"]``: a selector may name any enclosing module."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def freeze(backbone: nn.Module, exclude: Sequence[str], module_names: Sequence[str]) -> list[str]:
    """Freeze every parameter of ``backbone`` except those under the ``exclude`` selectors.

    Returns the names of backbone (non-delta) parameters left trainable. A selector that
    matches no module or parameter is an error, as everywhere in fxdelta.
    """
    if isinstance(exclude, str):
        raise SelectorError(
            f"exclude must be a list of selectors, got the bare string {exclude!r}; wrap it: [{exclude!r}]"
        )
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(p, str) and p for p in exclude):
        raise SelectorError(
            f"exclude must be a list of selector strings (e.g. ['deltas', 'classifier']), got {exclude!r}"
        )
    params = dict(backbone.named_parameters())
    keep: set[str] = set()
    for pattern in exclude:
        predicate = compile_pattern(pattern)
        hits = {n for n in params if any(predicate(prefix) for prefix in _prefixes(n))}
        if not hits:
            raise SelectorError(
                f"exclude selector {pattern!r} matches no parameter or module with parameters; "
                f"closest names: {closest_names(pattern, [*module_names, *params])}"
            )
        keep |= hits
    for name, p in params.items():
        p.requires_grad_(name in keep)
    deltas = delta_parameter_names(backbone)
    return sorted(n for n in keep if n not in deltas)


def keep_trainable_in_state_dict(backbone: nn.Module) -> Any:
    """Make ``backbone.state_dict()`` hold only trainable parameters; returns the removable hook handle."""

    def trim(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        trainable = {prefix + n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
        for key in [k for k in state_dict if k.startswith(prefix) and k not in trainable]:
            del state_dict[key]

    return backbone.register_state_dict_post_hook(trim)
