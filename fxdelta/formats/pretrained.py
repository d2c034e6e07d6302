"""``save_pretrained`` of a patched transformers model, the route ``Trainer.save_model`` takes: it writes
fxdelta's delta checkpoint, never a full model whose delta tensors ``from_pretrained`` would drop.

The class's ``save_pretrained`` knows nothing of deltas: it writes the whole backbone (deltas under
names ``from_pretrained`` drops as unexpected keys), or with a trimmed state_dict a ``model.safetensors``
that ``from_pretrained`` completes with random weights. So a backbone that holds delta models gets its
own ``save_pretrained`` (an instance attribute): while a delta is attached it writes ``delta.safetensors``
and ``delta_config.json`` (what ``fxdelta.load`` and ``from_finetuned`` read) into the folder, beside the
Trainer's files, and removes an earlier full model's weight files there, so ``from_pretrained(folder)``
fails loudly instead of loading something without the fine-tuning. With no delta attached, it is the
class's own ``save_pretrained``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import FxDeltaError
from fxdelta.formats import save

# The weight files transformers writes (and from_pretrained reads): a full model saved here before.
STALE_WEIGHTS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)
# Arguments of PreTrainedModel.save_pretrained that change nothing for a delta checkpoint (one small file).
_HARMLESS = frozenset(
    {"max_shard_size", "safe_serialization", "token", "save_peft_format", "save_original_format", "variant"}
)


def _is_pretrained(backbone: nn.Module) -> bool:
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers") for c in type(backbone).__mro__
    )


class DeltaSavePretrained:
    """The ``save_pretrained`` a patched transformers model has (see the module docstring)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    def __call__(
        self,
        save_directory: str | os.PathLike[str],
        is_main_process: bool = True,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _HARMLESS)
        cls_save = type(self.backbone).save_pretrained  # type: ignore[attr-defined]
        if unknown:
            raise TypeError(f"save_pretrained() of a model with deltas got unexpected keyword arguments {unknown}")
        handles = save.attached(BackboneState.find(self.backbone))
        if not handles:  # the bare backbone: the class's own save
            cls_save(self.backbone, save_directory, is_main_process, state_dict, push_to_hub, **kwargs)
            return
        if push_to_hub:
            raise FxDeltaError(
                "save_pretrained(push_to_hub=True) of a model with deltas: fxdelta saves delta checkpoints to local "
                "folders only. Save without it, then upload the folder (huggingface_hub.upload_folder)"
            )
        if kwargs.get("variant"):
            raise FxDeltaError(f"save_pretrained(variant={kwargs['variant']!r}): a delta checkpoint has no variants")
        if is_main_process:
            save.save_attached(
                self.backbone, handles, save_directory, state_dict, all_trainable=True, stale=STALE_WEIGHTS
            )


def install(state: BackboneState) -> None:
    """Give a transformers model with deltas the ``save_pretrained`` above (once; other modules: nothing). It goes
    with fxdelta's state (``BackboneState.on_drop``): a failed compile, or the last delta gone, leaves no trace."""
    backbone = state.backbone
    if _is_pretrained(backbone) and not isinstance(backbone.__dict__.get("save_pretrained"), DeltaSavePretrained):
        backbone.__dict__["save_pretrained"] = DeltaSavePretrained(backbone)
    if _uninstall not in state.on_drop:
        state.on_drop.append(_uninstall)


def _uninstall(backbone: nn.Module) -> None:
    if isinstance(backbone.__dict__.get("save_pretrained"), DeltaSavePretrained):
        del backbone.__dict__["save_pretrained"]
