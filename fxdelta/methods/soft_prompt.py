"""Soft prompts (Lester et al. 2021): learned embeddings prepended to the input embeddings.

The soft tokens sit at positions 0..N-1 of the module that embeds the ids (the encoder, for
encoder-decoders); masks, token types and positions are extended to match, and outputs are cut back
to the real tokens, so labels and losses work unchanged (see ``fxdelta.sites.prompt``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fxdelta.core.errors import ConfigError, UnsupportedModelError
from fxdelta.core.routes import Route
from fxdelta.methods.peft_prompt import SOFT_PROMPT
from fxdelta.sites.prompt import plan_prompt
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo

_TOKEN_INIT_MODES = ("sample", "first")


@dataclass(frozen=True, kw_only=True)
class SoftPromptConfig(DeltaConfig):
    """``soft_token_num``: N; ``token_init``: start from real token embeddings — ``True`` (a seeded sample of
    the vocabulary without special tokens), ``"first"`` (OpenDelta's ids 0..N-1), or a list of ids — or,
    with ``False``, from U(-``init_range``, ``init_range``); ``pool_real_cls``: BERT-style poolers read the
    real first token, not the first soft one."""

    delta_type: ClassVar[str] = "soft_prompt"

    soft_token_num: int = 100
    init_range: float = 0.5
    token_init: bool | str | tuple[int, ...] = True
    pool_real_cls: bool = True

    def validate(self) -> None:
        self._positive_int("soft_token_num")
        self._number("init_range", 0.0, low_inclusive=False)
        self._require("pool_real_cls", isinstance(self.pool_real_cls, bool), "True or False")
        init = self.token_init
        if isinstance(init, (list, tuple)):
            object.__setattr__(self, "token_init", tuple(init))
            self._require(
                "token_init",
                all(isinstance(i, int) and i >= 0 for i in init) and len(init) > 0,
                "True, False, 'first', 'sample' or a non-empty list of token ids",
            )
        else:
            self._require(
                "token_init",
                isinstance(init, bool) or init in _TOKEN_INIT_MODES,
                "True, False, 'first', 'sample' or a non-empty list of token ids",
            )


@dataclass(frozen=True)
class PromptSite:
    """Where the soft tokens go on a backbone (found by ``locate_prompt_site``)."""

    path: str  # the module that embeds the ids and builds the mask
    embedding: nn.Embedding
    strip: bool  # cut its outputs back to the real tokens (not an encoder-decoder's encoder)
    decoder: str | None = None  # encoder-decoders: the decoder, whose cross-attention mask is widened
    pooler: str | None = None  # BERT-style pooler reading the first token
    position_limit: int | None = None  # rows of a learned absolute position table
    position_origin: int = 0  # RoBERTa counts positions from padding_idx + 1
    special_ids: frozenset[int] = frozenset()  # pad, bos, eos, decoder start: never an initial token


def _input_embeddings(backbone: nn.Module) -> nn.Embedding:
    get = getattr(backbone, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Embedding):
        what = type(embedding).__name__ if embedding is not None else "nothing"
        raise UnsupportedModelError(
            f"soft prompt on a model without input embeddings: {type(backbone).__name__}.get_input_embeddings() "
            f"gives {what}, not a token embedding table; use prefix tuning, LoRA or adapters there"
        )
    return embedding


def _position_table(stack: nn.Module) -> tuple[int | None, int]:
    """(rows of a learned absolute position table, first position id) under the stack."""
    origin = 0
    embeddings = getattr(stack, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if (
        isinstance(table, nn.Embedding)
        and table.padding_idx is not None
        and hasattr(embeddings, "create_position_ids_from_input_ids")
    ):
        origin = table.padding_idx + 1  # RoBERTa
    for name, module in stack.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and ("pos" in last or last == "wpe"):
            return module.num_embeddings - getattr(module, "offset", 0), origin
    return None, origin


def locate_prompt_site(backbone: nn.Module) -> PromptSite:
    """Encoder-decoders: the encoder. Others: the nearest module above the input embedding whose forward
    takes ``inputs_embeds`` and ``attention_mask`` (not ``base_model``: OPT's head calls its decoder directly)."""
    embedding = _input_embeddings(backbone)
    paths = {id(m): p for p, m in backbone.named_modules()}
    config = getattr(backbone, "config", None)
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    special = frozenset(i for i in (getattr(config, k, None) for k in names) if isinstance(i, int))
    if getattr(config, "is_encoder_decoder", False):
        model: Any = backbone  # a transformers encoder-decoder
        encoder, decoder = model.get_encoder(), model.get_decoder()
        limit, origin = _position_table(encoder)
        return PromptSite(
            paths[id(encoder)],
            embedding,
            strip=False,
            decoder=paths[id(decoder)],
            position_limit=limit,
            position_origin=origin,
            special_ids=special,
        )
    for path, module in backbone.named_modules(remove_duplicate=False):
        if module is not embedding:
            continue
        parts = path.split(".")
        for i in range(len(parts) - 1, -1, -1):
            stack_path = ".".join(parts[:i])
            stack = backbone.get_submodule(stack_path)
            if {"inputs_embeds", "attention_mask"} <= set(inspect.signature(stack.forward).parameters):
                pooler = getattr(stack, "pooler", None)
                limit, origin = _position_table(stack)
                return PromptSite(
                    stack_path,
                    embedding,
                    strip=True,
                    pooler=f"{stack_path}.pooler".lstrip(".") if isinstance(pooler, nn.Module) else None,
                    position_limit=limit,
                    position_origin=origin,
                    special_ids=special,
                )
    raise UnsupportedModelError(
        f"soft prompt on a model without input embeddings: no module of {type(backbone).__name__} above its "
        f"embedding table takes inputs_embeds and attention_mask"
    )


def initial_ids(config: SoftPromptConfig, vocab: int, special: set[int]) -> torch.Tensor:
    n = config.soft_token_num
    if isinstance(config.token_init, tuple):
        ids = torch.tensor(config.token_init)
        if int(ids.max()) >= vocab:
            raise ConfigError(f"SoftPromptConfig.token_init holds id {int(ids.max())}, past the vocabulary ({vocab})")
        return ids.repeat((n + len(ids) - 1) // len(ids))[:n]
    if config.token_init == "first":
        return torch.arange(n) % vocab
    # A seeded sample without special tokens: OpenDelta's first ids are padding and unused rows in most vocabularies.
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    picks = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    return picks.repeat((n + len(picks) - 1) // len(picks))[:n]


class SoftPromptDelta(nn.Module):
    """The soft tokens, (N, d), in the input-embedding space (after any embedding scale, e.g. BART's)."""

    def __init__(self, weight: torch.Tensor, *, pool_real_cls: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (N, d)
        self.pool_real_cls = pool_real_cls  # BERT-style poolers read the real first token

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, N, d), no copy


def build(config: SoftPromptConfig, target: TargetInfo) -> SoftPromptDelta:
    site: PromptSite = target.probed
    embedding = site.embedding
    if site.position_limit is not None and config.soft_token_num + site.position_origin >= site.position_limit:
        raise ConfigError(
            f"SoftPromptConfig.soft_token_num={config.soft_token_num} leaves no room in the {site.position_limit} "
            f"learned positions of {site.path}; use fewer soft tokens"
        )
    if config.token_init is False:
        g = torch.Generator().manual_seed(0)
        weight = (torch.rand(config.soft_token_num, embedding.embedding_dim, generator=g) * 2 - 1) * config.init_range
        weight = weight.to(embedding.weight.device)
    else:
        ids = initial_ids(config, embedding.num_embeddings, set(site.special_ids))
        with torch.no_grad():  # through the module: BART's scaled embedding multiplies by embed_scale
            weight = embedding(ids.to(embedding.weight.device)).detach().clone()
    return SoftPromptDelta(weight.to(target.dtype), pool_real_cls=config.pool_real_cls)


def _locate(backbone: nn.Module) -> str:
    return locate_prompt_site(backbone).path


def _probe(backbone: nn.Module, example: Any, paths: list[str]) -> dict[str, PromptSite]:
    site = locate_prompt_site(backbone)
    return {p: site for p in paths if p == site.path}


METHOD = Method(
    delta_type="soft_prompt",
    config=SoftPromptConfig,
    build=build,
    route=Route.PROMPT,
    fold_refusal="it puts learned embeddings in front of the input sequence (a longer sequence), "
    "which no weight can hold",
    default_positions=(),
    probe=_probe,
    locate=_locate,
    plan_sites=plan_prompt,
    peft=SOFT_PROMPT,
    identity_at_init=False,
    aliases=("soft-prompt",),
    summary="Soft prompts: learned embeddings in front of the input embeddings (of the encoder, for "
    "encoder-decoders); outputs keep their shapes; placed where the backbone embeds its ids (no ``modified_modules``).",
    small={"soft_token_num": 8},
)
