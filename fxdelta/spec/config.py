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
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fxdelta.core.errors import CheckpointError, ConfigError, FxDeltaWarning
from fxdelta.core.precision import dtype_name
from fxdelta.io import checkpoint

DEFAULT_UNFROZEN = ("deltas",)  # what freezing keeps by default (with the task heads: deltas/freeze.py)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# OpenDelta options fxdelta has no counterpart for: accepted at the value meaning "as usual", else refused.
_NOT_SUPPORTED = {
    "backend": (
        "hf",
        "fxdelta patches plain PyTorch modules only; BMTrain (backend='bmt') is not supported: leave backend unset",
    ),
    "interactive_modify": (
        False,
        "interactive module selection is not supported yet: pass modified_modules=[...] "
        "(Visualization(model).structure_graph() shows the names)",
    ),
}


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
    - ``common_structure``: read every selector as a common-structure name first (``attn.q``, ``ff``,
      ``layer_norm``; OpenDelta's flag). Without it a selector that names no module is read so anyway.
    - ``name``: the delta's name on the backbone (state_dict keys ``<target>.deltas.<name>.*``);
      ``None`` picks ``delta_type`` plus a counter if taken.
    - ``delta_dtype``: the dtype the delta's tensors are kept and computed in (``"float32"``, ``torch.bfloat16``,
      ...; recorded by name). ``None``, the default, is PEFT's default: float32 on modules in float16/bfloat16,
      the module's own dtype otherwise. The delta's inputs are cast to its dtype and its output back to the
      module's, so the backbone computes in its own dtype as before; identity at init stays exact.
    """

    delta_type: ClassVar[str] = ""

    modified_modules: tuple[str, ...] | None = None
    exclude_modules: tuple[str, ...] = ()
    unfrozen_modules: tuple[str, ...] = DEFAULT_UNFROZEN
    common_structure: bool = False
    name: str | None = None
    delta_dtype: str | torch.dtype | None = None  # recorded as its name ("float32")

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "delta_dtype", dtype_name(owner, self.delta_dtype))
        for field in ("modified_modules", "exclude_modules", "unfrozen_modules"):
            value = _as_str_tuple(owner, field, getattr(self, field))
            if value is None and field != "modified_modules":
                value = ()
            object.__setattr__(self, field, value)
        if not isinstance(self.common_structure, bool):
            raise ConfigError(f"{owner}.common_structure must be True or False, got {self.common_structure!r}")
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
            raise ConfigError(
                f"{owner}.name must be an identifier of ASCII letters, digits and '_' that does not start with a "
                f"digit (it becomes a module name in state_dict keys), e.g. 'taskA', got {self.name!r}"
            )
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
    def from_kwargs(cls, kwargs: dict[str, Any], *, unknown: Literal["error", "warn"] = "error") -> DeltaConfig:
        """``cls(**kwargs)``. An unknown key is a ``ConfigError`` with suggestions, or with ``unknown="warn"``
        (dicts from scripts, which carry their other arguments) dropped with a warning naming it, as is a
        None for a field whose default is not None. ``backend``/``interactive_modify`` are accepted at
        their usual values and refused otherwise."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kept, ignored = {}, []
        for key, value in kwargs.items():
            if key in _NOT_SUPPORTED:
                usual, why = _NOT_SUPPORTED[key]
                if value is not None and value != usual:
                    raise ConfigError(f"{cls.__name__}: {key}={value!r} is not supported. {why}")
            elif key in fields:
                if not (unknown == "warn" and value is None and fields[key].default is not None):
                    kept[key] = value
            elif unknown == "error":
                close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.0)
                raise ConfigError(f"{cls.__name__} has no field {key!r} (closest: {close}); fields: {list(fields)}")
            else:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.8)
                ignored.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
        if ignored:
            warnings.warn(
                f"{cls.__name__} ignores {len(ignored)} keys that are none of its fields: {', '.join(ignored)}",
                FxDeltaWarning,
                stacklevel=4,  # from_kwargs < config_from_dict < AutoDeltaConfig.from_dict < the caller
            )
        return cls(**kept)

    @classmethod
    def from_finetuned(cls, finetuned_delta_path: str | os.PathLike[str], **download_options: Any) -> DeltaConfig:
        """The config saved in a local checkpoint folder (``save_finetuned``), of this method.

        Hub download options (``cache_dir``, ``force_download``, ``local_files_only``, ...) are accepted
        and change nothing: fxdelta reads local folders only.
        """
        checkpoint.check_download_options(download_options, f"{cls.__name__}.from_finetuned")
        if not cls.delta_type:
            raise ConfigError("DeltaConfig.from_finetuned needs a method's config class; use AutoDeltaConfig")
        fields = dict(checkpoint.single_entry(finetuned_delta_path)["config"])
        saved = fields.pop("delta_type", None)
        if saved != cls.delta_type:
            raise CheckpointError(
                f"{finetuned_delta_path} holds a {saved!r} delta, not {cls.delta_type!r}: "
                f"use AutoDeltaConfig.from_finetuned, which reads any method"
            )
        return cls.from_kwargs(fields)
