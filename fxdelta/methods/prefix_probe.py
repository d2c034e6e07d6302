"""What a prefix must look like at each targeted attention, learned from a FakeTensor run.

For each attention: the heads and head sizes of the keys/values it attends to (after RoPE and
grouped-query sharing: exactly what its cache stores), its ``layer_idx``, whether it takes a cache
argument or must be intercepted at its attention function, and whether it is causal. For causal
attentions, also the stack whose cache and mask they share (the first ancestor above their layer
that takes a KV cache and ``attention_mask``) and every layer index that stack's cache
serves: a prefix must cover them all, since all layers share one widened mask.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fxdelta.compiler.examples import Example
from fxdelta.compiler.observe import Undo, run_on_fakes
from fxdelta.core.calls import by_name
from fxdelta.core.errors import SelectorError, UnsupportedModelError
from fxdelta.core.paths import parent_paths


@dataclass(frozen=True)
class AttentionGeometry:
    heads: int
    head_dim: int
    v_dim: int
    layer_idx: int | None
    uses_cache: bool  # forward takes a KV cache; else its attention function is intercepted
    causal: bool
    stack: str | None = None  # causal attentions: the module whose cache and mask the layers share
    stack_layers: frozenset[int] = field(default_factory=frozenset)
    encoder_decoder: bool = False  # the stack is the decoder of an encoder-decoder


class _Recorder:
    """A prefix source of length 0 that notes what each layer stores."""

    length = 0

    def __init__(self) -> None:
        self.seen: dict[int | None, tuple[int, int, int]] = {}

    def kv(self, layer_idx, key, value):
        self.seen[layer_idx] = (key.shape[1], key.shape[-1], value.shape[-1])
        return None


def _takes_mask(module: nn.Module) -> bool:
    try:
        return "attention_mask" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def find_stack(backbone: nn.Module, path: str) -> str | None:
    """The first ancestor above the attention's layer that takes a KV cache and ``attention_mask``."""
    from fxdelta.sites.hf import cache_parameter, is_layer

    seen_layer = False
    for ancestor in parent_paths(path):
        module = backbone.get_submodule(ancestor)
        if is_layer(module):
            seen_layer = True
        elif seen_layer and hasattr(module, "config") and cache_parameter(module) and _takes_mask(module):
            return ancestor
    return None


def probe_attention(backbone: nn.Module, example: Example, paths: list[str]) -> dict[str, AttentionGeometry]:
    """Each targeted attention's geometry (prefix tuning's ``Method.probe``)."""
    from fxdelta.sites.hf import cache_in, cache_parameter, intercept, is_causal, make_view, put_cache, release

    modules = dict(backbone.named_modules())
    recorders = {p: _Recorder() for p in paths}

    def install_targets(undo: list[Undo]) -> None:
        for path in paths:
            module, rec = modules[path], recorders[path]
            name = cache_parameter(module)
            if name is not None:
                sig = inspect.signature(module.forward)

                def pre(m, args, kwargs, rec=rec, sig=sig, name=name):
                    args, kw = by_name(sig, args, kwargs, keep_first=True)
                    put_cache(kw, name, make_view(cache_in(kw), rec, False))
                    return args, kw

                undo.append(module.register_forward_pre_hook(pre, with_kwargs=True).remove)
            elif hasattr(module, "config") and hasattr(module.config, "_attn_implementation"):

                def note(k: Any, v: Any, mask: Any, rec: _Recorder = rec) -> tuple[Any, Any, Any]:
                    rec.kv(None, k, v)
                    return k, v, mask

                undo.append(intercept(module, note))

    try:
        run_on_fakes(backbone, example, install_targets)
    except Exception as e:
        raise UnsupportedModelError(
            f"fxdelta could not run the backbone to size the prefixes: {type(e).__name__}: {e}"
        ) from e
    out: dict[str, AttentionGeometry] = {}
    for path in paths:
        seen = recorders[path].seen
        if len(seen) != 1:
            raise SelectorError(
                f"{path} ({type(modules[path]).__name__}) is not a self-attention fxdelta can prefix: it "
                f"{'stores no keys and values' if not seen else 'serves several layers'} when the backbone runs; "
                f"target the self-attention modules (e.g. 'attn.self' positions)"
            )
        ((layer_idx, (heads, head_dim, v_dim)),) = seen.items()
        module = modules[path]
        causal = is_causal(module)
        stack = find_stack(backbone, path) if causal else None
        if causal and stack is None:
            raise UnsupportedModelError(
                f"{path} is a causal attention, but no module above its layer takes a KV cache and an attention "
                f"mask in this transformers release ({release()}), so fxdelta has nowhere to put its prefix"
            )
        if causal and layer_idx is None:  # its keys/values came through its attention function, not a cache
            raise UnsupportedModelError(
                f"{path} ({type(module).__name__}) is a causal attention that takes no KV cache argument fxdelta "
                f"recognises in this transformers release ({release()}): its keys and values reach fxdelta without "
                f"the layer index that ties its prefix to its layer of {stack}'s cache"
            )
        uses_cache = cache_parameter(module) is not None
        out[path] = AttentionGeometry(heads, head_dim, v_dim, layer_idx, uses_cache, causal, stack)
    stacks = sorted({g.stack for g in out.values() if g.stack})
    layers = _stack_layers(backbone, example, stacks) if stacks else {}
    for path, g in out.items():
        if g.stack:
            encdec = bool(getattr(getattr(modules[g.stack], "config", None), "is_encoder_decoder", False))
            out[path] = AttentionGeometry(**{**g.__dict__, "stack_layers": layers[g.stack], "encoder_decoder": encdec})
    return out


def _stack_layers(backbone: nn.Module, example: Example, stacks: list[str]) -> dict[str, frozenset[int]]:
    from fxdelta.sites.hf import cache_in, cache_parameter, make_view, put_cache

    modules = dict(backbone.named_modules())
    recorders = {s: _Recorder() for s in stacks}

    def install(undo: list[Undo]) -> None:
        for stack in stacks:
            module, rec = modules[stack], recorders[stack]
            sig = inspect.signature(module.forward)
            encdec = bool(getattr(getattr(module, "config", None), "is_encoder_decoder", False))
            name = cache_parameter(module)  # the probe found the stack because it takes one

            def pre(m, args, kwargs, rec=rec, sig=sig, encdec=encdec, name=name):
                args, kw = by_name(sig, args, kwargs, keep_first=True)
                put_cache(kw, name, make_view(cache_in(kw), rec, encdec))
                return args, kw

            undo.append(module.register_forward_pre_hook(pre, with_kwargs=True).remove)

    run_on_fakes(backbone, example, install)
    return {s: frozenset(k for k in recorders[s].seen if k is not None) for s in stacks}
