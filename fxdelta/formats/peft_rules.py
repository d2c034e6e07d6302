"""PEFT's config rules every method shares: which method a config is, the check of every field, task
types (from the model kinds of ``fxdelta.spec.heads``), and PEFT's rules for matching module names
(``target_modules``, ``modules_to_save``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.methods.registry import METHODS
from fxdelta.spec.heads import kind_of
from fxdelta.spec.method import Method
from fxdelta.spec.peft import PeftFormat, refuse

# Fields of every PEFT config that never change what is loaded (names, versions, the wrapper's mode).
_FREE = ("peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version")
# Read by the shared code: the task class PEFT wraps the model in, and what it trains and saves whole.
_SHARED = ("task_type", "modules_to_save")
_TARGETING = ("target_modules", "exclude_modules")  # read by the shared code, for methods with targets
# An unknown field at one of these values is off (newer PEFT releases add fields that way).
_OFF: tuple[Any, ...] = (None, False, {}, [], "")

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
# The heads PEFT's task classes add to modules_to_save, whose tensors they then require in the file.
_TASK_HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}


def supported() -> list[str]:
    return sorted(t for t, m in METHODS.items() if m.peft is not None)


def format_of(method: Method) -> PeftFormat:
    """The method's PEFT format; a method PEFT has no counterpart for is an error naming those it has."""
    if method.peft is None:
        raise CheckpointError(
            f"PEFT has no adapter type for fxdelta's {method.delta_type!r}; format='peft' writes {supported()}. "
            f"Save this delta in fxdelta's own format (format='fxdelta', the default)"
        )
    return method.peft


def method_of(config: Mapping[str, Any], where: Any) -> Method:
    """The fxdelta method a PEFT config describes (by ``peft_type`` and the method's flags)."""
    peft_type = config["peft_type"]
    for method in METHODS.values():
        fmt = method.peft
        if fmt is not None and fmt.peft_type == peft_type:
            if all(config.get(k, False) == v for k, v in fmt.flags.items()):
                return method
    known = sorted({m.peft.peft_type for m in METHODS.values() if m.peft is not None})
    raise CheckpointError(
        f"{where}: PEFT adapter type {peft_type!r} (with these options) has no fxdelta counterpart; fxdelta loads "
        f"PEFT's {known} adapters (as {supported()})"
    )


def check_fields(config: Mapping[str, Any], fmt: PeftFormat, where: Any) -> None:
    """Every field is read, fixed at a value fxdelta can express, or off; anything else is refused."""
    read = set(_FREE) | set(_SHARED) | set(fmt.reads) | set(fmt.flags)
    if not fmt.prompt_learning:
        read |= set(_TARGETING)
    for name, value in config.items():
        if name in fmt.fixed:
            if not any(type(value) is type(ok) and value == ok for ok in fmt.fixed[name]):
                allowed = ", ".join(repr(v) for v in fmt.fixed[name])
                raise refuse(name, value, f"fxdelta's {fmt.peft_type} adapters can only be loaded with {allowed}")
        elif name not in read and not any(type(value) is type(off) and value == off for off in _OFF):
            raise refuse(name, value, "fxdelta has no counterpart for it; load adapters that leave it unset")
    task = config.get("task_type")
    if task is not None and task not in TASK_TYPES:
        raise refuse("task_type", task, f"PEFT's task types are {list(TASK_TYPES)}")


def task_type(backbone: nn.Module) -> str | None:
    """The PEFT task type of the model class (``CAUSAL_LM`` for ``GPT2LMHeadModel``), or None."""
    config = getattr(backbone, "config", None)
    if getattr(config, "is_encoder_decoder", False) and type(backbone).__name__.endswith("ForConditionalGeneration"):
        return "SEQ_2_SEQ_LM"
    kind = kind_of(backbone)
    return kind.peft_task if kind is not None else None


def unsaved_task_heads(task: str | None, names: Sequence[str], saved: Sequence[str]) -> list[str]:
    """The heads PEFT's class for ``task`` would load from the file, which the delta does not save."""
    heads = saved_modules({"modules_to_save": list(_TASK_HEADS.get(task or "", ()))}, names)
    return [h for h in heads if h not in saved]


def _names(value: Any, field: str) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise CheckpointError(f"PEFT config field {field} must be a regex string or a list of names, got {value!r}")


def _matches(rule: str | list[str], name: str) -> bool:
    """PEFT's rule: a string is a regex matching the whole name, a list holds names or their dotted tails."""
    if isinstance(rule, str):
        return re.fullmatch(rule, name) is not None
    return name in rule or any(name.endswith(f".{t}") for t in rule)


def saved_modules(config: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The modules PEFT trains and saves whole (``modules_to_save``: names a module's name ends with)."""
    rule = _names(config.get("modules_to_save"), "modules_to_save") or []
    listed = [rule] if isinstance(rule, str) else rule
    return [n for n in names if n and any(n.endswith(m) for m in listed)]


def targets(config: Mapping[str, Any], names: Sequence[str], saved: Iterable[str]) -> list[str]:
    """The modules a PEFT config patches, in the backbone's order (modules saved whole excluded, as PEFT does)."""
    rule = _names(config.get("target_modules"), "target_modules")
    if not rule:
        raise CheckpointError("the PEFT adapter config has no target_modules; it does not say which modules it patches")
    exclude = _names(config.get("exclude_modules"), "exclude_modules")
    inside = tuple(f"{s}." for s in saved)
    return [
        n
        for n in names
        if n and _matches(rule, n) and not (exclude and _matches(exclude, n)) and not (n + ".").startswith(inside)
    ]
