"""The common structure map: one vocabulary of transformer positions for every supported family.

Methods name their default positions in this vocabulary (``attn.q``, ``ff.w2``, ...); the map
turns them into selectors of the family's own module names, and users may write the same names
(or OpenDelta's spelling, ``attn@.q@``) in ``modified_modules``. ``attn`` is self-attention, as in
OpenDelta; an encoder-decoder's cross-attention is ``crossattn``. A family whose attention projects
q, k and v in one layer (GPT-2's ``c_attn``) maps all three names to it.

Vocabulary: ``attn.q``, ``attn.k``, ``attn.v`` (projections), ``attn.o`` (attention output
projection), the same under ``crossattn``, ``ff.w1`` (FFN up/gate projections), ``ff.w2`` (FFN down
projection), ``layer_norm`` (the norms inside each block), ``final_layer_norm`` (a stack's last norm);
``attn``/``crossattn`` (the attention blocks) and ``ff`` (the module whose output is the FFN's output);
``ff.in`` (the one module whose input is the FFN's input) and ``ff.act`` (the FFN's activation, whose
output is the intermediate hidden state); ``attn.self`` (the self-attention modules, which store keys
and values: where prefixes go). A family lacks the names it has no module for.
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


def _attention(prefix: str, block: str, q: str, k: str, v: str, o: str) -> dict[str, tuple[str, ...]]:
    """``attn``/``crossattn`` (``prefix``) and its projections, for attention modules matched by ``block``."""
    return {
        prefix: (block,),
        **{f"{prefix}.{name}": (f"{block}\\.{proj}",) for name, proj in (("q", q), ("k", k), ("v", v), ("o", o))},
    }


def _bart_like(cross: bool, final_norm: str) -> dict[str, tuple[str, ...]]:
    projections = ("q_proj", "k_proj", "v_proj", "out_proj")
    return {
        **_attention("attn", _P + "self_attn", *projections),
        **(_attention("crossattn", _P + "encoder_attn", *projections) if cross else {}),
        "ff.w1": ("fc1",),
        "ff.w2": ("fc2",),
        "layer_norm": (_P + "layers\\.\\d+\\.(?:self_attn|encoder_attn|final)_layer_norm",),
        "final_layer_norm": (final_norm,),
        "attn.self": ("self_attn",),
        "ff": ("fc2",),  # no FFN module: its output is fc2's
        "ff.in": ("fc1",),
        "ff.act": (_P + "layers\\.\\d+\\.activation_fn",),
    }


def _llama_like(*norms: str) -> dict[str, tuple[str, ...]]:
    """Llama's names; ``norms`` are a family's block norms beyond Llama's two (Gemma3 norms the FFN too)."""
    return {
        "attn.q": ("self_attn.q_proj",),
        "attn.k": ("self_attn.k_proj",),
        "attn.v": ("self_attn.v_proj",),
        "attn.o": ("self_attn.o_proj",),
        "ff.w1": ("mlp.gate_proj", "mlp.up_proj"),
        "ff.w2": ("mlp.down_proj",),
        "layer_norm": ("input_layernorm", "post_attention_layernorm", *norms),
        "final_layer_norm": (_P + "norm",),
        "attn": ("self_attn",),
        "attn.self": ("self_attn",),
        "ff": ("mlp",),
        "ff.in": ("mlp.gate_proj",),
        "ff.act": ("mlp.act_fn",),
    }


