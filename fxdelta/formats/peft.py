"""PEFT's adapter format, both ways: a delta as a folder ``peft.PeftModel.from_pretrained`` loads, and a
PEFT adapter folder as the fxdelta delta it describes.

The method's ``PeftFormat`` (``Method.peft``, in each method's ``methods/peft_*.py``) maps its config
fields and tensors; PEFT's config rules that every method shares are in ``peft_rules.py``; this file does
the rest: the folder on disk (``adapter_config.json`` + ``adapter_model.safetensors``, written atomically,
read strictly, nothing unpickled), tensor keys (``base_model.model.<module>.<name>``; prompt learning:
``<name>`` at the top), ``task_type``, and backbone tensors a delta left trainable (task heads) as PEFT's
``modules_to_save``, which PEFT saves as whole modules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.select import select_targets
from fxdelta.core.entries import DELTA_NAMESPACE
from fxdelta.core.errors import CheckpointError
from fxdelta.core.paths import backbone_module_names
from fxdelta.formats import peft_rules
from fxdelta.io.atomic import replace_folder
from fxdelta.spec.method import Method
from fxdelta.spec.peft import PeftTarget

CONFIG_FILE = "adapter_config.json"
TENSORS_FILE = "adapter_model.safetensors"
PICKLED_FILE = "adapter_model.bin"  # PEFT's older (pickled) weights file: never read
README_FILE = "README.md"  # PEFT writes a model card beside its files; a folder may hold one


def _prefix(prompt_learning: bool) -> str:
    # PEFT wraps the model in a tuner (base_model.model.<...>) except for prompt learning (base_model.<...>).
    return "base_model." if prompt_learning else "base_model.model."


def write(
    directory: str | os.PathLike[str],
    backbone: nn.Module,
    handles: Sequence[Any],
    checkpoint: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write the one delta of ``handles`` as a PEFT adapter folder. ``checkpoint``: its entry and tensors,
    when not the delta's own (``checkpoint_entry()``)."""
    if len(handles) != 1:
        names = [h.name for h in handles]
        raise CheckpointError(
            f"a PEFT adapter folder holds one adapter, and {type(backbone).__name__} has {len(names)} attached "
            f"deltas {names}; save each with fxdelta.delta_models(model)[name].save_finetuned(folder, format='peft')"
        )
    (handle,) = handles
    method: Method = handle.method
    fmt = peft_rules.format_of(method)
    entry, tensors = checkpoint if checkpoint is not None else handle.checkpoint_entry()
    modules = dict(backbone.named_modules())
    targets = []
    for e in handle.entries:
        own = f"{e.qualified_name}."
        state = {k.removeprefix(own): v for k, v in tensors.items() if k.startswith(own)}
        targets.append(PeftTarget(e.target, modules[e.target], state, e.probed))
    fields, grouped = fmt.export(handle.config, backbone, targets)
    prefix = _prefix(fmt.prompt_learning)
    out = {
        f"{prefix}{path}.{name}" if path else name: v for path, group in grouped.items() for name, v in group.items()
    }
    whole, saved = _modules_to_save(backbone, list(entry.get("unfrozen", [])), tensors)
    inside = [t.path for t in targets for w in whole if f"{t.path}.".startswith(f"{w}.")]
    if inside:  # PEFT trains a module in modules_to_save whole, and patches nothing inside it
        raise CheckpointError(f"the delta patches {inside[:3]}, inside a module it also leaves trainable whole")
    out.update((prefix + k, v) for k, v in saved.items())
    task = peft_rules.task_type(backbone)
    unsaved = peft_rules.unsaved_task_heads(task, backbone_module_names(backbone), whole)
    if unsaved and fmt.prompt_learning:
        raise CheckpointError(
            f"PEFT's {task} class loads the task head {unsaved} from the adapter, and this delta does not save it; "
            f"keep the head trainable (freeze_module() does by default) to save it with the delta"
        )
    if unsaved or (task == "SEQ_2_SEQ_LM" and not fmt.prompt_learning):
        # PEFT's base PeftModel computes the same for adapters on modules, and wants no head; and PEFT 0.21's
        # SEQ_2_SEQ_LM class fails to build on transformers 5.23 (it calls a method transformers renamed).
        task = None
    if fmt.prompt_learning and task is None:
        raise CheckpointError(
            f"PEFT applies {fmt.peft_type} through its task classes ({list(peft_rules.TASK_TYPES)}), and a "
            f"{type(backbone).__name__} has none; save this delta in fxdelta's format"
        )
    config = {
        "peft_type": fmt.peft_type,
        "task_type": task,
        "base_model_name_or_path": getattr(getattr(backbone, "config", None), "_name_or_path", None) or None,
        "inference_mode": True,
        "modules_to_save": whole or None,
        **fields,
    }
    _write_folder(directory, config, out)


