"""Soft prompts and prefix tuning in PEFT's format (``PROMPT_TUNING``, ``PREFIX_TUNING``).

PEFT keeps both as one top-level ``prompt_embeddings`` tensor and applies them through its task
classes (``PeftModelForCausalLM``, ...). Its soft prompt is fxdelta's: N embeddings in front of the
input embeddings, masks widened, at positions 0..N-1; its BERT-style poolers read the first soft token
(fxdelta's ``pool_real_cls=False``). Its prefixes go in as ``past_key_values``, which is what fxdelta's
prefixes are in decoders (P tokens of past context, real tokens at positions P..); in encoders fxdelta's
prefixes keep the real tokens' positions, and PEFT's (as a past) shift them, so those are refused.
PEFT's ``prompt_embeddings`` for prefixes is (P, layers * 2 * heads * head_dim), ordered
(layer, key/value, head, dim).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.peft import PeftFormat, PeftImport, PeftTarget, number, refuse

NAME = "prompt_embeddings"
# Set from the model by PEFT when absent, or only used to initialise (the tensors are loaded).
_INIT_ONLY = (
    "num_attention_heads",
    "num_layers",
    "prompt_tuning_init",
    "prompt_tuning_init_text",
    "tokenizer_name_or_path",
    "tokenizer_kwargs",
)


def _one_submodule(config: Mapping[str, Any]) -> None:
    """PEFT puts a second prompt in front of an encoder-decoder's decoder unless told one submodule."""
    value = config.get("num_transformer_submodules")
    if value not in (1, None) or (value is None and config.get("task_type") == "SEQ_2_SEQ_LM"):
        raise refuse(
            "num_transformer_submodules",
            value if value is not None else "2 (PEFT's default for SEQ_2_SEQ_LM)",
            "fxdelta's soft prompts and prefixes sit in one place (the encoder of an encoder-decoder), not in "
            "front of the decoder too",
        )


def _export_prompt(config: DeltaConfig, backbone: nn.Module, targets: list[PeftTarget]) -> tuple[dict, dict]:
    (t,) = targets
    if getattr(config, "pool_real_cls", False) and isinstance(getattr(t.module, "pooler", None), nn.Module):
        raise CheckpointError(
            f"{t.path}'s pooler reads the real first token (pool_real_cls=True); PEFT's reads the first soft token. "
            f"Train with SoftPromptConfig(pool_real_cls=False) to export to PEFT, or save in fxdelta's format"
        )
    weight = t.state["weight"]  # (N, d)
    fields = {
        "num_virtual_tokens": weight.shape[0],
        "token_dim": weight.shape[1],
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
    }
    return fields, {"": {NAME: weight}}


def _read_prompt(config: Mapping[str, Any], backbone: nn.Module, targets: list[str], grouped: dict) -> PeftImport:
    _one_submodule(config)
    n = number(config, "num_virtual_tokens", None, (int,))
    weight = grouped[""].get(NAME)
    if weight is None or weight.dim() != 2 or weight.shape[0] != n:
        raise CheckpointError(f"{NAME} must be a ({n}, token_dim) tensor, got {getattr(weight, 'shape', None)}")
    fields = {"soft_token_num": n, "pool_real_cls": False, "token_init": False}
    (target,) = targets
    return PeftImport(fields, [target], {target: {"weight": weight}})


_DECODERS_ONLY = (
    "PEFT passes prefixes as past_key_values: that is what fxdelta's prefixes are in decoder-only models, but in an "
    "encoder it shifts the real tokens' positions (fxdelta's keep them), and in an encoder-decoder it goes to the "
    "decoder. Only decoder-only prefixes map between the two: "
)


