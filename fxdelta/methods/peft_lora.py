"""LoRA and DoRA in PEFT's format (``peft_type`` LORA; DoRA is LORA with ``use_dora``).

The tensors have the same layout on both sides: ``lora_A`` (r, in), ``lora_B`` (out, r), also for
transformers' Conv1D (PEFT's ``fan_in_fan_out`` only changes how PEFT merges; it sets it per layer
from the layer's type), and DoRA's magnitude (out,) is PEFT's ``lora_magnitude_vector``. The scale is
``lora_alpha / r`` on both sides; only the defaults differ (fxdelta's ``lora_alpha`` is 16, PEFT's 8),
so both are always written, and an absent ``lora_alpha`` reads as PEFT's 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import is_linear_like
from fxdelta.spec.peft import PeftFormat, PeftImport, PeftTarget, Tensors, number

PEFT_LORA_ALPHA = 8  # PEFT's default, where a config leaves it out
_NAMES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}

# Fields PEFT's LoraConfig has that fxdelta can express only at these values (any other is refused).
_FIXED: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "use_rslora": (False,),
    "init_lora_weights": (True, False, "gaussian"),  # init only; others (pissa, olora, loftq, ...) change the base
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, [], ""),
    "megatron_config": (None,),
    "loftq_config": ({}, None),
    "use_qalora": (False,),
    "lora_bias": (False,),
}
# Read, whatever their value: the rank, scale and dropout; fan_in_fan_out (PEFT sets it per layer from the
# layer's type and uses it only to merge); names that matter only when megatron / QA-LoRA are on (refused above).
_READS = ("r", "lora_alpha", "lora_dropout", "fan_in_fan_out", "megatron_core", "qalora_group_size")


def _export(with_magnitude: bool):
    def export(
        config: DeltaConfig, backbone: nn.Module, targets: list[PeftTarget]
    ) -> tuple[dict[str, Any], dict[str, Tensors]]:
        c: Any = config
        fields = {
            "r": c.lora_r,
            "lora_alpha": c.lora_alpha,
            "lora_dropout": c.lora_dropout,
            "fan_in_fan_out": any(not isinstance(t.module, nn.Linear) for t in targets),  # GPT-2's Conv1D
            "target_modules": [t.path for t in targets],
            "use_dora": with_magnitude,
            "bias": "none",
            "use_rslora": False,
            "init_lora_weights": True,
        }
        tensors = {t.path: {_NAMES[k]: v for k, v in t.state.items()} for t in targets}
        return fields, tensors

    return export


def _read(with_magnitude: bool):
    wanted = {v: k for k, v in _NAMES.items() if with_magnitude or k != "magnitude"}

    def read(
        config: Mapping[str, Any], backbone: nn.Module, targets: list[str], grouped: dict[str, Tensors]
    ) -> PeftImport:
        r = number(config, "r", 8, (int,))
        modules = dict(backbone.named_modules())
        state = {}
        for path in targets:
            if not is_linear_like(modules[path]):
                raise CheckpointError(
                    f"the PEFT adapter puts LoRA on {path}, a {type(modules[path]).__name__}; fxdelta's LoRA and DoRA "
                    f"patch linear layers only (nn.Linear, transformers Conv1D)"
                )
            got = grouped.get(path, {})
            if set(got) != set(wanted):
                raise CheckpointError(
                    f"the PEFT adapter's tensors for {path} are {sorted(got)}, not {sorted(wanted)}: the file does not "
                    f"match its config"
                )
            state[path] = {wanted[k]: v for k, v in got.items()}
        fields = {
            "lora_r": r,
            "lora_alpha": number(config, "lora_alpha", PEFT_LORA_ALPHA),
            "lora_dropout": number(config, "lora_dropout", 0.0),
        }
        return PeftImport(fields, targets, state)

    return read


def peft_format(with_magnitude: bool) -> PeftFormat:
    """LoRA's format (``with_magnitude=False``) or DoRA's."""
    return PeftFormat(
        peft_type="LORA",
        export=_export(with_magnitude),
        read=_read(with_magnitude),
        tensor_names=tuple(v for k, v in _NAMES.items() if with_magnitude or k != "magnitude"),
        reads=_READS,
        flags={"use_dora": with_magnitude},
        fixed=_FIXED,
    )
