"""Writing values into a live delta: the one writer that loading, hot-swapping and resetting share.

Values come per entry of a handle, keyed by the delta module's own tensor names (``lora_A.weight``).
``check_values`` runs before anything changes (every caller checks all deltas first): the names must be
the delta's, the shapes equal and, for values copied into the live tensors, the dtype lossless (a
checkpoint saved in float32 does not go silently into bfloat16). ``write_values`` then writes them between
forwards (the thread gate), in one of two placements:

- ``LIVE``: into the live tensors as they are (checkpoint values: loading, hot-swap), so the parameter
  objects an optimizer or a compiled graph holds stay;
- ``GIVEN``: as the given tensors are placed (a delta built again: ``reset_deltas``). A live tensor of the
  same shape, dtype and device is overwritten in place (its gradient cleared: it is a fresh start);
  one on ``meta`` or elsewhere is replaced by the given tensor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fxdelta.core.entries import Entry
from fxdelta.core.errors import CheckpointError

Values = Mapping[str, torch.Tensor]  # one delta module's tensors, by its own state_dict names


class Placement(enum.Enum):
    LIVE = "live"
    GIVEN = "given"


def lossless(saved: torch.dtype, wanted: torch.dtype) -> bool:
    """Whether a ``saved`` tensor copies into a ``wanted`` one without changing a value."""
    if saved == wanted:
        return True
    if not (saved.is_floating_point and wanted.is_floating_point):
        return False
    s, w = torch.finfo(saved), torch.finfo(wanted)
    return w.max >= s.max and w.eps <= s.eps and w.tiny <= s.tiny


def check_dtype(where: Any, key: str, saved: torch.Tensor, wanted: torch.Tensor) -> None:
    """A saved tensor copies into a live one only without changing a value."""
    if not lossless(saved.dtype, wanted.dtype):
        raise CheckpointError(
            f"{where}: tensor {key!r} is saved as {saved.dtype} but the delta holds {wanted.dtype}; copying would "
            f"change its values. Load it onto a backbone in the dtype it was trained in (model.to({saved.dtype}))"
        )


def _tensors(delta: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(delta.named_parameters()), **dict(delta.named_buffers())}


def check_values(
    entries: Sequence[Entry],
    values: Sequence[Values],
    where: Any,
    *,
    names: Sequence[str],
    source: str,
    placement: Placement = Placement.LIVE,
) -> None:
    """Raise ``CheckpointError`` unless ``values[i]`` holds exactly the tensors of ``entries[i].delta`` (its
    state_dict's), shaped as they are. ``names[i]`` prefixes a tensor's name in messages; ``source`` says
    where the values come from (``delta.safetensors``)."""
    for e, given, prefix in zip(entries, values, names, strict=True):
        live = e.delta.state_dict() if placement is Placement.LIVE else _tensors(e.delta)
        for name in [n for n in live if n not in given]:
            raise CheckpointError(f"{where}: tensor {f'{prefix}.{name}'!r} is missing from {source}")
        for name in [n for n in given if n not in live]:
            raise CheckpointError(
                f"{where}: tensor {f'{prefix}.{name}'!r} is none of the delta's ({sorted(live)}); the values are "
                f"not for this delta"
            )
        for name, value in given.items():
            if value.shape != live[name].shape:
                raise CheckpointError(
                    f"{where}: tensor {f'{prefix}.{name}'!r} has shape {tuple(value.shape)}, the delta expects "
                    f"{tuple(live[name].shape)}"
                )
            if placement is Placement.LIVE:
                check_dtype(where, f"{prefix}.{name}", value, live[name])


def write_values(state: Any, entries: Sequence[Entry], values: Sequence[Values], placement: Placement) -> None:
    """Write checked ``values`` into ``entries``' delta modules, between forwards of the backbone (``state.gate``)."""
    with state.gate.changing(), torch.no_grad():
        for e, given in zip(entries, values, strict=True):
            current = _tensors(e.delta)
            for name, value in given.items():
                t = current[name]
                if placement is Placement.LIVE:
                    t.copy_(value)
                elif not t.is_meta and (t.shape, t.dtype, t.device) == (value.shape, value.dtype, value.device):
                    t.copy_(value)
                    t.grad = None
                else:
                    owner, _, leaf = name.rpartition(".")
                    module = e.delta.get_submodule(owner)
                    if isinstance(t, nn.Parameter):
                        module._parameters[leaf] = nn.Parameter(value.detach(), requires_grad=t.requires_grad)
                    else:
                        module._buffers[leaf] = value.detach()
