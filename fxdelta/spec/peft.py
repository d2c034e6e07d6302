"""What a method declares to read and write PEFT's adapter format.

A method with a PEFT counterpart sets ``Method.peft`` to a ``PeftFormat``: its ``peft_type``, the
PEFT config fields its two functions read, the values other fields must hold, and the tensor names
it uses. ``fxdelta.formats.peft`` does everything the methods share (the folder, the
``base_model.model.`` key prefix, target names, ``modules_to_save``, the check of every field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.spec.config import DeltaConfig

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PeftTarget:
    """One target of a delta being exported: its path, module and the delta's checkpoint tensors."""

    path: str
    module: nn.Module
    state: Tensors
    probed: Any = None  # what the method's probe found there (prefix tuning: the attention's geometry)


@dataclass(frozen=True)
class PeftImport:
    """What a method makes of a PEFT config: its own config fields, the modules it patches, and per
    module the delta's tensors under the delta module's own names."""

    fields: dict[str, Any]
    targets: list[str]
    state: dict[str, Tensors]


# export(config, backbone, targets) -> (PEFT config fields, {target path, or "" at top level: {name: tensor}})
Export = Callable[[DeltaConfig, nn.Module, list[PeftTarget]], tuple[dict[str, Any], dict[str, Tensors]]]
# read(PEFT config, backbone, target paths, {target path, or "" at top level: {PEFT name: tensor}}) -> PeftImport
Read = Callable[[Mapping[str, Any], nn.Module, list[str], dict[str, Tensors]], PeftImport]


@dataclass(frozen=True, kw_only=True)
class PeftFormat:
    """How one method maps to a PEFT adapter type.

    ``flags``: fields that tell this method from another of the same ``peft_type`` (``use_dora``),
    at the value this method writes. ``reads``: the fields ``read`` interprets. ``fixed``: fields
    PEFT has and fxdelta cannot express except at these values (``use_rslora``: only ``False``).
    ``tensor_names``: the names of its tensors under a target (``lora_A.weight``) or, with
    ``prompt_learning``, at the top level of the file (``prompt_embeddings``).
    """

    peft_type: str
    export: Export
    read: Read
    tensor_names: tuple[str, ...]
    reads: tuple[str, ...] = ()
    flags: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    prompt_learning: bool = False


def refuse(field_name: str, value: Any, why: str) -> CheckpointError:
    """The error for a PEFT config field fxdelta cannot express."""
    return CheckpointError(f"PEFT config field {field_name}={value!r} cannot be loaded by fxdelta: {why}")


def number(config: Mapping[str, Any], name: str, default: Any, kinds: tuple[type, ...] = (int, float)) -> Any:
    """A numeric PEFT field (``default`` when absent, as PEFT reads it)."""
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise CheckpointError(f"PEFT config field {name} must be a number, got {value!r}")
    return value