def _modules_to_save(
    backbone: nn.Module, unfrozen: list[str], tensors: dict[str, torch.Tensor]
) -> tuple[list[str], dict[str, Any]]:
    """Backbone tensors a delta saves, as PEFT's whole modules: every module owning one, with all its tensors."""
    if not unfrozen:
        return [], {}
    modules = dict(backbone.named_modules())
    owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unfrozen})
    out: dict[str, Any] = {}
    for owner in owners:
        if owner == "" or owner not in modules:
            raise CheckpointError(
                f"PEFT saves trainable backbone tensors as whole modules (modules_to_save); {unfrozen[0]!r} belongs "
                f"to no submodule of {type(backbone).__name__}; save this delta in fxdelta's format instead"
            )
        whole = {
            f"{owner}.{k}": v for k, v in modules[owner].state_dict().items() if DELTA_NAMESPACE not in k.split(".")
        }
        own = [k for k, _ in modules[owner].named_parameters(prefix=owner) if DELTA_NAMESPACE not in k.split(".")]
        partial = sorted(k for k in own if k not in unfrozen)
        if partial:
            raise CheckpointError(
                f"PEFT trains and saves whole modules (modules_to_save), but the delta leaves only part of {owner} "
                f"trainable ({partial[:3]} are frozen); unfreeze all of {owner}, or save in fxdelta's format"
            )
        out.update(whole)
        out.update((k, tensors[k]) for k in whole if k in tensors)  # the tensors the checkpoint chose
    return owners, out


def delta_type_of(directory: str | os.PathLike[str]) -> str:
    """The fxdelta method a PEFT adapter folder holds."""
    config, _ = _read_folder(directory)
    return peft_rules.method_of(config, directory).delta_type


