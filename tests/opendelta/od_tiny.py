"""Tiny stand-ins for the checkpoints OpenDelta's pages load with ``from_pretrained``.

Each builder makes the same model class from its config class with small random weights (hidden 32,
2 layers, vocab 64 unless a snippet needs more), seeded and in eval mode. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from zoo import BART_TINY, T5_TINY, VOCAB  # the suite's tiny configs (tests/zoo.py)

SEQ = 6

_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)

# model class -> (config class, config fields)
_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "Bert": ("BertConfig", _ENCODER),
    "Roberta": ("RobertaConfig", dict(_ENCODER, pad_token_id=1)),
    "XLMRoberta": ("XLMRobertaConfig", dict(_ENCODER, pad_token_id=1)),
    "DebertaV2": ("DebertaV2Config", _ENCODER),
    "Albert": ("AlbertConfig", dict(_ENCODER, embedding_size=16)),
    "DistilBert": (
        "DistilBertConfig",
        dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48),
    ),
    "T5": ("T5Config", T5_TINY),
    "LongT5": ("LongT5Config", dict(T5_TINY, encoder_attention_type="transient-global")),
    "Bart": ("BartConfig", BART_TINY),
    "Blenderbot": (
        "BlenderbotConfig",
        dict(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
    ),
    "OPT": (
        "OPTConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=48,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        ),
    ),
    "GPT2": (
        "GPT2Config",
        dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2),
    ),
    "GPTJ": (
        "GPTJConfig",
        dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, bos_token_id=1),
    ),
    "ViT": (
        "ViTConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=16,
            patch_size=4,
        ),
    ),
    "Beit": (
        "BeitConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=16,
            patch_size=4,
        ),
    ),
}


def tiny(model_class: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """``transformers.<model_class>`` built from its config class with tiny sizes (``overrides`` win)."""
    family = next(f for f in sorted(_CONFIGS, key=len, reverse=True) if model_class.startswith(f))
    config_class, fields = _CONFIGS[family]
    config = getattr(transformers, config_class)(**{**fields, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(config).eval()


def tiny_clip(seed: int = 0) -> nn.Module:
    text = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=16)
    config = transformers.CLIPConfig(
        text_config=dict(text, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(vision, patch_size=4),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return transformers.CLIPModel(config).eval()


def ids(batch: int = 2, seq: int = SEQ, seed: int = 3, vocab: int = VOCAB) -> torch.Tensor:
    """Token ids avoiding the special ids 0-2; the last one is the eos id 2 (BART classifies from it)."""
    out = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    out[:, -1] = 2
    return out


def perturb(parameters, std: float = 0.5, seed: int = 7) -> None:
    """Give delta parameters non-trivial values (most deltas start as an identity), as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def under(name: str, selectors) -> bool:
    """Whether a parameter lies under a module named by an OpenDelta tail selector (dot boundaries)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p == s or p.endswith("." + s) for p in prefixes for s in selectors)


class WrappedModel(nn.Module):
    """OpenDelta README's and examples/unittest's wrapper: holds a model and forwards to it."""

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner = inner_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)
