"""One delta-model class per method, with OpenDelta's names: ``LoraModel``, ``AdapterModel``, ``BitFitModel``.

Each takes the backbone and its config's fields as keyword arguments, e.g.
``AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)``.
"""

from fxdelta.handle import DeltaModel
from fxdelta.methods.adapter import AdapterConfig
from fxdelta.methods.bitfit import BitFitConfig
from fxdelta.methods.lora import LoraConfig


class LoraModel(DeltaModel):
    """LoRA on linear layers (parallel route). Fields: see ``LoraConfig`` (``lora_r=8, lora_alpha=16,
    lora_dropout=0.0``); default positions: attention q and v."""

    config_class = LoraConfig


class AdapterModel(DeltaModel):
    """Bottleneck adapters after modules (output route). Fields: see ``AdapterConfig``
    (``bottleneck_dim=24, non_linearity="gelu_new"``); default positions: attention output and FFN output."""

    config_class = AdapterConfig


class BitFitModel(DeltaModel):
    """A new zero bias on module outputs (output route). Fields: see ``BitFitConfig``;
    default positions: every attention and FFN projection and the block layer norms."""

    config_class = BitFitConfig
