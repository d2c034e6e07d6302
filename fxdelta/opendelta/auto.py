"""``AutoDeltaConfig`` / ``AutoDeltaModel``: build or load a delta from its ``delta_type``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.io import checkpoint
from fxdelta.methods.registry import config_from_dict
from fxdelta.opendelta.classes import load_finetuned, model_class_for
from fxdelta.opendelta.model import DeltaModel
from fxdelta.spec.config import DeltaConfig


class AutoDeltaConfig:
    """Configs from plain dicts: ``AutoDeltaConfig.from_dict({"delta_type": "lora", "lora_r": 4})``."""

    @staticmethod
    def from_dict(config: Mapping[str, Any]) -> DeltaConfig:
        """The config of ``config["delta_type"]``. Keys that are none of its fields (a script's other
        arguments, e.g. ``asdict(delta_args)``) are dropped with a warning naming them."""
        return config_from_dict(config, unknown="warn")

    @staticmethod
    def from_finetuned(finetuned_delta_path: str | os.PathLike[str], **download_options: Any) -> DeltaConfig:
        """The config saved in a local checkpoint folder, whatever its method."""
        checkpoint.check_download_options(download_options, "AutoDeltaConfig.from_finetuned")
        return config_from_dict(checkpoint.single_entry(finetuned_delta_path)["config"])


class AutoDeltaModel:
    """Delta models from a config or a checkpoint, whatever their method."""

    @staticmethod
    def from_config(config: DeltaConfig | Mapping[str, Any], backbone_model: nn.Module, **options: Any) -> DeltaModel:
        if not isinstance(config, DeltaConfig):
            config = AutoDeltaConfig.from_dict(config)
        return model_class_for(config.delta_type)(backbone_model, config, **options)

    @staticmethod
    def from_finetuned(
        finetuned_delta_path: str | os.PathLike[str], backbone_model: nn.Module, *args: Any, **kwargs: Any
    ) -> DeltaModel:
        """The one delta saved in a local folder, whatever its method, built on ``backbone_model`` and
        attached (options: see ``fxdelta.opendelta.classes.load_finetuned``)."""
        return load_finetuned(finetuned_delta_path, backbone_model, *args, **kwargs)
