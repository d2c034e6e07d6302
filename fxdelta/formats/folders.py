"""Which format a checkpoint folder is in, and reading either as fxdelta's record and tensors.

fxdelta's own folder (``delta_config.json`` + ``delta.safetensors``, ``fxdelta.io.checkpoint``) holds
any number of deltas; a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``,
``fxdelta.formats.peft``) holds one. Loading and hot-swapping read both through ``read_folder``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fxdelta.formats import peft
from fxdelta.io import checkpoint


def read_folder(
    directory: str | os.PathLike[str], backbone: nn.Module, *, check_fingerprint: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(record, tensors)`` of a checkpoint folder, its tensors named as fxdelta's on ``backbone``."""
    if peft.is_peft_folder(directory):
        return peft.read(directory, backbone)
    meta = checkpoint.read_meta(directory)
    if check_fingerprint:
        checkpoint.check_backbone(meta, backbone, directory)
    return meta, checkpoint.read_tensors(directory)


def saved_delta_type(directory: str | os.PathLike[str]) -> Any:
    """The ``delta_type`` of the one delta a folder holds (either format)."""
    if peft.is_peft_folder(directory):
        return peft.delta_type_of(directory)
    return checkpoint.single_entry(directory)["config"].get("delta_type")
