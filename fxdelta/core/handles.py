"""What the compiler's state and the views need of a delta model, without importing it.

The user's handle (``fxdelta.deltas.handle.DeltaModel``) satisfies this protocol; the stages
below it keep handles in lists and read these members only, so imports never run back up.
"""

from __future__ import annotations

from typing import Protocol


class DeltaHandle(Protocol):
    name: str
    attached: bool
    targets: list[str]

    @property
    def delta_type(self) -> str: ...

    def num_parameters(self) -> int: ...
