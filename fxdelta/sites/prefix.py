"""Sites for prefix tuning: one per targeted attention, one per causal stack, one to refresh the MLPs.

- ``PrefixAttentionSite`` (a forward pre-hook on the attention): when the attention receives no
  cache (encoders; decoder layers under activation checkpointing, which drop it), it gets a view that
  adds its prefix; bidirectional attentions also get their 4D mask widened by P "attend" columns.
  Attentions with no cache argument (DistilBERT) are intercepted at their attention function.
- ``PrefixStackSite`` (pre-hook and hook on the causal stack): the stack's cache becomes a view that
  adds each layer's prefix, its 2D mask gets P ones in front, explicit ``position_ids`` move by P,
  and the caller gets its real cache back. The prefix is then exactly P tokens of past context, as if
  given as past keys and values; every layer of the stack must carry the same P (one mask).
- ``PrefixRefreshSite``: without autograd, reparameterized prefixes are computed once per backbone forward
  (while autograd records, each layer computes its own: ``PrefixEncoder.block``).

Several prefix deltas on one attention are concatenated in creation order (total P = sum).
``plan_prefix`` is prefix tuning's ``Method.plan_sites``; the transformers surface it needs is in
``fxdelta.sites.hf``, imported when a prefix is planned.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn

from fxdelta.core.calls import by_name
from fxdelta.core.entries import Entry
from fxdelta.core.errors import ConfigError, StateError
from fxdelta.sites.base import HookedSite, SiteKind, entry_ids

_MASK_NAMES = ("attention_mask", "mask")  # T5 calls it ``mask``


def widen_mask(mask: Any, length: int) -> Any:
    """Give a 4D mask (B, H, Q, K) ``length`` "attend" columns in front; None and dicts of masks too."""
    if mask is None:
        return None
    if isinstance(mask, dict):
        return {k: widen_mask(m, length) for k, m in mask.items()}
    fill = True if mask.dtype == torch.bool else 0.0
    pad = torch.full((*mask.shape[:-1], length), fill, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


class PrefixDelta(Protocol):
    """What these sites need of a prefix delta module (``fxdelta.methods.prefix``)."""

    length: int  # P

    def __call__(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def prefix_encoder(self) -> Any: ...  # the shared MLP to refresh per forward, or None


def _cache_parameter(module: nn.Module) -> str | None:
    from fxdelta.sites.hf import cache_parameter  # imports transformers: only once a prefix is planned

    return cache_parameter(module)


def _deltas(entries: Sequence[Entry]) -> list[PrefixDelta]:
    return [cast(PrefixDelta, e.delta) for e in entries]


class PrefixAttentionSite(HookedSite):
    kind = SiteKind.PREFIX

    def __init__(self, path: str, module: nn.Module, entries: Sequence[Entry], geometry: Any) -> None:
        super().__init__(path, module, list(entries))
        self.geometry = geometry  # fxdelta.methods.prefix_probe.AttentionGeometry
        self.length = sum(d.length for d in _deltas(self.entries))
        self._signature = inspect.signature(module.forward)
        self._mask_name = next((n for n in _MASK_NAMES if n in self._signature.parameters), None)
        self._cache = _cache_parameter(module)  # None when its attention function is intercepted instead
        self._restore: Any = None  # undoes an interception

    @property
    def key(self) -> tuple:
        return (PrefixAttentionSite, self.path, entry_ids(self.entries))

    def kv(self, layer_idx: int | None, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # each (B, heads, P_i, head_dim), in the attention's dtype whatever the delta's
        parts = [(k.to(key.dtype), v.to(value.dtype)) for k, v in (d(key, value) for d in _deltas(self.entries))]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([k for k, _ in parts], dim=-2), torch.cat([v for _, v in parts], dim=-2)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        from fxdelta.sites.hf import PrefixView, cache_in, put_cache

        args, kw = by_name(self._signature, args, kwargs, keep_first=True)
        if cache_in(kw) is None and self._cache is not None:
            put_cache(kw, self._cache, PrefixView(None, self))
            if not self.geometry.causal and self._mask_name:
                kw[self._mask_name] = widen_mask(kw.get(self._mask_name), self.length)
        return args, kw

    def _intercepted(self, key, value, mask):
        pk, pv = self.kv(None, key, value)
        return torch.cat([pk, key], dim=-2), torch.cat([pv, value], dim=-2), widen_mask(mask, self.length)

    def install(self) -> None:
        if self.geometry.uses_cache:
            super().install()
        elif self._restore is None:
            from fxdelta.sites.hf import intercept

            self._restore = intercept(self.module, self._intercepted)

    def _register(self) -> list[Any]:
        return [self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)]

    def _cleared(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def describe(self) -> str:
        how = (
            "a cache view when it gets no cache" if self.geometry.uses_cache else "its attention function, intercepted"
        )
        return (
            f"prefix on {self.path} ({type(self.module).__name__}): {self.length} keys/values in front, "
            f"through {how}; deltas: {[e.qualified_name for e in self.entries]}"
        )


class PrefixStackSite(HookedSite):
    kind = SiteKind.PREFIX_STACK

    def __init__(
        self, path: str, stack: nn.Module, layers: Mapping[int, PrefixAttentionSite], encoder_decoder: bool
    ) -> None:
        super().__init__(path, stack, [])  # holds no delta itself: the attention sites do
        self.layers, self.encoder_decoder = dict(layers), encoder_decoder
        self.length = next(iter(self.layers.values())).length
        self._signature = inspect.signature(stack.forward)
        cache = _cache_parameter(stack)
        if cache is None:  # the probe picked this stack because it takes a cache
            raise StateError(f"fxdelta: the prefixed stack {path} takes no KV cache argument")
        self._cache = cache

    @property
    def key(self) -> tuple:
        return (PrefixStackSite, self.path, tuple(sorted((i, s.key) for i, s in self.layers.items())))

    def kv(self, layer_idx: int | None, key: torch.Tensor, value: torch.Tensor):
        if layer_idx is None:  # transformers' causal attentions always pass their layer index
            raise StateError(
                f"fxdelta: a layer of the prefixed stack {self.path} updated its cache without a layer_idx"
            )
        return self.layers[layer_idx].kv(layer_idx, key, value)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        from fxdelta.sites.hf import cache_in, make_view, new_cache, put_cache

        args, kw = by_name(self._signature, args, kwargs, keep_first=True)
        real = cache_in(kw)
        use_cache = kw.get("use_cache")
        if use_cache is None:
            use_cache = getattr(module.config, "use_cache", False)
        if real is None and use_cache:
            real = new_cache(module.config, self.encoder_decoder)  # the one the stack would have made
        view: Any = make_view(real, self, self.encoder_decoder)
        view.fxdelta_real = real
        put_cache(kw, self._cache, view)
        mask = kw.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:  # (B, T): P attending tokens in front
            ones = torch.ones(mask.shape[0], self.length, dtype=mask.dtype, device=mask.device)
            kw["attention_mask"] = torch.cat([ones, mask], dim=1)
        elif mask is not None:  # 4D masks, or a dict of them, made by the caller (e.g. generate())
            kw["attention_mask"] = widen_mask(mask, self.length)
        if kw.get("position_ids") is not None:  # explicit positions count real tokens: the prefix comes first
            kw["position_ids"] = kw["position_ids"] + self.length
        return args, kw

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any):
        from fxdelta.sites.hf import cache_in, replace_returned

        view = cache_in(kwargs)
        if view is None:
            return out
        return replace_returned(out, view, cast(Any, view).fxdelta_real)  # the caller never sees the view

    def _register(self) -> list[Any]:
        return [
            self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            self.module.register_forward_hook(self._hook, with_kwargs=True),
        ]

    def describe(self) -> str:
        return (
            f"prefix stack {self.path or '<root>'}: cache viewed with {self.length} prefix positions per layer, "
            f"2D mask widened, explicit position_ids shifted"
        )


class PrefixRefreshSite(HookedSite):
    """Reparameterized prefixes: recomputed from their MLP at the start of every backbone forward."""

    kind = SiteKind.PREFIX_REFRESH

    def __init__(self, backbone: nn.Module, encoders: Sequence[Any]) -> None:
        super().__init__("", backbone, [])
        self.encoders = list(encoders)

    @property
    def key(self) -> tuple:
        return (PrefixRefreshSite, tuple(id(e) for e in self.encoders))

    def _reset(self, module: nn.Module, args: tuple) -> None:
        for encoder in self.encoders:
            encoder.reset()

    def _register(self) -> list[Any]:
        return [self.module.register_forward_pre_hook(self._reset)]

    def describe(self) -> str:
        return f"refreshes {len(self.encoders)} prefix MLP(s) at each backbone forward"


def plan_prefix(backbone: nn.Module, entries: Sequence[Entry]) -> list[HookedSite]:
    """The prefix sites for ``entries`` (prefix tuning's ``Method.plan_sites``)."""
    modules = dict(backbone.named_modules())
    by_target: dict[str, list[Entry]] = {}
    for e in entries:
        by_target.setdefault(e.target, []).append(e)
    attention = {t: PrefixAttentionSite(t, modules[t], es, es[0].probed) for t, es in by_target.items()}
    sites: list[HookedSite] = list(attention.values())
    stacks: dict[str, dict[int, PrefixAttentionSite]] = {}
    for site in attention.values():
        g = site.geometry
        if g.causal and g.layer_idx is None:  # the probe refuses these: the index ties a prefix to its cache layer
            raise ConfigError(
                f"{site.path} stores keys and values in {g.stack}'s cache without a layer index, so fxdelta "
                f"cannot tell which layer its prefix belongs to"
            )
        if g.causal:
            stacks.setdefault(g.stack, {})[g.layer_idx] = site
    for stack, layers in stacks.items():
        g = next(iter(layers.values())).geometry
        missing = sorted(g.stack_layers - set(layers))
        lengths = {s.length for s in layers.values()}
        if missing or len(lengths) > 1:
            raise ConfigError(
                f"prefixes on the causal stack {stack} must cover all of its {len(g.stack_layers)} "
                f"self-attention layers "
                f"with one length (its layers share one attention mask); "
                + (f"layers {missing} have none" if missing else f"lengths differ: {sorted(lengths)}")
            )
        sites.append(PrefixStackSite(stack, modules[stack], layers, g.encoder_decoder))
    encoders = {id(enc): enc for d in _deltas(entries) if (enc := d.prefix_encoder()) is not None}
    if encoders:
        sites.append(PrefixRefreshSite(backbone, list(encoders.values())))
    return sites
