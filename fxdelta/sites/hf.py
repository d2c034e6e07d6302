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

Also here: what moved between releases, found by role rather than by name or version (the cache
argument and the output field holding it, whether an attention is causal, the attention-function
registry), and ``is_layer``, transformers' class for one repeated layer of a stack.

Covers transformers 5.9 to 5.24 (CI runs 5.9.0, the pinned 5.23.0 and 5.24.0). Imported lazily
(it subclasses transformers' ``Cache``): ``import fxdelta`` stays light.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache

INTERFACE_KEY = "fxdelta_prefix"
# The KV cache's forward argument: 5.24 renamed past_key_values to cache (the old name works until 5.40).
CACHE_PARAMETERS = ("cache", "past_key_values")


# -- what moved between releases, found by role ------------------------------------------------------
def cache_parameter(module: nn.Module) -> str | None:
    """The forward parameter of ``module`` that takes the KV cache, or None: this release's spelling of the
    stack's argument, else, by role, the parameter annotated as a ``Cache`` whatever it is called (Falcon's
    and GPT-NeoX's attentions and layers take it as ``layer_past``)."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return None
    named = next((name for name in CACHE_PARAMETERS if name in params), None)
    if named is not None:
        return named
    return next((name for name, p in params.items() if _is_cache_annotation(p.annotation)), None)


def _is_cache_annotation(annotation: Any) -> bool:
    """Whether a parameter's annotation names a transformers ``Cache`` (``Cache | None``, a subclass, a string)."""
    if isinstance(annotation, str):  # a module with ``from __future__ import annotations``
        import transformers.cache_utils as cache_utils

        names = re.findall(r"\b\w*Cache\b", annotation)
        return any(isinstance(c := getattr(cache_utils, n, None), type) and issubclass(c, Cache) for n in names)
    if isinstance(annotation, type):
        return issubclass(annotation, Cache)
    return any(_is_cache_annotation(a) for a in typing.get_args(annotation))


def cache_in(kwargs: MutableMapping[str, Any]) -> Any:
    """The KV cache among a call's keyword arguments (under any spelling, or any ``Cache`` passed), or None."""
    for name in CACHE_PARAMETERS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return next((v for v in kwargs.values() if isinstance(v, Cache)), None)


def put_cache(kwargs: MutableMapping[str, Any], name: str, cache: Any) -> None:
    """Pass ``cache`` as argument ``name`` (whatever the module calls it), and under no other spelling
    (transformers refuses two)."""
    for other in CACHE_PARAMETERS:
        kwargs.pop(other, None)
    kwargs[name] = cache


def replace_returned(out: Any, old: Any, new: Any) -> Any:
    """``out`` (a ``ModelOutput`` or a tuple) with the object ``old`` replaced by ``new`` wherever it is returned."""
    if isinstance(out, MutableMapping):  # ModelOutput: the field is past_key_values or cache, by release
        for key in [k for k, v in out.items() if v is old]:
            out[key] = new
        return out
    if isinstance(out, tuple) and any(v is old for v in out):
        return tuple(new if v is old else v for v in out)
    return out


def release() -> str:
    """The installed transformers version, for error messages."""
    import transformers

    return transformers.__version__


def is_causal(attention: nn.Module) -> bool:
    """Whether an attention masks future positions: its ``is_causal`` flag (T5 has it from 5.15), else
    whether it belongs to a decoder (its own ``is_decoder``, or its config's)."""
    for flag in (getattr(attention, "is_causal", None), getattr(attention, "is_decoder", None)):
        if isinstance(flag, bool):
            return flag
    return getattr(getattr(attention, "config", None), "is_decoder", False) is True


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

    name = module._fxdelta_attn_implementation
    lookup = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)  # from 5.1; before, a plain registry
    if lookup is not None:
        implementation = lookup(name, eager)
    else:
        implementation = eager if name in (None, "eager") else ALL_ATTENTION_FUNCTIONS[name]
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
