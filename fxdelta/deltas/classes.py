"""One delta-model class per method, with OpenDelta's names (``LoraModel``, ``AdapterModel``, ...).

Generated from the method registry: ``LoraConfig`` gives ``LoraModel``, whose keyword arguments
are the config's fields, e.g. ``AdapterModel(backbone_model=model, modified_modules=["fc2"],
bottleneck_dim=12)``.
"""

from __future__ import annotations

import dataclasses

from fxdelta.deltas.handle import DeltaModel
from fxdelta.methods.registry import ALIASES, METHODS
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
    namespace = {"config_class": method.config, "__doc__": doc, "__module__": "fxdelta", "__qualname__": name}
    return type(name, (DeltaModel,), namespace)


MODEL_CLASSES: dict[str, type[DeltaModel]] = {t: _model_class(m) for t, m in METHODS.items()}


def model_class_for(delta_type: str) -> type[DeltaModel]:
    """The delta-model class of ``delta_type`` (an alias works too); ``DeltaModel`` for unknown names."""
    return MODEL_CLASSES.get(ALIASES.get(delta_type, delta_type), DeltaModel)
