"""The soft-prompt site: hooks on the module that embeds the ids (one site for all prompt deltas).

- Forward pre-hook (run before any other pre-hook there, prefix tuning's included):
  - nothing cached yet (no cache, or generate's first step): embed the ids (or take the caller's
    ``inputs_embeds``) and put the N soft tokens in front; the 2D mask gets N ones, ``token_type_ids``
    N zeros, explicit ``position_ids`` N leading positions and a shift by N;
  - the cache already holds the soft tokens (generate's later steps): nothing is prepended; the mask,
    which counts real tokens, gets N ones, explicit positions move by N. A mask of any other length
    means the caller sliced its ids against the cache length (restarting generate from a returned
    cache with the full sequence): N tokens would be skipped, so that is an error.
- Forward hook: outputs are cut back to the real tokens (hidden states, attentions' query axis), so
  logits, ``labels`` and losses keep their meaning. Not on an encoder-decoder's encoder, whose decoder
  must see the soft states; its cross-attention mask is widened by a pre-hook on the decoder instead.
- BERT-style poolers read the real first token.

Several prompt deltas form one block, in creation order: the mask and position bookkeeping needs one N.
``plan_prompt`` is soft prompts' ``Method.plan_sites``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn

from fxdelta.core.calls import by_name
from fxdelta.core.entries import Entry
from fxdelta.core.errors import FxDeltaError
from fxdelta.core.per_thread import PerThread
from fxdelta.sites.base import HookedSite, SiteKind, entry_ids


def _cat_left(t: torch.Tensor, n: int, value: Any) -> torch.Tensor:
    pad = torch.full((*t.shape[:-1], n), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=-1)


def _sliced(length: int, past: int, new: int, n: int) -> FxDeltaError:
    return FxDeltaError(
        f"soft prompt: the cache holds {past} tokens ({n} soft + {past - n} real) and {new} new ones came in, so the "
        f"attention_mask/positions should count {past - n + new} real tokens, not {length}. "
        f"Restarting generate() from a "
        f"returned cache? Pass only the new input_ids with the full attention_mask (generate slices the full sequence "
        f"by the cache length, which includes the soft tokens)."
    )


class PromptDelta(Protocol):
    """What this site needs of a soft-prompt delta module (``fxdelta.methods.soft_prompt``)."""

    length: int  # N
    pool_real_cls: bool  # BERT-style poolers read the real first token

    def __call__(self, batch: int, dtype: torch.dtype) -> torch.Tensor: ...  # (B, N, d)


def plan_prompt(backbone: nn.Module, entries: Sequence[Entry]) -> list[HookedSite]:
    """One site for every prompt delta: the mask and position bookkeeping needs one N."""
    return [SoftPromptSite(backbone, entries, entries[0].probed)]


class SoftPromptSite(HookedSite):
    kind = SiteKind.SOFT_PROMPT

    def __init__(self, backbone: nn.Module, entries: Sequence[Entry], site: Any) -> None:
        super().__init__(site.path, backbone.get_submodule(site.path), list(entries))
        self.site = site  # a fxdelta.methods.soft_prompt.PromptSite
        self.backbone = backbone
        self.deltas = [cast(PromptDelta, e.delta) for e in self.entries]
        self.length = sum(d.length for d in self.deltas)
        self._signature = inspect.signature(self.module.forward)
        # (N prepended, caller wanted a tuple) per call, last in first out; each thread has its own
        self._calls: PerThread[list[tuple[int, bool]]] = PerThread(list)

    @property
    def key(self) -> tuple:
        return (SoftPromptSite, self.path, entry_ids(self.entries))

    def _soft(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        parts = [d(batch, dtype).to(dtype) for d in self.deltas]  # in the embeddings' dtype, whatever the delta's
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, N, d)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        from fxdelta.sites.hf import cache_in

        _, kw = by_name(self._signature, args, kwargs)
        n, site = self.length, self.site
        ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
        tokens = ids if ids is not None else embeds
        if tokens is None:
            raise FxDeltaError(f"soft prompt: {self.path} was called with neither input_ids nor inputs_embeds")
        new = tokens.shape[1]
        cache = cache_in(kw)
        past = cache.get_seq_length() if cache is not None else 0
        mask = kw.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise FxDeltaError(f"soft prompt: only 2D attention masks (or None) can be extended, got {mask.ndim}D")
        if cache is not None and getattr(cache, "is_compileable", False):
            raise FxDeltaError(
                "soft prompt: static (compileable) caches are sized without the soft tokens; use the default cache"
            )
        positions = kw.get("position_ids")
        wants_tuple = kw.get("return_dict") is False or (
            kw.get("return_dict") is None and not getattr(getattr(module, "config", None), "return_dict", True)
        )
        if wants_tuple:
            kw["return_dict"] = True  # the hook cuts named fields; the caller gets its tuple back
        if past == 0:
            if site.position_limit is not None and site.position_origin + n + new > site.position_limit:
                raise FxDeltaError(
                    f"soft prompt: {n} soft + {new} real tokens exceed the {site.position_limit} learned positions of "
                    f"{self.path}; at most {site.position_limit - n - site.position_origin} real tokens fit"
                )
            if embeds is None:
                embeds = site.embedding(ids)
            kw["input_ids"] = None
            kw["inputs_embeds"] = torch.cat([self._soft(embeds.shape[0], embeds.dtype), embeds], dim=1)
            if mask is not None:
                kw["attention_mask"] = _cat_left(mask, n, 1)
            if kw.get("token_type_ids") is not None:
                kw["token_type_ids"] = _cat_left(kw["token_type_ids"], n, 0)
            if positions is not None:
                head = torch.arange(n, device=positions.device, dtype=positions.dtype) + site.position_origin
                kw["position_ids"] = torch.cat([head.expand(*positions.shape[:-1], n), positions + n], dim=-1)
            elif site.position_origin and ids is not None:
                # RoBERTa numbers positions over non-pad ids; inputs_embeds alone would number pads too
                real = torch.full((ids.shape[0], n), site.position_origin, dtype=ids.dtype, device=ids.device)
                embeddings: Any = module.embeddings
                kw["position_ids"] = embeddings.create_position_ids_from_input_ids(
                    torch.cat([real, ids], dim=1), site.position_origin - 1
                )
            self._calls.get().append((n, wants_tuple))
        else:  # the cache holds the soft tokens already; callers count real tokens
            if mask is not None:
                if mask.shape[-1] != past + new - n:
                    raise _sliced(mask.shape[-1], past, new, n)
                kw["attention_mask"] = _cat_left(mask, n, 1)
            elif positions is not None and int(positions[..., -1].max()) + 1 != past - n + new:
                raise _sliced(int(positions[..., -1].max()) + 1, past, new, n)
            if positions is not None:
                kw["position_ids"] = positions + n
            self._calls.get().append((0, wants_tuple))
        return (), kw

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any):
        calls = self._calls.get()
        n, wants_tuple = calls.pop() if calls else (0, False)
        if n and self.site.strip:
            out.last_hidden_state = out.last_hidden_state[:, n:]
            if getattr(out, "hidden_states", None) is not None:
                out.hidden_states = tuple(h[:, n:] for h in out.hidden_states)
            if getattr(out, "attentions", None) is not None:
                out.attentions = tuple(a[..., n:, :] for a in out.attentions)  # (B, H, T, N + T)
        return out.to_tuple() if wants_tuple else out

    def _pooler_pre_hook(self, module: nn.Module, args: tuple):
        calls = self._calls.get()
        n = calls[-1][0] if calls else 0
        return (args[0][:, n:], *args[1:]) if n else None

    def _decoder_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        _, kw = by_name(self._decoder_signature, args, kwargs)
        states, mask = kw.get("encoder_hidden_states"), kw.get("encoder_attention_mask")
        if (
            states is not None
            and mask is not None
            and mask.ndim == 2
            and mask.shape[-1] == states.shape[1] - self.length
        ):
            kw["encoder_attention_mask"] = _cat_left(mask, self.length, 1)
        return (), kw

    def _reset(self, module: nn.Module, args: tuple) -> None:
        self._calls.get().clear()  # a forward of this thread that raised may have left an entry

    def _register(self) -> list[Any]:
        # First among pre-hooks: prefix tuning's stack hook must see [soft; real] and the caller's counts.
        # The reset goes in front of even that: on a bare stack the backbone is the embedding module itself.
        handles = [
            self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True, prepend=True),
            self.module.register_forward_hook(self._hook, with_kwargs=True, prepend=True),
            self.backbone.register_forward_pre_hook(self._reset, prepend=True),
        ]
        if self.site.pooler and all(d.pool_real_cls for d in self.deltas):
            handles.append(
                self.backbone.get_submodule(self.site.pooler).register_forward_pre_hook(self._pooler_pre_hook)
            )
        if self.site.decoder is not None:
            decoder = self.backbone.get_submodule(self.site.decoder)
            self._decoder_signature = inspect.signature(decoder.forward)
            handles.append(decoder.register_forward_pre_hook(self._decoder_pre_hook, with_kwargs=True))
        return handles

    def _cleared(self) -> None:
        self._calls = PerThread(list)

    def describe(self) -> str:
        return (
            f"soft prompt on {self.path} ({type(self.module).__name__}): inputs_embeds <- [{self.length} soft; "
            f"embed(ids)], mask and positions extended"
            + (", outputs cut back to the real tokens" if self.site.strip else "")
        )
