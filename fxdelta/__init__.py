"""fxdelta: a torch.fx graph-rewriting compiler for delta tuning.

    import fxdelta
    fxdelta.compile(model, {"delta_type": "lora", "lora_r": 8})   # patch in place
    fxdelta.save(model, "my-delta")                                # only the delta tensors
    fxdelta.load(fresh_model, "my-delta")

OpenDelta-style classes work too: ``LoraModel(backbone_model=model)``, ``AdapterModel``,
``BitFitModel``, ``LowRankAdapterModel``, ``CompacterModel``, ``ParallelAdapterModel``, ``IA3Model``,
``DoraModel``, ``PrefixModel``, ``SoftPromptModel``, ``AutoDeltaConfig``, ``AutoDeltaModel``,
``Visualization``.
"""

from fxdelta.api import compile, delta_models, load, save, show_graph
from fxdelta.auto import AutoDeltaConfig, AutoDeltaModel
from fxdelta.config import DeltaConfig
from fxdelta.errors import (
    CheckpointError,
    ConfigError,
    FxDeltaError,
    SelectorError,
    StateError,
    UnsupportedModelError,
)
from fxdelta.handle import DeltaModel
from fxdelta.methods.activations import NonLinearity
from fxdelta.methods.adapter import AdapterConfig
from fxdelta.methods.bitfit import BitFitConfig
from fxdelta.methods.compacter import CompacterConfig
from fxdelta.methods.dora import DoraConfig
from fxdelta.methods.ia3 import IA3Config
from fxdelta.methods.lora import LoraConfig
from fxdelta.methods.low_rank_adapter import LowRankAdapterConfig
from fxdelta.methods.parallel_adapter import ParallelAdapterConfig
from fxdelta.methods.prefix import PrefixConfig
from fxdelta.methods.soft_prompt import SoftPromptConfig
from fxdelta.models import (
    AdapterModel,
    BitFitModel,
    CompacterModel,
    DoraModel,
    IA3Model,
    LoraModel,
    LowRankAdapterModel,
    ParallelAdapterModel,
    PrefixModel,
    SoftPromptModel,
)
from fxdelta.routes import Route
from fxdelta.visualization import Visualization

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig", "AdapterModel", "AutoDeltaConfig", "AutoDeltaModel", "BitFitConfig", "BitFitModel",
    "CheckpointError", "CompacterConfig", "CompacterModel", "ConfigError", "DeltaConfig", "DeltaModel",
    "DoraConfig", "DoraModel", "FxDeltaError", "IA3Config", "IA3Model", "LoraConfig", "LoraModel",
    "LowRankAdapterConfig", "LowRankAdapterModel", "NonLinearity", "ParallelAdapterConfig",
    "ParallelAdapterModel", "PrefixConfig", "PrefixModel", "Route", "SelectorError", "SoftPromptConfig", "SoftPromptModel", "StateError", "UnsupportedModelError", "Visualization",
    "compile", "delta_models", "load", "save", "show_graph",
]
