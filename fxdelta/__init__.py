"""fxdelta: a torch.fx graph-rewriting compiler for delta tuning.

    import fxdelta
    fxdelta.compile(model, {"delta_type": "lora", "lora_r": 8})   # patch in place
    fxdelta.save(model, "my-delta")                                # only the delta tensors
    fxdelta.load(fresh_model, "my-delta")

OpenDelta-style classes work too: one per method, named after its config (``LoraModel`` for
``LoraConfig``, ``AdapterModel``, ``BitFitModel``, ...; ``fxdelta.METHOD_CLASSES`` lists them),
plus ``AutoDeltaConfig``, ``AutoDeltaModel`` and ``Visualization``.
"""

from fxdelta.api import (
    compile,
    delta_models,
    hotswap,
    load,
    merge,
    merge_and_unload,
    reset_deltas,
    save,
    show_graph,
    unmerge,
)
from fxdelta.core.errors import (
    CheckpointError,
    ConfigError,
    FxDeltaError,
    FxDeltaWarning,
    MergeError,
    SelectorError,
    StateError,
    UnsupportedModelError,
)
from fxdelta.core.routes import Route
from fxdelta.inspect.tree import Visualization
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.registry import METHODS
from fxdelta.opendelta.auto import AutoDeltaConfig, AutoDeltaModel
from fxdelta.opendelta.classes import MODEL_CLASSES
from fxdelta.opendelta.model import DeltaModel
from fxdelta.spec.config import DeltaConfig

__version__ = "0.1.0"

# The per-method names, generated from the registry: LoraModel / LoraConfig, AdapterModel / AdapterConfig, ...
METHOD_CLASSES: dict[str, type] = {
    **{cls.__name__: cls for cls in MODEL_CLASSES.values()},
    **{m.config.__name__: m.config for m in METHODS.values()},
}
globals().update(METHOD_CLASSES)

__all__ = [
    "METHOD_CLASSES",
    "AutoDeltaConfig",
    "AutoDeltaModel",
    "CheckpointError",
    "ConfigError",
    "DeltaConfig",
    "DeltaModel",
    "FxDeltaError",
    "FxDeltaWarning",
    "MergeError",
    "NonLinearity",
    "Route",
    "SelectorError",
    "StateError",
    "UnsupportedModelError",
    "Visualization",
    "compile",
    "delta_models",
    "hotswap",
    "load",
    "merge",
    "merge_and_unload",
    "reset_deltas",
    "save",
    "show_graph",
    "unmerge",
]
__all__ += sorted(METHOD_CLASSES)
