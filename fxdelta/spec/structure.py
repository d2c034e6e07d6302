"""The common structure map: one vocabulary of transformer positions for every supported family.

Methods name their default positions in this vocabulary (``attn.q``, ``ff.w2``, ...); the map
turns them into selectors of the family's own module names. Positions cover self- and
cross-attention alike; a family whose attention projects q, k and v in one layer (GPT-2's
``c_attn``) maps all three names to it.

Vocabulary: ``attn.q``, ``attn.k``, ``attn.v`` (projections), ``attn.o`` (attention output
projection), ``ff.w1`` (FFN up/gate projections), ``ff.w2`` (FFN down projection),
``layer_norm`` (the norms inside each block); ``attn`` (the attention block) and ``ff`` (the
module whose output is the FFN's output); ``ff.in`` (the one module whose input is the FFN's
input) and ``ff.act`` (the FFN's activation, whose output is the intermediate hidden state); ``attn.self`` (the
self-attention modules, which store keys and values: where prefixes go).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fxdelta.core.errors import UnsupportedModelError

_P = "re:(?:.*\\.)?"  # a regex selector allowing any prefix (a head, a base-model attribute)


def _bert_like(q: str, k: str, v: str) -> dict[str, tuple[str, ...]]:
    block = _P + "layer\\.\\d+\\."
    return {
        "attn.q": (f"attention.self.{q}",),
        "attn.k": (f"attention.self.{k}",),
        "attn.v": (f"attention.self.{v}",),
        "attn.o": ("attention.output.dense",),
        "ff.w1": ("intermediate.dense",),
        "ff.w2": (block + "output\\.dense",),
        "layer_norm": (block + "(?:attention\\.)?output\\.LayerNorm",),
        "attn": (block + "attention",),
        "attn.self": ("attention.self",),
        "ff": (block + "output",),
        "ff.in": ("intermediate.dense",),
        "ff.act": ("intermediate",),
    }


def _bart_like(attentions: str) -> dict[str, tuple[str, ...]]:
    block = f"{_P}(?:{attentions})"
    attn = block + "\\."
    return {
        "attn.q": (attn + "q_proj",),
        "attn.k": (attn + "k_proj",),
        "attn.v": (attn + "v_proj",),
        "attn.o": (attn + "out_proj",),
        "ff.w1": ("fc1",),
        "ff.w2": ("fc2",),
        "layer_norm": (_P + "layers\\.\\d+\\.(?:self_attn|encoder_attn|final)_layer_norm",),
        "attn": (block,),  # the attention modules themselves
        "attn.self": ("self_attn",),
        "ff": ("fc2",),  # no FFN module: its output is fc2's
        "ff.in": ("fc1",),
        "ff.act": (_P + "layers\\.\\d+\\.activation_fn",),
    }


def _llama_like() -> dict[str, tuple[str, ...]]:
    return {
        "attn.q": ("self_attn.q_proj",),
        "attn.k": ("self_attn.k_proj",),
        "attn.v": ("self_attn.v_proj",),
        "attn.o": ("self_attn.o_proj",),
        "ff.w1": ("mlp.gate_proj", "mlp.up_proj"),
        "ff.w2": ("mlp.down_proj",),
        "layer_norm": ("input_layernorm", "post_attention_layernorm"),
        "attn": ("self_attn",),
        "attn.self": ("self_attn",),
        "ff": ("mlp",),
        "ff.in": ("mlp.gate_proj",),
        "ff.act": ("mlp.act_fn",),
    }


_T5_BLOCK = f"{_P}(?:SelfAttention|EncDecAttention)"
_T5_ATTN = _T5_BLOCK + "\\."

COMMON_STRUCTURE: dict[str, dict[str, tuple[str, ...]]] = {
    "bert": _bert_like("query", "key", "value"),
    "roberta": _bert_like("query", "key", "value"),
    "deberta-v2": _bert_like("query_proj", "key_proj", "value_proj"),
    "distilbert": {
        "attn.q": ("attention.q_lin",),
        "attn.k": ("attention.k_lin",),
        "attn.v": ("attention.v_lin",),
        "attn.o": ("attention.out_lin",),
        "ff.w1": ("ffn.lin1",),
        "ff.w2": ("ffn.lin2",),
        "layer_norm": ("sa_layer_norm", "output_layer_norm"),
        "attn": ("attention",),
        "attn.self": ("attention",),
        "ff": ("ffn",),
        "ff.in": ("ffn.lin1",),
        "ff.act": ("ffn.activation",),
    },
    "gpt2": {
        "attn.q": ("attn.c_attn",),
        "attn.k": ("attn.c_attn",),
        "attn.v": ("attn.c_attn",),
        "attn.o": ("attn.c_proj",),
        "ff.w1": ("mlp.c_fc",),
        "ff.w2": ("mlp.c_proj",),
        "layer_norm": ("ln_1", "ln_2"),
        "attn": ("attn",),
        "attn.self": ("attn",),
        "ff": ("mlp",),
        "ff.in": ("mlp.c_fc",),
        "ff.act": ("mlp.act",),
    },
    "t5": {
        "attn.q": (_T5_ATTN + "q",),
        "attn.k": (_T5_ATTN + "k",),
        "attn.v": (_T5_ATTN + "v",),
        "attn.o": (_T5_ATTN + "o",),
        "ff.w1": (_P + "DenseReluDense\\.wi(?:_0|_1)?",),
        "ff.w2": ("DenseReluDense.wo",),
        "layer_norm": (_P + "block\\.\\d+\\.layer\\.\\d+\\.layer_norm",),
        "attn": (_T5_BLOCK,),
        "attn.self": ("layer.0.SelfAttention",),
        "ff": ("DenseReluDense",),
        "ff.in": (_P + "DenseReluDense\\.wi(?:_0)?",),
        "ff.act": ("DenseReluDense.act",),
    },
    "bart": _bart_like("self_attn|encoder_attn"),
    "opt": _bart_like("self_attn"),
    "llama": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "vit": {
        "attn.q": ("attention.q_proj",),
        "attn.k": ("attention.k_proj",),
        "attn.v": ("attention.v_proj",),
        "attn.o": ("attention.o_proj",),
        "ff.w1": ("mlp.fc1",),
        "ff.w2": ("mlp.fc2",),
        "layer_norm": ("layernorm_before", "layernorm_after"),
        "attn": (_P + "layers\\.\\d+\\.attention",),
        "attn.self": (_P + "layers\\.\\d+\\.attention",),
        "ff": ("mlp",),
        "ff.in": ("mlp.fc1",),
        "ff.act": ("mlp.activation_fn",),
    },
}


def family_of(backbone: nn.Module) -> str | None:
    """The ``model_type`` of a transformers model, or None for anything else."""
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def default_selectors(backbone: nn.Module, positions: Iterable[str], delta_type: str) -> tuple[str, ...]:
    """Selectors for a method's default ``positions`` on this backbone's family."""
    family = family_of(backbone)
    mapping = COMMON_STRUCTURE.get(family or "")
    if mapping is None:
        what = f"family {family!r}" if family else f"{type(backbone).__name__} (not a transformers model)"
        raise UnsupportedModelError(
            f"fxdelta has no default positions for {what}; pass modified_modules=[...] naming the "
            f"modules to patch with {delta_type} (see Visualization(model).structure_graph() for names). "
            f"Families with defaults: {sorted(COMMON_STRUCTURE)}"
        )
    selectors: dict[str, None] = {}
    for position in positions:
        for selector in mapping[position]:
            selectors.setdefault(selector, None)
    return tuple(selectors)
