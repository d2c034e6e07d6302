"""What a delta model answers about the parameters of its backbone, or of a module inside it."""

from __future__ import annotations

from torch import nn

from fxdelta.core.errors import FxDeltaError


class BackboneScope:
    """OpenDelta's parameter queries; ``module`` defaults to the backbone (deltas included)."""

    backbone: nn.Module

    def _backbone_or(self, module: nn.Module | None, action: str) -> nn.Module:
        """``module`` (default: the backbone) for an action that only works on the backbone or inside it."""
        if module is None or module is self.backbone:
            return self.backbone
        if action in ("attach", "detach") or not any(m is module for m in self.backbone.modules()):
            where = "the backbone" if action in ("attach", "detach") else "the backbone or one of its modules"
            raise FxDeltaError(
                f"{action}(module=...) takes {where} ({type(self.backbone).__name__}) this delta was built on, "
                f"got a {type(module).__name__} outside it; build a delta model on that module instead"
            )
        return module

    def num_trainable_parameters(self, module: nn.Module | None = None) -> int:
        """Trainable parameters of ``module`` (default: the backbone, deltas included)."""
        return sum(
            p.numel() for p in self._backbone_or(module, "num_trainable_parameters").parameters() if p.requires_grad
        )

    def num_total_parameters(self, module: nn.Module | None = None) -> int:
        return sum(p.numel() for p in self._backbone_or(module, "num_total_parameters").parameters())

    def trainable_parameters_names(self, module: nn.Module | None = None) -> list[str]:
        """Names of the trainable parameters of ``module`` (default: the backbone), relative to it."""
        return [
            n for n, p in self._backbone_or(module, "trainable_parameters_names").named_parameters() if p.requires_grad
        ]

    def frozen_parameters_names(self, module: nn.Module | None = None) -> list[str]:
        return [
            n for n, p in self._backbone_or(module, "frozen_parameters_names").named_parameters() if not p.requires_grad
        ]
