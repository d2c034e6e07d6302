"""The delta config base class: frozen, keyword-only, validated at construction.

Each method subclasses ``DeltaConfig`` with its own hyper-parameters (OpenDelta's names and
defaults); the fields here are the ones every method shares: where to patch, what to leave
trainable, and the delta's name on the backbone.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from fxdelta.core.errors import ConfigError

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _as_str_tuple(owner: str, field: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(
            f"{owner}.{field} must be a list of names, got the bare string {value!r}; wrap it: [{value!r}]"
        )
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"{owner}.{field} must be a list of names, got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{owner}.{field} must hold non-empty strings, got {item!r}")
    return items


@dataclass(frozen=True, kw_only=True)
class DeltaConfig:
    """Fields shared by every delta method.

    - ``modified_modules``: selectors of the modules to patch (see ``fxdelta.select``); ``None``
      uses the method's default positions for the backbone's family.
    - ``exclude_modules``: selectors removed from the selection.
    - ``unfrozen_modules``: what ``freeze_module()`` leaves trainable when given no ``exclude``.
    - ``name``: the delta's name on the backbone (state_dict keys ``<target>.deltas.<name>.*``);
      ``None`` picks ``delta_type`` plus a counter if taken.
    """

    delta_type: ClassVar[str] = ""

    modified_modules: tuple[str, ...] | None = None
    exclude_modules: tuple[str, ...] = ()
    unfrozen_modules: tuple[str, ...] = ("deltas",)
    name: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("modified_modules", "exclude_modules", "unfrozen_modules"):
            value = _as_str_tuple(owner, field, getattr(self, field))
            if value is None and field != "modified_modules":
                value = ()
            object.__setattr__(self, field, value)
        if self.modified_modules is not None and not self.modified_modules:
            raise ConfigError(
                f"{owner}.modified_modules is empty: give at least one selector, or None for the defaults"
            )
        if self.name is not None and (
            not isinstance(self.name, str)
            or not self.name
            or not set(self.name) <= _NAME_CHARS
            or self.name[0].isdigit()
        ):
            raise ConfigError(f"{owner}.name must be a lowercase identifier (letters, digits, '_'), got {self.name!r}")
        self.validate()

    def validate(self) -> None:
        """Check the method's own hyper-parameters; subclasses raise ``ConfigError`` naming the field."""

    # -- helpers for subclasses' validate() -------------------------------------------------
    def _require(self, field: str, ok: bool, expectation: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{field} must be {expectation}, got {getattr(self, field)!r}")

    def _positive_int(self, field: str) -> None:
        value = getattr(self, field)
        self._require(field, isinstance(value, int) and not isinstance(value, bool) and value > 0, "a positive int")

    def _number(self, field: str, low: float, high: float | None = None, *, low_inclusive: bool = True) -> None:
        value = getattr(self, field)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = value >= low if low_inclusive else value > low
            if high is not None:
                ok = ok and value < high
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high is not None else "")
        self._require(field, ok, f"a finite number {bound}")

    def _enum(self, field: str, enum_cls: type[enum.Enum]) -> None:
        value = getattr(self, field)
        if isinstance(value, enum_cls):
            return
        try:
            object.__setattr__(self, field, enum_cls(value))
        except ValueError:
            choices = ", ".join(repr(m.value) for m in enum_cls)
            raise ConfigError(f"{type(self).__name__}.{field} must be one of {choices}, got {value!r}") from None

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``delta_type`` first; ``AutoDeltaConfig.from_dict`` inverts it."""
        out: dict[str, Any] = {"delta_type": self.delta_type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def exported(self) -> DeltaConfig:
        """The config a checkpoint records (methods that merge something away before saving override it)."""
        return self

    def replace(self, **changes: Any) -> DeltaConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> DeltaConfig:
        """``cls(**kwargs)``, with an unknown field name reported as ``ConfigError`` with suggestions."""
        fields = cls.field_names()
        for key in kwargs:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=3, cutoff=0.0)
                raise ConfigError(f"{cls.__name__} has no field {key!r} (closest: {close}); fields: {fields}")
        return cls(**kwargs)
