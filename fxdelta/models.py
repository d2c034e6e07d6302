"""One delta-model class per method, with OpenDelta's names (``LoraModel``, ``AdapterModel``, ...).

Each takes the backbone and its config's fields as keyword arguments, e.g.
``AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)``.
"""

from fxdelta.handle import DeltaModel
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


class LowRankAdapterModel(DeltaModel):
    """Adapters with rank-``low_rank_rank`` projections (output route). Fields: see ``LowRankAdapterConfig``
    (``reduction_factor=32, non_linearity="gelu_new", low_rank_w_init="glorot-uniform", low_rank_rank=1``);
    default positions: the attention block and FFN outputs."""

    config_class = LowRankAdapterConfig


class CompacterModel(DeltaModel):
    """Adapters with PHM (sum-of-Kronecker) projections (output route). Fields: see ``CompacterConfig``;
    default positions: the attention block and FFN outputs."""

    config_class = CompacterConfig


class ParallelAdapterModel(DeltaModel):
    """Bottleneck adapters from a module's input to a (possibly other) module's output; ``modified_modules``
    is read as ``[source, target, ...]`` pairs. Fields: see ``ParallelAdapterConfig`` (``bottleneck_dim=24,
    non_linearity="gelu_new", scaled=1.0``); default pairs: attention block with itself, FFN input to FFN output."""

    config_class = ParallelAdapterConfig


class IA3Model(DeltaModel):
    """Learned rescaling vectors (ones at init) on keys, values and the FFN activation (output route).
    Fields: see ``IA3Config``."""

    config_class = IA3Config


class DoraModel(DeltaModel):
    """DoRA: LoRA on the weight's direction plus a learned magnitude (in-out route). Fields: see
    ``DoraConfig`` (LoRA's); default positions: attention q and v."""

    config_class = DoraConfig


class PrefixModel(DeltaModel):
    """Prefix tuning: learned keys/values in front of every targeted self-attention's own. Fields: see
    ``PrefixConfig`` (``prefix_token_num=6, reparameterize=True, embed_dim=512, mid_dim=512``); default
    positions: every self-attention. ``merge()`` folds the reparameterization MLP into the prefixes."""

    config_class = PrefixConfig


class SoftPromptModel(DeltaModel):
    """Soft prompts: learned embeddings in front of the input embeddings (of the encoder, for
    encoder-decoders); outputs keep their shapes. Fields: see ``SoftPromptConfig`` (``soft_token_num=100,
    init_range=0.5, token_init=True``); placed where the backbone embeds its ids (no ``modified_modules``)."""

    config_class = SoftPromptConfig
