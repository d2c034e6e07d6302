"""The gate between a backbone's forwards and the changes to its deltas, for threads sharing a model.

Any number of threads may run the backbone at once. A change (attach, detach, merge, a new delta,
an observation that takes the sites out for a moment) waits until no forward is running, and
forwards that start meanwhile wait until it is done: a forward sees the deltas as they were before
the change or after it, never half of each. A change asked for from inside a forward of the same
backbone (a hook of the user's) would wait for itself: it is a ``StateError`` instead.

The gate's hooks are the backbone's outermost (its pre-hook first, its hook last), so every site's
hooks run inside it. They stay on the backbone from its first delta model on, attached or not
(forwards that began before that are not counted: create the first delta between forwards), and
go with fxdelta's state when no delta model is left. ``checks`` run just before a forward goes in,
outside the gate, where they may still change the deltas (the region guard re-plans there).
Code compiled by ``torch.compile`` skips the gate (dynamo cannot trace locks; a graph break at every
forward would cost more): compiled forwards are not counted.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from fxdelta.core.errors import StateError
from fxdelta.core.per_thread import PerThread


class Gate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0  # threads inside a forward of the backbone
        self._changer: int | None = None  # the thread making a change
        self._changes = 0  # its nesting depth
        self._depth: PerThread[list[int]] = PerThread(lambda: [0, 0])  # this thread's nested forwards
        self._watch = 0  # counts watch() calls
        self.checks: list[Callable[[], None]] = []
        self._hooks: list[Any] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Gate:
        return Gate()  # a copy of a model has no forward in flight and no change under way

    # -- forwards ----------------------------------------------------------------------------------
    def _enter(self, module: nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling():  # dynamo cannot trace locks: compiled forwards are not gated
            return
        depth = self._depth.get()  # [nesting, the watch it was counted under]
        if depth[0] == 0 and self._changer != threading.get_ident():
            for check in list(self.checks):
                check()
            with self._cond:
                while self._changer is not None:
                    self._cond.wait()
                if not self._hooks:  # the change took every delta out: nothing left to guard
                    return
                self._running += 1
            depth[:] = [1, self._watch]
        elif depth[0] > 0:
            depth[0] += 1

    def _leave(self, module: nn.Module, args: tuple, out: Any) -> None:
        if torch.compiler.is_compiling():
            return
        depth = self._depth.get()
        if depth[0] == 0 or depth[1] != self._watch:
            return  # not counted (entered before this watch began)
        depth[0] -= 1
        if depth[0] == 0:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def watch(self, backbone: nn.Module) -> None:
        """Let ``backbone``'s forwards through the gate (hooks on it), until ``unwatch`` (idempotent)."""
        if not self._hooks:
            self._watch += 1
            self._hooks = [
                backbone.register_forward_pre_hook(self._enter, prepend=True),
                backbone.register_forward_hook(self._leave, always_call=True),
            ]

    def unwatch(self) -> None:
        """Take the hooks off; called inside ``changing()``, when no counted forward is running."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @property
    def hook_ids(self) -> list[int]:
        return [h.id for h in self._hooks]

    def keep_outermost(self, backbone: nn.Module) -> None:
        """Put the gate's hooks back around every other hook (sites prepend theirs)."""
        if self._hooks:  # torch keeps hooks in OrderedDicts, in call order
            cast(OrderedDict, backbone._forward_pre_hooks).move_to_end(self._hooks[0].id, last=False)
            cast(OrderedDict, backbone._forward_hooks).move_to_end(self._hooks[1].id, last=True)

    # -- changes -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._changer == me:  # a change inside a change (a re-plan that observes): already through
            self._changes += 1
            try:
                yield
            finally:
                self._changes -= 1
            return
        depth = self._depth.get()
        if depth[0] > 0 and depth[1] == self._watch:
            raise StateError(
                "fxdelta: deltas were attached, detached or built from inside a forward of the same backbone "
                "(a hook); do it between forwards"
            )
        with self._cond:
            while self._changer is not None or self._running > 0:
                self._cond.wait()
            self._changer, self._changes = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._changer, self._changes = None, 0
                self._cond.notify_all()
