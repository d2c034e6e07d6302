"""``AutoDeltaConfig`` / ``AutoDeltaModel``: build or load a delta from its ``delta_type``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.deltas.classes import model_class_for
from fxdelta.deltas.handle import DeltaModel
from fxdelta.deltas.loading import load_deltas
from fxdelta.io import checkpoint
from fxdelta.methods.registry import config_from_dict
from fxdelta.spec.config import DeltaConfig


class AutoDeltaConfig:
    """Configs from plain dicts: ``AutoDeltaConfig.from_dict({"delta_type": "lora", "lora_r": 4})``."""

    @staticmethod
    def from_dict(config: Mapping[str, Any]) -> DeltaConfig:
        return config_from_dict(config)

    @staticmethod
    def from_finetuned(finetuned_delta_path: str | os.PathLike) -> DeltaConfig:
        deltas = checkpoint.read_meta(finetuned_delta_path)["deltas"]
        if len(deltas) != 1:
            raise CheckpointError(f"{finetuned_delta_path} holds {len(deltas)} deltas; use fxdelta.load() for several")
        return AutoDeltaConfig.from_dict(deltas[0]["config"])


class AutoDeltaModel:
    """Delta models from a config or a checkpoint, whatever their method."""

    @staticmethod
    def from_config(config: DeltaConfig | Mapping[str, Any], backbone_model: nn.Module, **options: Any) -> DeltaModel:
        if not isinstance(config, DeltaConfig):
            config = AutoDeltaConfig.from_dict(config)
        return model_class_for(config.delta_type)(backbone_model, config, **options)

    @staticmethod
    def from_finetuned(
        finetuned_delta_path: str | os.PathLike, backbone_model: nn.Module, **options: Any
    ) -> DeltaModel:
        count = len(checkpoint.read_meta(finetuned_delta_path)["deltas"])
        if count != 1:
            raise CheckpointError(f"{finetuned_delta_path} holds {count} deltas; use fxdelta.load() for several")
        (handle,) = load_deltas(finetuned_delta_path, backbone_model, **options)
        return handle
