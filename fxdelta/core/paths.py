"""Dotted module paths: ancestors, the names selectors may address, the names of delta parameters."""

from __future__ import annotations

from torch import nn

from fxdelta.core.entries import DeltaContainer


def parent_paths(path: str) -> list[str]:
    """Proper ancestors of ``path``, nearest first, ending with the root ``""``."""
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def relative(path: str, root: str) -> str:
    """``path`` as seen from the module at ``root`` (``""`` when it is ``root`` itself)."""
    if path == root:
        return ""
    return path[len(root) + 1 :] if root else path


def backbone_module_names(backbone: nn.Module) -> list[str]:
    """Module names a selector may address: the backbone's own, never those inside fxdelta's deltas."""
    named = list(backbone.named_modules())
    inside = tuple(f"{path}." for path, m in named if isinstance(m, DeltaContainer))
    return [p for p, m in named if not isinstance(m, DeltaContainer) and not p.startswith(inside)]


def delta_parameter_names(backbone: nn.Module) -> set[str]:
    """Names of the parameters of every attached delta (whichever delta model owns it)."""
    names = set()
    for path, module in backbone.named_modules():
        if isinstance(module, DeltaContainer):
            names |= {f"{path}.{n}" for n, _ in module.named_parameters()}
    return names
