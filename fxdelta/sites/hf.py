"""Every use of transformers internals, in one place: how prefix keys/values reach an attention.

Every transformers 5.x attention either calls ``past_key_values.update(k, v, layer_idx)`` (and
attends to what it returns) or, with no cache argument at all (DistilBERT), calls the attention
function registered under ``config._attn_implementation``. So:

- ``PrefixView`` is a ``Cache`` as the model should see it: ``[prefix; real cache]``. ``update``
  passes new keys/values to the real cache (which never stores the prefix) and returns them with the
  prefix in front; its lengths report P more, so transformers' own mask and position code computes
  what it would if the prefix had been written into the cache.
- ``intercept`` gives one attention module a config overlay whose attention implementation is a
  registered wrapper, the one place where its keys, values and 4D mask meet.

Also here: ``is_layer``, transformers' class for one repeated layer of a stack. Imported lazily
(it subclasses transformers' ``Cache``): ``import fxdelta`` stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache

INTERFACE_KEY = "fxdelta_prefix"


class PrefixSource(Protocol):
    length: int

    def kv(
        self, layer_idx: int | None, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prefix (B, heads, P, head_dim) x2 for this layer, or None for no prefix."""


class PrefixView(Cache):
    """``[prefix; inner]`` as seen by the attention layers; never stores the prefix."""

    def __init__(self, inner: Cache | None, source: PrefixSource) -> None:
        # No Cache.__init__: the view holds no layers of its own.
        self.inner, self.source = inner, source
        self.layer_class_to_replicate, self.offloading = None, False

    @property
    def length(self) -> int:
        return self.source.length

    @property
    def layers(self):  # type: ignore[override]  # Cache keeps a list; the view reads the inner cache's
        return self.inner.layers if self.inner is not None else []

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.inner is not None:
            key_states, value_states = self.inner.update(key_states, value_states, layer_idx, *args, **kwargs)
        prefix = self.source.kv(layer_idx, key_states, value_states)
        if prefix is None:
            return key_states, value_states
        return torch.cat([prefix[0], key_states], dim=-2), torch.cat([prefix[1], value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return (self.inner.get_seq_length(layer_idx) if self.inner is not None else 0) + self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        kv_len, kv_offset = (
            self.inner.get_mask_sizes(query_length, layer_idx) if self.inner is not None else (query_length, 0)
        )
        return kv_len + self.length, kv_offset

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return (self.inner.get_query_offset(layer_idx) if self.inner is not None else 0) + self.length

    def get_max_length(self, layer_idx=None) -> int:
        return -1 if self.inner is None else self.inner.get_max_length(layer_idx)

    @property
    def is_compileable(self) -> bool:
        return False if self.inner is None else self.inner.is_compileable

    @property
    def is_sliding(self):
        return [] if self.inner is None else self.inner.is_sliding

    @property
    def is_linear(self):
        return [] if self.inner is None else self.inner.is_linear

    @property
    def is_dummy(self):
        return [] if self.inner is None else self.inner.is_dummy


class _NoStore(DynamicCache):
    """The cross-attention half of a view made for a caller who gave no cache: stores nothing."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return key_states, value_states


def make_view(real: Any, source: PrefixSource, encoder_decoder: bool) -> Cache:
    """A view over ``real``; for a decoder of an encoder-decoder, prefixes go to self-attention only."""
    if not encoder_decoder:
        return PrefixView(real, source)
    # EncoderDecoderCache.__init__ type-checks its halves; build it by hand and share the real
    # cache's is_updated flags, so cross-attention's "already computed" marks land in the caller's cache.
    view: Any = EncoderDecoderCache.__new__(EncoderDecoderCache)
    view.self_attention_cache = PrefixView(real.self_attention_cache if real is not None else None, source)
    view.cross_attention_cache = real.cross_attention_cache if real is not None else _NoStore()
    view.is_updated = real.is_updated if real is not None else {}
    return view


def is_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one repeated layer of a transformers stack (a decoder or encoder layer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return isinstance(module, GradientCheckpointingLayer)


def new_cache(config: Any, encoder_decoder: bool) -> Cache:
    """The cache a stack would have created for itself when asked to cache and given none."""
    if encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    return DynamicCache(config=config)


# -- attention modules without a cache argument: intercept their attention function ---------------
def _intercepted_attention(module: Any, query, key, value, attention_mask, **kwargs):
    key, value, attention_mask = module._fxdelta_prefix_hook(key, value, attention_mask)
    eager: Any = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    implementation = ALL_ATTENTION_FUNCTIONS.get_interface(module._fxdelta_attn_implementation, eager)
    return implementation(module, query, key, value, attention_mask, **kwargs)


class _ConfigOverlay:
    """Reads through to the module's real config, except for the attention implementation's name."""

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_real", config)

    def __getattr__(self, name: str) -> Any:
        return INTERFACE_KEY if name == "_attn_implementation" else getattr(self._real, name)


def intercept(module: Any, hook: Callable[[Any, Any, Any], tuple[Any, Any, Any]]) -> Callable[[], None]:
    """Route ``module``'s attention function through ``hook(key, value, mask)``; returns the undo."""
    from transformers import AttentionInterface

    AttentionInterface.register(INTERFACE_KEY, _intercepted_attention)  # idempotent
    real = module.config
    module._fxdelta_prefix_hook = hook
    module._fxdelta_attn_implementation = real._attn_implementation
    module.config = _ConfigOverlay(real)

    def undo() -> None:
        module.config = real
        del module._fxdelta_prefix_hook, module._fxdelta_attn_implementation

    return undo
