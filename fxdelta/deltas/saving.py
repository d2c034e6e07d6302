"""What ``save_finetuned`` writes, given OpenDelta's saving options (checked before anything is written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fxdelta.core.errors import CheckpointError, ConfigError, FxDeltaError

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
