"""Reading a checkpoint folder of either format (fxdelta's, or a PEFT adapter's) as fxdelta's record and
tensors, and the dtype rule every copy of saved tensors into live ones follows."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.deltas import peft_format
from fxdelta.io import checkpoint, peft_folder


def read_folder(
    directory: str | os.PathLike, backbone: nn.Module, *, check_fingerprint: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(record, tensors)`` of a checkpoint folder, its tensors named as fxdelta's on ``backbone``."""
    if peft_folder.is_peft_folder(directory):
        return peft_format.read(directory, backbone)
    meta = checkpoint.read_meta(directory)
    if check_fingerprint:
        checkpoint.check_backbone(meta, backbone, directory)
    return meta, checkpoint.read_tensors(directory)


def _lossless(saved: torch.dtype, wanted: torch.dtype) -> bool:
    """Whether a ``saved`` tensor copies into a ``wanted`` one without changing a value."""
    if saved == wanted:
        return True
    if not (saved.is_floating_point and wanted.is_floating_point):
        return False
    s, w = torch.finfo(saved), torch.finfo(wanted)
    return w.max >= s.max and w.eps <= s.eps and w.tiny <= s.tiny


def check_dtype(directory: Any, key: str, saved: torch.Tensor, wanted: torch.Tensor) -> None:
    if not _lossless(saved.dtype, wanted.dtype):
        raise CheckpointError(
            f"{directory}: tensor {key!r} is saved as {saved.dtype} but the delta holds {wanted.dtype}; copying would "
            f"change its values. Load it onto a backbone in the dtype it was trained in (model.to({saved.dtype}))"
        )
