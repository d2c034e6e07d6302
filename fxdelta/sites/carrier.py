"""Carry one module's input to another module's deltas, for routes that span two modules.

When the source and the target of a parallel adapter are not in one traced region (BERT's
``intermediate.dense`` and ``output.dense`` live in different blocks), the tensor crosses over
explicitly, through a last-in-first-out stack on this carrier: the source's forward pre-hook
pushes its input, the target's hook site pops it. Every execution of the enclosing layer pushes
once and pops once, so nested (re-entrant) calls pair up innermost first, and activation
checkpointing, which replays the layer's forward without its hooks in backward, replays one push
and one pop too. Nothing is stored on any module. A replay stopped early can leave one entry
behind; the backbone's next forward starts from an empty stack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fxdelta.core.calls import first_param_name, hidden_slot
from fxdelta.core.errors import StateError
from fxdelta.core.per_thread import PerThread
from fxdelta.sites.base import HookedSite, SiteKind


class InputCarrier(HookedSite):
    """The input of ``source``, pushed on each of its calls and popped by ``target``'s hook site."""

    kind = SiteKind.INPUT_CARRIER

    def __init__(self, backbone: nn.Module, source_path: str, source: nn.Module, target_path: str) -> None:
        super().__init__(source_path, source, [])  # carries no delta itself: the target's hook site holds them
        self.backbone = backbone
        self.target_path = target_path
        self._first_param = first_param_name(source)
        self._stacks: PerThread[list[torch.Tensor]] = PerThread(list)  # threads share the model, not calls

    @property
    def key(self) -> tuple:
        return (InputCarrier, self.path, self.target_path)

    def pop(self) -> torch.Tensor:
        """The input of the source's latest call that no target call has taken yet."""
        stack = self._stacks.get()
        if not stack:
            raise StateError(
                f"fxdelta: {self.target_path} ran without a call of {self.path} before it, so its pair delta has "
                f"no input (is {self.target_path} called on its own, or before {self.path}?)"
            )
        return stack.pop()

    def _push(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        slot = hidden_slot(args, kwargs, self._first_param)
        if slot is None:
            raise StateError(
                f"fxdelta: {self.path} was called without a hidden-state tensor for the pair delta to read"
            )
        self._stacks.get().append(args[slot] if isinstance(slot, int) else kwargs[slot])

    def _reset(self, module: nn.Module, args: tuple) -> None:
        self._stacks.get().clear()  # this thread's: another may be in the middle of its forward

    def _register(self) -> list[Any]:
        return [
            self.module.register_forward_pre_hook(self._push, with_kwargs=True),
            self.backbone.register_forward_pre_hook(self._reset),
        ]

    def _cleared(self) -> None:
        self._stacks = PerThread(list)

    def describe(self) -> str:
        return f"input carrier: the input of {self.path}, for the pair deltas on {self.target_path}"
