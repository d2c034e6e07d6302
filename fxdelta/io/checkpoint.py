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
    directory: str | os.PathLike, backbone: nn.Module, deltas: list[dict[str, Any]], tensors: dict[str, torch.Tensor]
) -> None:
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "fxdelta",
        "format_version": FORMAT_VERSION,
        "backbone": {"class": type(backbone).__name__, "fingerprint": fingerprint(backbone)},
        "deltas": deltas,
    }
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()}, str(path / TENSORS_FILE), metadata={"format": "pt"}
    )
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"no delta checkpoint folder at {str(path)!r}")
    config = path / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(
            f"{str(path)!r} has no {CONFIG_FILE}; is it an fxdelta checkpoint (written by save_finetuned)?"
        )
    try:
        meta = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "fxdelta" or not isinstance(meta.get("deltas"), list):
        raise CheckpointError(f"{config} is not an fxdelta delta config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config} has format_version {meta.get('format_version')!r}; this fxdelta reads {FORMAT_VERSION}"
        )
    return meta


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
