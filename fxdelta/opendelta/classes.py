"""One delta-model class per method, with OpenDelta's names (``LoraModel``, ``AdapterModel``, ...).

Generated from the method registry: ``LoraConfig`` gives ``LoraModel``, whose keyword arguments
are the config's fields, e.g. ``AdapterModel(backbone_model=model, modified_modules=["fc2"],
bottleneck_dim=12)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.formats.folders import saved_delta_type
from fxdelta.formats.load import load_deltas
from fxdelta.io import checkpoint
from fxdelta.methods.registry import ALIASES, METHODS, config_from_dict
from fxdelta.opendelta.model import DeltaModel
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method

_SHARED_FIELDS = {f.name for f in dataclasses.fields(DeltaConfig)}


def _defaults(config: type[DeltaConfig]) -> str:
    own = [f for f in dataclasses.fields(config) if f.name not in _SHARED_FIELDS]
    return ", ".join(f"{f.name}={f.default!r}" for f in own) or "none beyond where to patch"


def _model_class(method: Method) -> type[DeltaModel]:
    name = method.config.__name__.removesuffix("Config") + "Model"
    doc = (
        f"{method.summary}\n\n"
        f"``{name}(backbone_model, **fields)`` builds the delta and attaches it. Fields: see "
        f"``{method.config.__name__}`` ({_defaults(method.config)}), plus ``modified_modules``, "
        f"``exclude_modules``, ``unfrozen_modules`` and ``name``."
    )
    namespace = {
        "config_class": method.config,
        "from_finetuned": classmethod(_from_finetuned),
        "__doc__": doc,
        "__module__": "fxdelta",
        "__qualname__": name,
    }
    return type(name, (DeltaModel,), namespace)


def _from_finetuned(cls: type[DeltaModel], *args: Any, **kwargs: Any) -> DeltaModel:
    """Load a checkpoint folder of this method onto ``backbone_model`` (see ``load_finetuned``)."""
    return load_finetuned(*args, expected=cls.config_class, **kwargs)


def load_finetuned(
    finetuned_delta_path: str | os.PathLike[str],
    backbone_model: nn.Module,
    delta_config: DeltaConfig | Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    force_download: bool = False,
    check_hash: bool = True,
    local_files_only: bool = False,
    expected: type[DeltaConfig] | None = None,
    **options: Any,
) -> DeltaModel:
    """The one delta saved in a local folder, built on ``backbone_model`` and attached.

    ``delta_config`` replaces the saved config (same method); ``state_dict`` the saved tensors;
    ``check_hash=False`` skips the backbone fingerprint check (names and shapes are still checked).
    ``cache_dir``, ``force_download``, ``local_files_only`` and the other hub download options change
    nothing: fxdelta reads local folders only. Other options (``example_inputs``, ``hooks_only``) go
    to the delta model. A PEFT adapter folder (``adapter_config.json``) loads too (``fxdelta.formats.peft``).
    """
    for name in checkpoint.DOWNLOAD_OPTIONS & options.keys():  # they change nothing for a local folder
        del options[name]
    saved = saved_delta_type(finetuned_delta_path)  # a PEFT adapter folder holds one adapter too
    if expected is not None and saved != expected.delta_type:
        wanted = expected.__name__.removesuffix("Config") + "Model"
        raise CheckpointError(
            f"{finetuned_delta_path} holds a {saved!r} delta, not {expected.delta_type!r}: load it with "
            f"AutoDeltaModel.from_finetuned (or the class of its method), not {wanted}"
        )
    if delta_config is not None and not isinstance(delta_config, DeltaConfig):
        delta_config = config_from_dict(delta_config)
    (handle,) = load_deltas(
        finetuned_delta_path,
        backbone_model,
        model_class_for,
        tensors=state_dict,
        check_fingerprint=check_hash,
        config=delta_config,
        **options,
    )
    return handle


MODEL_CLASSES: dict[str, type[DeltaModel]] = {t: _model_class(m) for t, m in METHODS.items()}


def model_class_for(delta_type: str) -> type[DeltaModel]:
    """The delta-model class of ``delta_type`` (an alias works too); ``DeltaModel`` for unknown names."""
    return MODEL_CLASSES.get(ALIASES.get(delta_type, delta_type), DeltaModel)
