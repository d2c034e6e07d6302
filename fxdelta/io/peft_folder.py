"""PEFT's adapter folder on disk: ``adapter_config.json`` + ``adapter_model.safetensors``.

This file only reads and writes the folder (atomically, strictly, nothing unpickled); what the
config fields and tensor names mean is ``fxdelta.deltas.peft_format``'s business.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fxdelta.core.errors import CheckpointError
from fxdelta.io.atomic import replace_folder

CONFIG_FILE = "adapter_config.json"
TENSORS_FILE = "adapter_model.safetensors"
PICKLED_FILE = "adapter_model.bin"  # PEFT's older (pickled) weights file: never read
README_FILE = "README.md"  # PEFT writes a model card beside its files; a folder may hold one


def is_peft_folder(directory: Any) -> bool:
    """Whether ``directory`` is a folder holding a PEFT ``adapter_config.json``."""
    return isinstance(directory, (str, os.PathLike)) and (Path(directory) / CONFIG_FILE).is_file()


def write(directory: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
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


def read(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