def _layers(targets: list[PeftTarget]) -> list[PeftTarget]:
    """The targets in layer order; PEFT gives every layer of one decoder a prefix of one geometry."""
    geometry = [t.probed for t in targets]
    if not all(getattr(g, "causal", False) and not getattr(g, "encoder_decoder", False) for g in geometry):
        raise CheckpointError(_DECODERS_ONLY + "save this one in fxdelta's format")
    if any(g.layer_idx is None for g in geometry):
        raise CheckpointError("PEFT's prefixes are per layer index, and these attentions do not say theirs")
    ordered = sorted(targets, key=lambda t: t.probed.layer_idx)
    shapes = {(g.heads, g.head_dim, g.v_dim) for g in geometry}
    if [t.probed.layer_idx for t in ordered] != list(range(len(targets))) or len(shapes) != 1:
        raise CheckpointError(
            "PEFT's prefix tuning gives every layer a prefix of one shape; this delta covers layers "
            f"{[t.probed.layer_idx for t in ordered]} with shapes {sorted(shapes)}"
        )
    ((_, head_dim, v_dim),) = shapes
    if head_dim != v_dim:
        raise CheckpointError(f"PEFT's prefixes have keys and values of one size, here {head_dim} and {v_dim}")
    return ordered


def _export_prefix(config: DeltaConfig, backbone: nn.Module, targets: list[PeftTarget]) -> tuple[dict, dict]:
    ordered = _layers(targets)
    g = ordered[0].probed
    parts = []
    for t in ordered:  # key, value: (1, heads, P, head_dim) -> (P, heads * head_dim)
        for kv in ("key", "value"):
            x = t.state[kv][0]
            parts.append(x.permute(1, 0, 2).reshape(x.shape[1], -1))
    fields = {
        "num_virtual_tokens": config.prefix_token_num,  # type: ignore[attr-defined]
        "token_dim": g.heads * g.head_dim,
        "num_attention_heads": g.heads,
        "num_layers": len(ordered),
        "num_transformer_submodules": 1,
        "prefix_projection": False,
    }
    return fields, {"": {NAME: torch.cat(parts, dim=-1)}}


def _read_prefix(config: Mapping[str, Any], backbone: nn.Module, targets: list[str], grouped: dict) -> PeftImport:
    _one_submodule(config)
    modules = dict(backbone.named_modules())
    encoder_decoder = getattr(getattr(backbone, "config", None), "is_encoder_decoder", False)
    if encoder_decoder or not all(getattr(modules[t], "is_causal", None) is True for t in targets):
        raise CheckpointError(_DECODERS_ONLY + f"the self-attentions of this {type(backbone).__name__} are not causal")
    n = number(config, "num_virtual_tokens", None, (int,))
    heads = number(config, "num_attention_heads", None, (int,))
    token_dim = number(config, "token_dim", None, (int,))
    layers = number(config, "num_layers", None, (int,))
    weight = grouped[""].get(NAME)
    if layers != len(targets) or token_dim % heads:
        raise CheckpointError(
            f"a prefix for {layers} layers of {heads} heads in {token_dim} dims; this backbone has {len(targets)} "
            f"self-attention layers"
        )
    if weight is None or tuple(weight.shape) != (n, layers * 2 * token_dim):
        raise CheckpointError(f"{NAME} must be ({n}, {layers * 2 * token_dim}), got {getattr(weight, 'shape', None)}")
    blocks = weight.reshape(n, layers, 2, heads, token_dim // heads).permute(1, 2, 3, 0, 4)  # (L, 2, heads, P, d)
    state = {t: {"key": blocks[i, 0].unsqueeze(0), "value": blocks[i, 1].unsqueeze(0)} for i, t in enumerate(targets)}
    return PeftImport({"prefix_token_num": n, "reparameterize": False}, list(targets), state)


SOFT_PROMPT = PeftFormat(
    peft_type="PROMPT_TUNING",
    export=_export_prompt,
    read=_read_prompt,
    tensor_names=(NAME,),
    reads=("num_virtual_tokens", "token_dim", "num_transformer_submodules", *_INIT_ONLY),
    prompt_learning=True,
)
PREFIX = PeftFormat(
    peft_type="PREFIX_TUNING",
    export=_export_prefix,
    read=_read_prefix,
    tensor_names=(NAME,),
    # encoder_hidden_size sizes PEFT's prefix MLP, used only with prefix_projection (refused).
    reads=(
        "num_virtual_tokens",
        "token_dim",
        "num_transformer_submodules",
        "num_attention_heads",
        "num_layers",
        "encoder_hidden_size",
    ),
    fixed={"prefix_projection": (False,)},
    prompt_learning=True,
)
