"""Saving deltas: a delta's checkpoint record and tensors, OpenDelta's saving options (checked before anything is
written), and the folder written once (rank 0 of a process group), in fxdelta's format or PEFT's."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError, ConfigError, FxDeltaError
from fxdelta.core.paths import delta_parameter_names
from fxdelta.deltas import heads
from fxdelta.deltas.handle import Handle
from fxdelta.formats import peft
from fxdelta.io import checkpoint, distributed


class SaveFormat(enum.Enum):
    FXDELTA = "fxdelta"  # delta.safetensors + delta_config.json (the default)
    PEFT = "peft"  # adapter_model.safetensors + adapter_config.json


def save_format(value: Any) -> SaveFormat:
    try:
        return SaveFormat(value)
    except ValueError:
        choices = ", ".join(repr(f.value) for f in SaveFormat)
        raise ConfigError(f"format must be one of {choices}, got {value!r}") from None


# Options that only describe an upload (OpenDelta's Delta Center and Hub pushes).
PUSH_OPTIONS = frozenset(
    {"push_to_hub", "center_args", "center_args_pool", "list_tags", "dict_tags", "delay_push", "test_result", "usage"}
)


def chosen_tensors(
    live: dict[str, torch.Tensor],
    given: Mapping[str, torch.Tensor] | None,
    save_config: bool,
    save_function: Any,
    push_to_dc: bool,
    push_options: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """The tensors to write: ``live``, or the same keys taken from ``given``. Refuses what fxdelta does not do."""
    unknown = sorted(set(push_options) - PUSH_OPTIONS)
    if unknown:
        raise TypeError(f"save_finetuned() got unexpected keyword arguments {unknown}")
    if push_to_dc or push_options.get("push_to_hub"):
        raise FxDeltaError(
            "fxdelta saves checkpoints to local folders only; uploading (push_to_dc / push_to_hub) is not supported. "
            "Save without it, then upload the folder yourself (e.g. huggingface_hub.upload_folder)"
        )
    if not save_config:
        raise ConfigError(
            "save_config=False is not supported: an fxdelta checkpoint always holds its config, which loading "
            "checks against the backbone; leave save_config at True"
        )
    if save_function is not None:
        raise ConfigError("save_function is not supported: fxdelta writes safetensors (never pickles); leave it unset")
    if given is None:
        return live
    missing = sorted(set(live) - set(given))
    if missing:
        raise CheckpointError(
            f"state_dict lacks {len(missing)} tensors the delta saves (e.g. {missing[:3]}); pass the backbone's "
            f"state_dict() with the delta attached, or leave state_dict unset"
        )
    wrong = [k for k in live if not isinstance(given[k], torch.Tensor) or given[k].shape != live[k].shape]
    if wrong:
        raise CheckpointError(f"state_dict tensors {wrong[:3]} are not tensors of the delta's shapes")
    return {k: given[k].detach() for k in live}


def checkpoint_entry(handle: Handle, *, all_trainable: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A delta's checkpoint record and tensors: its delta tensors (what its method exports: prefix tuning
    saves the prefixes, not its MLP, with the matching config), and the backbone parameters ``freeze_module``
    left trainable (its own copy of a task head among them). ``all_trainable=True`` (the Trainer's
    ``save_pretrained`` path: the Trainer trains every parameter that requires grad) takes every trainable
    backbone parameter of an attached delta instead, so no trained tensor is left out."""
    tensors = {
        f"{e.qualified_name}.{k}": v.detach()
        for e in handle.entries
        for k, v in handle.method.state_of(e.delta).items()
    }
    deltas = delta_parameter_names(handle.backbone)
    params = {n: p for n, p in handle.backbone.named_parameters() if n not in deltas}
    if handle.attached and all_trainable:
        chosen = [n for n, p in params.items() if p.requires_grad]
    else:  # detached, the backbone's trainable tensors may be another delta's: only those this one unfroze
        chosen = list(handle.unfrozen)
    slots = heads.slots_of(handle.state)
    if slots is not None:
        slots.sync()  # the attached copy is what the slots hold now (to_empty, assign=True replace it)
    own = {**params, **(handle.heads or {})}  # its task heads are its own copies, whether attached or not
    unfrozen = sorted(n for n in chosen if n in own and own[n].requires_grad)
    tensors.update((n, own[n].detach()) for n in unfrozen)
    on_meta = [n for n, t in tensors.items() if t.is_meta]
    if on_meta:
        raise CheckpointError(
            f"delta {handle.name!r} holds tensors on the meta device (no values to save; e.g. {on_meta[0]}): "
            f"materialise the backbone and call fxdelta.reset_deltas(model), or load the delta's values, first"
        )
    entry = {
        "name": handle.name,
        "config": handle.config.exported().to_dict(),
        "targets": list(handle.targets),
        "sources": list(handle.sources),
        "unfrozen": unfrozen,
    }
    return entry, tensors


def attached(state: Any) -> list[Handle]:
    """The attached (or merged) delta models of a backbone's state (None: no state), in creation order."""
    # A delta merged into the weights is still the backbone's: its checkpoint is its tensors.
    handles = [h for h in state.handles if isinstance(h, Handle)] if state else []
    return [h for h in handles if h.attached or h.merged]


def save_finetuned(
    handle: Handle,
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor] | None,
    format: str,
    *,
    save_config: bool,
    save_function: Any,
    push_to_dc: bool,
    push_options: dict[str, Any],
) -> None:
    """``DeltaModel.save_finetuned``: one delta's folder, in fxdelta's format or PEFT's."""
    entry, tensors = checkpoint_entry(handle)
    tensors = chosen_tensors(tensors, state_dict, save_config, save_function, push_to_dc, push_options)
    if save_format(format) is SaveFormat.PEFT:
        return peft.write(directory, handle.backbone, [handle], (entry, tensors))
    distributed.write_once(tensors, lambda full: checkpoint.write(directory, handle.backbone, [entry], full))


def save(backbone: nn.Module, state: Any, directory: str | os.PathLike[str], format: str) -> None:
    """``fxdelta.save``: one folder holding every attached delta of ``backbone`` (PEFT's format: one delta)."""
    peft_format = save_format(format) is SaveFormat.PEFT
    handles = attached(state)
    if not handles:
        raise ConfigError(f"{type(backbone).__name__} has no attached deltas to save")
    if peft_format:
        peft.write(directory, backbone, handles)
    else:
        save_attached(backbone, handles, directory)


def save_attached(
    backbone: nn.Module,
    handles: list[Handle],
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    all_trainable: bool = False,
    stale: tuple[str, ...] = (),
) -> None:
    """Write one checkpoint of ``handles`` (attached deltas of ``backbone``); ``state_dict`` gives the values
    (it must hold every key saved); ``stale`` (the ``save_pretrained`` path): write beside other files, and
    remove those matching these patterns."""
    entries, tensors = [], {}
    for h in handles:
        entry, own = checkpoint_entry(h, all_trainable=all_trainable)
        entries.append(entry)
        tensors.update(own)
    if state_dict is not None:
        tensors = chosen_tensors(tensors, state_dict, True, None, False, {})
    distributed.write_once(  # sharded tensors (FSDP2) gathered on every rank; rank 0 writes
        tensors,
        lambda full: checkpoint.write(directory, backbone, entries, full, beside_others=bool(stale), stale=stale),
    )
