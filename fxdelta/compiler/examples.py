"""Example inputs: what fxdelta feeds the backbone (as FakeTensors) to learn shapes and call patterns.

Users may pass their own (a tensor, a tuple of positional arguments, or a dict of keyword
arguments). Otherwise one is generated: from the config of a Hugging Face model; for a module that
wraps such models (and may have no forward of its own), one for each outermost of them, run on its
own; else from the first parameterised layer of a plain torch model. Tensors are tiny; they are converted to
FakeTensors before the backbone sees them, so no real compute happens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxdelta.core.errors import UnsupportedModelError

_SEQ_LEN = 8


@dataclass(frozen=True)
class Example:
    """Positional and keyword arguments for one call of the backbone, or, for a backbone that wraps
    transformers models (``parts``), one call of each of them on its own example."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    parts: tuple[tuple[str, Example], ...] = ()  # (path of an inner model, its example)

    def calls(self, backbone: nn.Module) -> list[tuple[nn.Module, Example]]:
        """The (module, example) calls that observe ``backbone``."""
        if not self.parts:
            return [(backbone, self)]
        return [(backbone.get_submodule(path), part) for path, part in self.parts]

    @classmethod
    def coerce(cls, value: Any) -> Example:
        if isinstance(value, Example):
            return value
        if isinstance(value, torch.Tensor):
            return cls(args=(value,))
        if isinstance(value, dict):
            return cls(kwargs=dict(value))
        if isinstance(value, (tuple, list)):
            return cls(args=tuple(value))
        raise UnsupportedModelError(
            f"example_inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
            f"arguments, got {type(value).__name__}"
        )


def example_for(backbone: nn.Module, given: Any = None) -> Example:
    """The example to observe ``backbone`` with: ``given`` if set, else the backbone's own
    ``dummy_inputs`` attribute (OpenDelta's way to pass one), else a generated one."""
    if given is not None:
        return Example.coerce(given)
    dummy = backbone.__dict__.get("dummy_inputs", getattr(type(backbone), "dummy_inputs", None))
    if dummy is not None and not isinstance(dummy, property):  # transformers' own property: its dummies
        return Example.coerce(dummy)
    if _is_hf_model(backbone):
        return _hf_example(backbone, backbone.config)
    inner = _outermost_hf_models(backbone)
    if inner:  # a user's wrapper (or a container without a forward): each model on its own example
        return Example(parts=tuple((path, example_for(m)) for path, m in inner))
    return _torch_example(backbone)


def _is_hf_model(module: nn.Module) -> bool:
    return hasattr(getattr(module, "config", None), "model_type")


def _outermost_hf_models(backbone: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    found = []
    for name, child in backbone.named_children():
        path = f"{prefix}{name}"
        found += [(path, child)] if _is_hf_model(child) else _outermost_hf_models(child, f"{path}.")
    return found


def _device_of(backbone: nn.Module) -> torch.device:
    for p in backbone.parameters():
        return p.device
    return torch.device("cpu")


def _hf_example(backbone: nn.Module, config: Any) -> Example:
    device = _device_of(backbone)
    main = getattr(backbone, "main_input_name", "input_ids")
    params = inspect.signature(backbone.forward).parameters
    kwargs: dict[str, Any] = {}
    if main == "input_ids":
        seq = _SEQ_LEN
        for limit in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(config, limit, None), int):
                seq = min(seq, getattr(config, limit))
        vocab = getattr(config, "vocab_size", None) or 2
        ids = torch.arange(1, seq + 1, device=device).remainder(vocab).unsqueeze(0)  # (1, T)
        kwargs["input_ids"] = ids
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            kwargs["decoder_input_ids"] = ids.clone()
    elif main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        channels = getattr(config, "num_channels", 3)
        kwargs["pixel_values"] = torch.zeros(1, channels, *size, device=device)  # (1, C, H, W)
    else:
        raise UnsupportedModelError(
            f"{type(backbone).__name__} takes {main!r} as its main input, for which fxdelta cannot make "
            f"an example; pass example_inputs=... (a dict of keyword arguments for one forward call)"
        )
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return Example(kwargs=kwargs)


def _torch_example(backbone: nn.Module) -> Example:
    """Guess an input from the first layer that holds parameters (Linear, Conv, Embedding, MHA, LayerNorm)."""
    device = _device_of(backbone)
    for module in backbone.modules():
        if isinstance(module, nn.Linear):
            return Example(args=(torch.zeros(2, module.in_features, device=device),))
        if isinstance(module, nn.Conv1d):
            return Example(args=(torch.zeros(2, module.in_channels, 32, device=device),))
        if isinstance(module, nn.Conv2d):
            return Example(args=(torch.zeros(2, module.in_channels, 32, 32, device=device),))
        if isinstance(module, nn.Embedding):
            return Example(args=(torch.zeros(2, _SEQ_LEN, dtype=torch.long, device=device),))
        if isinstance(module, nn.MultiheadAttention):
            return Example(args=(torch.zeros(2, _SEQ_LEN, module.embed_dim, device=device),))
        if isinstance(module, nn.LayerNorm):
            return Example(args=(torch.zeros(2, *module.normalized_shape, device=device),))
        if any(True for _ in module.parameters(recurse=False)):
            break
    raise UnsupportedModelError(
        f"fxdelta cannot guess an input for {type(backbone).__name__}; pass example_inputs=... "
        f"(a tensor, a tuple of positional arguments or a dict of keyword arguments)"
    )