def _neox_like(attention: str, norms: str, final_norm: str) -> dict[str, tuple[str, ...]]:
    """GPT-NeoX and Falcon: q, k and v in one ``query_key_value``, ``dense`` after the attention, a 4h MLP.
    ``attention`` and ``norms`` are regexes of the block's attention and norms after the layer index."""
    block = _P + "(?:layers|h)\\.\\d+\\."
    return {
        **_attention("attn", block + attention, "query_key_value", "query_key_value", "query_key_value", "dense"),
        "ff.w1": ("mlp.dense_h_to_4h",),
        "ff.w2": ("mlp.dense_4h_to_h",),
        "layer_norm": (block + norms,),
        "final_layer_norm": (final_norm,),
        "attn.self": (block + attention,),
        "ff": ("mlp",),
        "ff.in": ("mlp.dense_h_to_4h",),
        "ff.act": ("mlp.act",),
    }


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
        "final_layer_norm": ("ln_f",),
        "attn": ("attn",),
        "attn.self": ("attn",),
        "ff": ("mlp",),
        "ff.in": ("mlp.c_fc",),
        "ff.act": ("mlp.act",),
    },
    "t5": {
        **_attention("attn", _P + "SelfAttention", "q", "k", "v", "o"),
        **_attention("crossattn", _P + "EncDecAttention", "q", "k", "v", "o"),
        "ff.w1": (_P + "DenseReluDense\\.wi(?:_0|_1)?",),
        "ff.w2": ("DenseReluDense.wo",),
        "layer_norm": (_P + "block\\.\\d+\\.layer\\.\\d+\\.layer_norm",),
        "final_layer_norm": ("final_layer_norm",),
        "attn.self": ("layer.0.SelfAttention",),
        "ff": ("DenseReluDense",),
        "ff.in": (_P + "DenseReluDense\\.wi(?:_0)?",),
        "ff.act": ("DenseReluDense.act",),
    },
    "bart": _bart_like(cross=True, final_norm=_P + "(?:encoder|decoder)\\.layer_norm"),
    "opt": _bart_like(cross=False, final_norm=_P + "decoder\\.final_layer_norm"),
    "llama": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "mistral": _llama_like(),
    # Gemma3ForCausalLM (model_type gemma3_text); inside Gemma3ForConditionalGeneration (gemma3) the search finds
    # its language model, but the selectors, matched on every name, reach the SigLIP tower's self_attn too
    "gemma3_text": _llama_like("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "phi3": {
        **_llama_like(),
        **{f"attn.{name}": ("self_attn.qkv_proj",) for name in "qkv"},  # one projection for q, k and v
        "ff.w1": ("mlp.gate_up_proj",),
        "ff.in": ("mlp.gate_up_proj",),
        "ff.act": ("mlp.activation_fn",),
    },
    # the old decoder has input_layernorm (and post_attention_layernorm when not parallel), the new one
    # ln_attn and ln_mlp (or input_layernorm alone with num_ln_in_parallel_attn=1)
    "falcon": _neox_like("self_attention", "(?:input_layernorm|post_attention_layernorm|ln_attn|ln_mlp)", "ln_f"),
    "gpt_neox": _neox_like("attention", "(?:input_layernorm|post_attention_layernorm)", "final_layer_norm"),
    "vit": {
        "attn.q": ("attention.q_proj",),
        "attn.k": ("attention.k_proj",),
        "attn.v": ("attention.v_proj",),
        "attn.o": ("attention.o_proj",),
        "ff.w1": ("mlp.fc1",),
        "ff.w2": ("mlp.fc2",),
        "layer_norm": ("layernorm_before", "layernorm_after"),
        "final_layer_norm": (_P + "layernorm",),
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


def families_in(backbone: nn.Module) -> list[str]:
    """The known families of ``backbone``, or of the models it wraps (as OpenDelta searches): each
    outermost module of a known family counts, and its insides are not searched further."""
    family = family_of(backbone)
    if family in COMMON_STRUCTURE:
        return [family]
    found: dict[str, None] = {}
    for child in backbone.children():
        found.update(dict.fromkeys(families_in(child)))
    return list(found)


_OPENDELTA_NAMES = {"attn.proj": "attn.o", "crossattn.proj": "crossattn.o"}


def common_name(selector: str) -> str:
    """A selector as a common-structure name: OpenDelta writes ``attn@.q@`` for ``attn.q`` and
    ``attn.proj`` for the attention output, ``attn.o``."""
    name = selector.replace("@", "")
    return _OPENDELTA_NAMES.get(name, name)


def common_selectors(backbone: nn.Module, selector: str) -> tuple[str, ...] | None:
    """What a common-structure name means on this backbone, or None if it is not one it has."""
    name = common_name(selector)
    maps = [COMMON_STRUCTURE[f] for f in families_in(backbone)]
    if not any(name in m for m in maps):
        return None
    return tuple(dict.fromkeys(sel for m in maps for sel in m.get(name, ())))


def default_selectors(backbone: nn.Module, positions: Iterable[str], delta_type: str) -> tuple[str, ...]:
    """Selectors for a method's default ``positions`` on this backbone's families (a family lacks the
    positions it has no module for: GPT-2 has no cross-attention)."""
    families = families_in(backbone)
    if not families:
        family = family_of(backbone)
        what = f"family {family!r}" if family else f"{type(backbone).__name__} (not a transformers model)"
        raise UnsupportedModelError(
            f"fxdelta has no default positions for {what}, nor for any model it holds; pass "
            f"modified_modules=[...] naming the modules to patch with {delta_type} (see "
            f"Visualization(model).structure_graph() for names). Families with defaults: {sorted(COMMON_STRUCTURE)}"
        )
    selectors: dict[str, None] = {}
    for family in families:
        for position in positions:
            selectors.update(dict.fromkeys(COMMON_STRUCTURE[family].get(position, ())))
    return tuple(selectors)
