"""Trimmed delta checkpoints: a folder with one safetensors file and one JSON file.

``delta.safetensors`` holds only delta tensors (and backbone tensors the user unfroze), under
their backbone state_dict names. ``delta_config.json`` says which deltas they are (method,
hyper-parameters, targets) and which backbone they belong to (class and a structural
fingerprint of its parameter names and shapes). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.core.paths import delta_parameter_names
from fxdelta.io.atomic import interrupted_saves, replace_folder, write_into_folder
from fxdelta.io.distributed import model_class

TENSORS_FILE = "delta.safetensors"
CONFIG_FILE = "delta_config.json"
FORMAT_VERSION = 1


def fingerprint(backbone: nn.Module) -> str:
    """Hash of the backbone's own parameter names and shapes (deltas excluded, dtype ignored)."""
    deltas = delta_parameter_names(backbone)
    digest = hashlib.sha256()
    for name, p in backbone.named_parameters():
        if name not in deltas:
            digest.update(f"{name}:{tuple(p.shape)};".encode())
    return digest.hexdigest()[:16]


def write(
    directory: str | os.PathLike,
    backbone: nn.Module,
    deltas: list[dict[str, Any]],
    tensors: dict[str, torch.Tensor],
    *,
    beside_others: bool = False,
    stale: tuple[str, ...] = (),
) -> None:
    """Write (or replace, in one step) the checkpoint folder ``directory``. ``beside_others=True`` writes
    the two files into a folder that holds other things too (a Trainer's output), each file in one step,
    and then removes the files matching ``stale`` (an earlier full model's weights)."""
    from safetensors.torch import save_file

    if not isinstance(directory, (str, os.PathLike)):
        kind = type(directory).__name__
        raise CheckpointError(f"a checkpoint is saved to a folder path (str or os.PathLike), got {kind}")

    meta = {
        "format": "fxdelta",
        "format_version": FORMAT_VERSION,
        "backbone": {"class": model_class(backbone).__name__, "fingerprint": fingerprint(backbone)},
        "deltas": deltas,
    }
    arrays = {k: v.contiguous().cpu() for k, v in tensors.items()}

    def fill(folder: Path) -> None:
        save_file(arrays, str(folder / TENSORS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    names = (TENSORS_FILE, CONFIG_FILE)  # the config last: it says what the tensors are
    if beside_others:
        write_into_folder(Path(directory), fill, names=names, stale=stale, what="delta checkpoint")
    else:
        replace_folder(Path(directory), fill, allowed=names, what="delta checkpoint")


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    if not isinstance(directory, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint is a folder path (str or os.PathLike), got {type(directory).__name__}")
    path = Path(directory)
    if not path.is_dir():
        aside = interrupted_saves(path)
        hint = f"; a save was interrupted and left the previous checkpoint at {str(aside[-1])!r}" if aside else ""
        raise CheckpointError(
            f"no delta checkpoint folder at {str(path)!r}{hint}. fxdelta reads checkpoints from local folders "
            f"only (no Delta Center or Hub downloads): download it first, e.g. with "
            f"huggingface_hub.snapshot_download(repo_id), and pass the folder"
        )
    config = path / CONFIG_FILE
    if not config.is_file():
        peft = (path / "adapter_config.json").is_file()
        hint = (
            " It is a PEFT adapter folder: load it with fxdelta.load or a delta class's from_finetuned" if peft else ""
        )
        raise CheckpointError(
            f"{str(path)!r} has no {CONFIG_FILE}; is it an fxdelta checkpoint (written by save_finetuned)?{hint}"
        )
    try:
        meta = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{config} is not valid JSON: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "fxdelta" or not isinstance(meta.get("deltas"), list):
        raise CheckpointError(f"{config} is not an fxdelta delta config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config} has format_version {meta.get('format_version')!r}; this fxdelta reads {FORMAT_VERSION}"
        )
    _check_fields(meta, config)
    return meta


def _is_list_of(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, list) and all(isinstance(v, kinds) for v in value)


def _check_fields(meta: dict[str, Any], config: Path) -> None:
    """Every field loading reads has the type it must have, before anything is built from it."""

    def bad(where: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{config}: {where} must be {expected}; the file is damaged or not fxdelta's")

    backbone = meta.get("backbone")
    if not isinstance(backbone, dict) or not all(isinstance(backbone.get(k), str) for k in ("class", "fingerprint")):
        raise bad("'backbone'", "an object with string 'class' and 'fingerprint'")
    for i, entry in enumerate(meta["deltas"]):
        where = f"deltas[{i}]"
        if not isinstance(entry, dict):
            raise bad(where, "an object")
        if not isinstance(entry.get("name"), str) or not isinstance(entry.get("config"), dict):
            raise bad(where, "an object with a string 'name' and an object 'config'")
        targets: Any = entry.get("targets")
        if not _is_list_of(targets, (str,)):
            raise bad(f"{where}.targets", "a list of module paths")
        sources = entry.get("sources", [None] * len(targets))
        if not _is_list_of(sources, (str, type(None))) or len(sources) != len(targets):
            raise bad(f"{where}.sources", f"a list of {len(targets)} module paths or nulls")
        if not _is_list_of(entry.get("unfrozen", []), (str,)):
            raise bad(f"{where}.unfrozen", "a list of parameter names")


def read_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(directory) / TENSORS_FILE
    if not file.is_file():
        raise CheckpointError(f"{str(Path(directory))!r} has no {TENSORS_FILE}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is corrupt or not a safetensors file: {e}") from e


def check_backbone(meta: dict[str, Any], backbone: nn.Module, directory: Any) -> None:
    saved = meta.get("backbone", {})
    if saved.get("fingerprint") != fingerprint(backbone):
        raise CheckpointError(
            f"the checkpoint at {str(directory)!r} was saved for a {saved.get('class')} whose parameters differ from "
            f"this {type(backbone).__name__}'s (structural fingerprint {saved.get('fingerprint')} vs "
            f"{fingerprint(backbone)}); load it onto the same architecture and config it was trained on"
        )


def single_entry(directory: str | os.PathLike) -> dict[str, Any]:
    """The one delta a checkpoint holds (several: an error pointing at ``fxdelta.load``)."""
    deltas = read_meta(directory)["deltas"]
    if len(deltas) != 1:
        raise CheckpointError(f"{directory} holds {len(deltas)} deltas; use fxdelta.load(backbone, folder) for several")
    return deltas[0]


# Options of hub downloads (OpenDelta's from_finetuned passes them on): a local folder needs none of them.
DOWNLOAD_OPTIONS = frozenset(
    {
        "cache_dir",
        "force_download",
        "local_files_only",
        "resume_download",
        "proxies",
        "revision",
        "token",
        "use_auth_token",
        "mirror",
    }
)


def check_download_options(options: dict[str, Any], where: str) -> None:
    """Accept the download options scripts pass along (they change nothing for a local folder)."""
    unknown = sorted(set(options) - DOWNLOAD_OPTIONS)
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {unknown}")
