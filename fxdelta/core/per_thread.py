"""Per-forward bookkeeping that threads running one model at once must not share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    """One value per thread, made by ``factory`` on the thread's first use. A copy (``deepcopy`` of
    a patched model) starts with none: a thread's forward in flight is not part of a model."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        try:
            value: T = self._local.value
            return value
        except AttributeError:
            value = self._local.value = self._factory()
            return value

    def __deepcopy__(self, memo: dict[int, Any]) -> PerThread[T]:
        return PerThread(self._factory)
