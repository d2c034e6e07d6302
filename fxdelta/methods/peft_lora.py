"""LoRA and DoRA in PEFT's format (``peft_type`` LORA; DoRA is LORA with ``use_dora``).

The tensors have the same layout on both sides: ``lora_A`` (r, in), ``lora_B`` (out, r), also for
transformers' Conv1D (PEFT's ``fan_in_fan_out`` only changes how PEFT merges; it sets it per layer
from the layer's type), and DoRA's magnitude (out,) is PEFT's ``lora_magnitude_vector``. The scale is
``lora_alpha / r`` on both sides; only the defaults differ (fxdelta's ``lora_alpha`` is 16, PEFT's 8),
so both are always written, and an absent ``lora_alpha`` reads as PEFT's 8.

``init_lora_weights`` says how PEFT started the adapter. After training the forward reads only the trained
tensors, so a value whose init sets only the adapter's starting values loads; one whose init also rewrites the
base layer's weight does not (the folder does not hold that weight), and the refusal names PEFT's conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import is_linear_like
from fxdelta.spec.peft import PeftFormat, PeftImport, PeftTarget, Tensors, number, refuse

PEFT_LORA_ALPHA = 8  # PEFT's default, where a config leaves it out
_NAMES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}

# Fields PEFT's LoraConfig has that fxdelta can express only at these values (any other is refused).
_FIXED: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "use_rslora": (False,),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, [], ""),
    "megatron_config": (None,),
    "use_qalora": (False,),
    "lora_bias": (False,),
}
# Read, whatever their value: the rank, scale and dropout; fan_in_fan_out (PEFT sets it per layer from the
# layer's type and uses it only to merge); names that matter only when megatron / QA-LoRA are on (refused above);
# init_lora_weights (checked by _check_init); the sub-configs of PEFT's data-driven inits, which only parameterise
# that init or its preprocessing (peft/tuners/lora/{eva,corda,astra,loraga}.py, LoraLayer.loftq_init): what they
# produce is in the tensors, or in rank_pattern / alpha_pattern (EVA's rank redistribution; fixed above).
_READS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "fan_in_fan_out",
    "megatron_core",
    "qalora_group_size",
    "init_lora_weights",
    "eva_config",
    "corda_config",
    "astra_config",  # PEFT 0.22
    "lora_ga_config",
    "loftq_config",
)

# init_lora_weights as PEFT's LoraLayer.update_layer dispatches it (peft/tuners/lora/layer.py, PEFT 0.21 and 0.22),
# in its order: how a value matches, the value, PEFT's name for the init, and whether that init also rewrites the
# base layer's weight. PEFT refuses any other value ("Unknown initialization"), and so does fxdelta.
INITS: tuple[tuple[str, Any, str, bool], ...] = (
    ("prefix", "pissa", "PiSSA", True),  # pissa_init, also "pissa_niter_<n>": W -= scaling * B0 @ A0 (SVD of W)
    ("prefix", "corda", "CorDA", True),  # corda_init: the same from a context-oriented SVD (preprocess_corda)
    ("prefix", "astra", "Astra", True),  # PEFT 0.22, astra_init: the same from activation eigenvectors
    ("lower", "olora", "OLoRA", True),  # olora_init: the same from W's QR
    ("lower", "mica", "MiCA", False),  # mica_init: B from W's SVD, A = 0; W untouched, LoRA's forward (B frozen)
    ("equal", "loftq", "LoftQ", True),  # loftq_init: W becomes its quantized approximation
    ("equal", "eva", "EVA", False),  # B = 0; A later from activations (initialize_lora_eva_weights)
    ("equal", "orthogonal", "orthogonal", False),  # orthogonal_init: A and B only
    ("equal", "lora_ga", "LoRA-GA", True),  # lora_ga_init: W -= scaling * B0 @ A0 (SVD of a gradient)
    ("equal", "nora", "NoRA", False),  # PEFT 0.22, nora_init: A's columns normalised, B = 0
    ("equal", True, "LoRA's default", False),  # reset_lora_parameters: kaiming A, B = 0
    ("lower", "gaussian", "gaussian", False),  # reset_lora_parameters: normal A, B = 0
    ("equal", False, "none", False),  # nn.Linear's own random init
)
# What PEFT offers instead (PeftModel.save_pretrained; LoraModel.subtract_mutated_init, peft/tuners/lora/model.py).
_CONVERT = (
    "convert it into a plain LoRA adapter with PEFT: save the trained model with save_pretrained(folder, "
    "path_initial_model_for_weight_conversion=<the adapter folder saved before training>), which writes the trained "
    "change as a LoRA adapter of twice the rank on the original base weights, and load that folder"
)
_LOFTQ = (
    "PEFT offers no conversion to plain LoRA for it; its LoftQ recipe (examples/loftq_finetuning) saves the LoftQ base "
    "model with base_model.save_pretrained(...) and the adapter with init_lora_weights=True: load that adapter onto "
    "that base model"
)


def _matches(kind: str, value: Any, known: Any) -> bool:
    if kind == "equal":
        return type(value) is type(known) and value == known
    if not isinstance(value, str):
        return False
    return value.startswith(known) if kind == "prefix" else value.lower() == known


def _check_init(value: Any) -> None:
    """An init that only set the adapter's starting values loads; one that also rewrote the base weights does not."""
    for kind, known, name, rewrites_base in INITS:
        if _matches(kind, value, known):
            if rewrites_base:
                raise refuse(
                    "init_lora_weights",
                    value,
                    f"{name}'s init also rewrites the base weights, which the adapter folder does not hold, so the "
                    f"adapter alone on the original base weights is not the trained model; "
                    + (_LOFTQ if known == "loftq" else _CONVERT),
                )
            return
    known_values = ", ".join(repr(k) + ("..." if kind == "prefix" else "") for kind, k, _, _ in INITS)
    raise refuse("init_lora_weights", value, f"it is none of PEFT's ({known_values})")


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
        _check_init(config.get("init_lora_weights", True))
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
