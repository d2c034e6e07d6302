"""IA3 in PEFT's format (``peft_type`` IA3).

PEFT scales a linear layer's output, ``ia3_l`` (out, 1), or, for its ``feedforward_modules``, the
layer's input, ``ia3_l`` (1, in). fxdelta's IA3 scales a module's output, including the FFN's
activation (``ff.act``, a default position), whose output is the FFN's down projection's input
(``ff.w2``; times the up projection, elementwise, in gated FFNs, so the scaling commutes). So an
fxdelta IA3 on ``ff.act`` is PEFT's feedforward IA3 on the ``ff.w2`` of the same block, both ways,
for the families of the common structure map; any other feedforward module is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from fxdelta.core.errors import CheckpointError
from fxdelta.core.paths import backbone_module_names
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import is_linear_like
from fxdelta.spec.peft import PeftFormat, PeftImport, PeftTarget, Tensors
from fxdelta.spec.selectors import resolve
from fxdelta.spec.structure import common_selectors

NAME = "ia3_l"


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def _ffn_pairs(backbone: nn.Module) -> dict[str, str]:
    """``{ff.act path: ff.w2 path}`` per block of this backbone's families (empty if it has none)."""
    names = backbone_module_names(backbone)
    found = {}
    for position in ("ff.act", "ff.w2"):
        selectors = common_selectors(backbone, position) or ()
        found[position] = sorted({n for s in selectors for n in resolve(names, s)})
    pairs = {}
    for act in found["ff.act"]:
        scores = sorted(((_shared_prefix(act, w), w) for w in found["ff.w2"]), reverse=True)
        if scores and scores[0][0] > 0 and (len(scores) == 1 or scores[1][0] < scores[0][0]):
            pairs[act] = scores[0][1]
    return pairs


def _export(config: DeltaConfig, backbone: nn.Module, targets: list[PeftTarget]) -> tuple[dict[str, Any], dict]:
    pairs = _ffn_pairs(backbone)
    modules = dict(backbone.named_modules())
    tensors: dict[str, Tensors] = {}
    feedforward = []
    for t in targets:
        scale = t.state["ia3_l"]
        if is_linear_like(t.module):
            path, shaped = t.path, scale.reshape(-1, 1)  # (out, 1): PEFT scales the output
        elif t.path in pairs and is_linear_like(modules[pairs[t.path]]):
            path, shaped = pairs[t.path], scale.reshape(1, -1)  # (1, in): the down projection's input
            feedforward.append(path)
        else:
            raise CheckpointError(
                f"PEFT's IA3 scales the output of linear layers, or the input of an FFN's down projection; "
                f"{t.path} is a {type(t.module).__name__} that is neither (nor an FFN activation of a family "
                f"fxdelta knows); save this delta in fxdelta's format"
            )
        if path in tensors:
            raise CheckpointError(
                f"the IA3 delta scales both {path}'s output and, through {t.path}, its input; a PEFT IA3 adapter "
                f"scales one side of each layer"
            )
        tensors[path] = {NAME: shaped}
    chosen = list(tensors)
    fields = {
        "target_modules": chosen,
        "feedforward_modules": feedforward,
        "fan_in_fan_out": any(not isinstance(modules[p], nn.Linear) for p in chosen),  # GPT-2's Conv1D
        "init_ia3_weights": True,
    }
    return fields, tensors


def _is_feedforward(rule: Any, path: str) -> bool:
    """PEFT's rule for ``feedforward_modules``: a regex matching the whole name, or names it ends with."""
    if isinstance(rule, str):
        return re.fullmatch(rule, path) is not None
    if isinstance(rule, list) and all(isinstance(r, str) for r in rule):
        return any(path.endswith(r) for r in rule)
    if rule is None:
        return False
    raise CheckpointError(f"PEFT config field feedforward_modules must be a regex or a list of names, got {rule!r}")


def _read(
    config: Mapping[str, Any], backbone: nn.Module, targets: list[str], grouped: dict[str, Tensors]
) -> PeftImport:
    producers = {w: a for a, w in _ffn_pairs(backbone).items()}
    modules = dict(backbone.named_modules())
    rule = config.get("feedforward_modules")
    chosen, state = [], {}
    for path in targets:
        module = modules[path]
        if set(grouped.get(path, {})) != {NAME}:
            raise CheckpointError(f"{path} has tensors {sorted(grouped.get(path, {}))}, not [{NAME!r}]")
        scale = grouped[path][NAME]
        if not is_linear_like(module):
            raise CheckpointError(
                f"IA3 on {path}, a {type(module).__name__}: fxdelta maps PEFT's IA3 on linear layers only"
            )
        if not _is_feedforward(rule, path):
            chosen.append(path)
            state[path] = {"ia3_l": scale.reshape(-1)}
        elif path in producers:
            chosen.append(producers[path])
            state[producers[path]] = {"ia3_l": scale.reshape(-1)}
        else:
            raise CheckpointError(
                f"{path} is a feedforward module: PEFT scales its input, and fxdelta's IA3 scales module outputs; "
                f"fxdelta maps the input of an FFN's down projection only (the output of its activation: "
                f"{sorted(producers) or 'none on this model'}), so this adapter cannot be loaded"
            )
    return PeftImport({}, chosen, state)


FORMAT = PeftFormat(
    peft_type="IA3",
    export=_export,
    read=_read,
    tensor_names=(NAME,),
    reads=("feedforward_modules", "fan_in_fan_out", "init_ia3_weights"),
)