def read(directory: str | os.PathLike[str], backbone: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT adapter folder as fxdelta's checkpoint record (``{"deltas": [entry]}``) and tensors."""
    config, tensors = _read_folder(directory)
    method = peft_rules.method_of(config, directory)
    fmt = peft_rules.format_of(method)
    try:
        peft_rules.check_fields(config, fmt, directory)
        names = backbone_module_names(backbone)
        saved = peft_rules.saved_modules(config, names)
        prefix = _prefix(fmt.prompt_learning)
        if fmt.prompt_learning:
            targets = [t for _, t in select_targets(backbone, method, method.config())]
            grouped = {"": {k: tensors.pop(k) for k in list(tensors) if k in fmt.tensor_names}}
        else:
            targets = peft_rules.targets(config, names, saved)
            grouped = _group(tensors, prefix, fmt.tensor_names)
            stray = sorted(set(grouped) - set(targets))
            if stray:
                raise CheckpointError(f"tensors for {stray[:3]}, which its config does not target")
        imported = fmt.read(config, backbone, targets, grouped)
        unfrozen, backbone_tensors = _saved_tensors(backbone, tensors, prefix, saved)
    except CheckpointError as e:
        raise CheckpointError(f"{directory} (a PEFT {fmt.peft_type} adapter): {e}") from e
    name = method.delta_type
    order = {n: i for i, n in enumerate(names)}
    chosen = sorted(imported.targets, key=order.__getitem__)
    fields = dict(imported.fields, delta_type=method.delta_type, name=name)
    if method.locate is None:
        fields["modified_modules"] = ["re:" + re.escape(t) for t in chosen]
    entry = {"name": name, "config": fields, "targets": chosen, "sources": [None] * len(chosen), "unfrozen": unfrozen}
    out = {f"{t}.{DELTA_NAMESPACE}.{name}.{k}".lstrip("."): v for t in chosen for k, v in imported.state[t].items()}
    out.update(backbone_tensors)
    return {"deltas": [entry]}, out


def _group(tensors: dict[str, torch.Tensor], prefix: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Pop the delta tensors ``<prefix><module>.<name>`` out of ``tensors``, by module."""
    grouped: dict[str, dict[str, Any]] = {}
    for key in list(tensors):
        for name in names:
            if key.startswith(prefix) and key.endswith(f".{name}"):
                grouped.setdefault(key[len(prefix) : -len(name) - 1], {})[name] = tensors.pop(key)
                break
    return grouped


def _saved_tensors(
    backbone: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, saved: list[str]
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The remaining tensors, which must be whole ``modules_to_save``: parameters load as trainable backbone
    tensors; buffers must hold what the backbone holds."""
    params = dict(backbone.named_parameters())
    buffers = dict(backbone.named_buffers())
    inside = tuple(f"{s}." for s in saved)
    unfrozen, out = [], {}
    for key, value in tensors.items():
        name = key.removeprefix(prefix)
        if not key.startswith(prefix) or not name.startswith(inside) or name not in params | buffers:
            raise CheckpointError(f"tensor {key!r} belongs to no targeted module and to no module in modules_to_save")
        if name in params:
            unfrozen.append(name)
            out[name] = value
        elif not torch.equal(buffers[name].cpu(), value.to(buffers[name].dtype)):
            raise CheckpointError(f"buffer {name} of a module in modules_to_save differs from this backbone's")
    order = {n: i for i, n in enumerate(params)}
    return sorted(unfrozen, key=order.__getitem__), out


def is_peft_folder(directory: Any) -> bool:
    """Whether ``directory`` is a folder holding a PEFT ``adapter_config.json``."""
    return isinstance(directory, (str, os.PathLike)) and (Path(directory) / CONFIG_FILE).is_file()


def _write_folder(directory: str | os.PathLike[str], config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write (or replace, in one step) the PEFT adapter folder ``directory``."""
    from safetensors.torch import save_file

    if not isinstance(directory, (str, os.PathLike)):
        kind = type(directory).__name__
        raise CheckpointError(f"a PEFT adapter is saved to a folder path (str or os.PathLike), got {kind}")
    arrays = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    def fill(folder: Path) -> None:
        save_file(arrays, str(folder / TENSORS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(text)

    replace_folder(Path(directory), fill, allowed=(CONFIG_FILE, TENSORS_FILE, README_FILE), what="PEFT adapter folder")


def _read_folder(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config (a JSON object with a string ``peft_type``) and the tensors of a PEFT adapter folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    config_file, tensors_file = path / CONFIG_FILE, path / TENSORS_FILE
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {type(e).__name__}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise CheckpointError(f"{config_file} is not a PEFT adapter config (a JSON object with a 'peft_type')")
    if not tensors_file.is_file():
        pickled = " (it holds adapter_model.bin, a pickle, which fxdelta never loads)"
        pickled = pickled if (path / PICKLED_FILE).exists() else ""
        raise CheckpointError(
            f"{str(path)!r} has no {TENSORS_FILE}{pickled}; re-save the adapter with PEFT's "
            f"save_pretrained(..., safe_serialization=True)"
        )
    try:
        tensors = load_file(str(tensors_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{tensors_file} is corrupt or not a safetensors file: {e}") from e
    return config, tensors
