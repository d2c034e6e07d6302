"""The function face: ``compile`` a spec onto a backbone, and one call into a feature wing for everything else
(``formats``: save/load; ``merge``; ``lifecycle``: hot-swap, reset; ``inspect``), each through DDP / FSDP /
``torch.compile`` wrappers. Delta models are built with the OpenDelta face's classes (``LoraModel``, ...)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.engines import refuse_wrapped, unwrap
from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import ConfigError
from fxdelta.core.precision import dtype_name
from fxdelta.deltas.handle import discard
from fxdelta.deltas.merge_record import MergeReport
from fxdelta.formats import save as saving
from fxdelta.formats.load import load_deltas
from fxdelta.inspect import graphs
from fxdelta.lifecycle import hotswap as swapping
from fxdelta.lifecycle.reset import reset_deltas as _reset
from fxdelta.merge import whole_model
from fxdelta.methods.registry import config_from_dict
from fxdelta.opendelta.classes import model_class_for
from fxdelta.opendelta.model import DeltaModel
from fxdelta.spec.config import DEFAULT_UNFROZEN, DeltaConfig

Spec = DeltaConfig | Mapping[str, Any] | Sequence[DeltaConfig | Mapping[str, Any]] | str | os.PathLike


def _configs(spec: Spec) -> list[DeltaConfig]:
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"delta spec file {str(path)!r} does not exist")
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"delta spec file {str(path)!r} is not valid JSON: {e}") from e
    if isinstance(spec, (DeltaConfig, Mapping)):
        spec = [spec]
    if not isinstance(spec, Sequence) or not spec:
        raise ConfigError(
            "a delta spec is a dict (one delta), a non-empty list of dicts, or a path to a JSON file of either"
        )
    return [s if isinstance(s, DeltaConfig) else config_from_dict(s) for s in spec]


def _with_dtype(configs: list[DeltaConfig], delta_dtype: str | torch.dtype | None) -> list[DeltaConfig]:
    if delta_dtype is None:
        return configs
    wanted = dtype_name("fxdelta.compile", delta_dtype)  # checked, and named as configs record it
    for c in configs:
        if c.delta_dtype not in (None, wanted):
            raise ConfigError(
                f"compile(delta_dtype={wanted!r}) and the {c.delta_type} delta's own delta_dtype={c.delta_dtype!r} "
                f"disagree; give one of them"
            )
    return [c.replace(delta_dtype=wanted) for c in configs]


def compile(
    backbone: nn.Module,
    spec: Spec,
    *,
    freeze: bool = True,
    example_inputs: Any = None,
    hooks_only: bool = False,
    delta_dtype: str | torch.dtype | None = None,
) -> nn.Module:
    """Patch ``backbone`` in place with the deltas of ``spec`` and return it.

    ``spec``: one delta's dict (the keys of ``AutoDeltaConfig.from_dict``), a list of them, a
    config object, or the path of a JSON file holding either. All deltas attach, or none do.
    ``freeze=True`` then freezes the backbone except the deltas' ``unfrozen_modules`` (by default every
    delta, and the task head of a ``*For<Task>`` model), as ``freeze_module(set_state_dict=False)`` does;
    the state_dict stays whole. ``freeze=False`` leaves every parameter as it was.
    The delta models are available from ``fxdelta.delta_models(backbone)``. A DataParallel or
    ``torch.compile`` wrapper is looked through (the model inside is patched); a model that DDP or FSDP
    already wraps or shards is refused (``UnsupportedModelError``): compile first, then wrap.
    ``delta_dtype`` sets ``DeltaConfig.delta_dtype`` for every delta of ``spec`` that leaves it unset
    (default: float32 deltas on float16/bfloat16 modules, the module's own dtype elsewhere).
    """
    configs = _with_dtype(_configs(spec), delta_dtype)
    refuse_wrapped(backbone)  # a DDP / FSDP wrapper would not synchronize deltas added inside it
    outer, backbone = backbone, unwrap(backbone)
    handles: list[DeltaModel] = []
    try:
        for config in configs:
            cls = model_class_for(config.delta_type)
            handles.append(cls(backbone, config, example_inputs=example_inputs, hooks_only=hooks_only, attach=False))
        for handle in handles:
            handle.attach()
        if freeze and handles:
            keep = list(dict.fromkeys(p for c in configs for p in c.unfrozen_modules))
            exclude = None if tuple(keep) == DEFAULT_UNFROZEN else keep  # the default keeps task heads too
            handles[0].freeze_module(exclude=exclude, set_state_dict=False)  # it saves what it leaves trainable
    except BaseException:
        for handle in handles:
            discard(handle)
        raise
    return outer


def delta_models(backbone: nn.Module) -> dict[str, DeltaModel]:
    """Every delta model created on ``backbone`` (attached or not; through a DDP, FSDP or ``torch.compile``
    wrapper), by name."""
    state = BackboneState.find(unwrap(backbone))
    return {h.name: h for h in state.handles if isinstance(h, DeltaModel)} if state else {}


def save(backbone: nn.Module, directory: str | os.PathLike, *, format: str = "fxdelta") -> None:
    """Write one checkpoint folder holding every attached delta of ``backbone`` (or of the model a wrapper holds).
    ``format="peft"``: a PEFT adapter folder (which holds one delta)."""
    backbone = unwrap(backbone)
    saving.save(backbone, BackboneState.find(backbone), directory, format)


def load(backbone: nn.Module, directory: str | os.PathLike, **options: Any) -> nn.Module:
    """Attach every delta saved in ``directory`` to ``backbone`` (or the model a wrapper holds; all or none)
    and return ``backbone``. ``directory`` may also be a PEFT adapter folder (``adapter_config.json``).
    Like ``compile``, it refuses a model DDP or FSDP already wraps: load, then wrap."""
    refuse_wrapped(backbone)
    load_deltas(directory, unwrap(backbone), model_class_for, **options)
    return backbone


def hotswap(backbone: nn.Module, source: str | os.PathLike | DeltaModel, *, name: str | None = None) -> DeltaModel:
    """Copy ``source`` (a checkpoint folder, fxdelta's or PEFT's, or a delta model) into the tensors of the attached
    delta ``name`` (default: the only attached one) in place, and return that delta model. It must be the same
    delta in all but its values (method, config, targets, shapes); a ``torch.compile``-d backbone then runs it
    with no recompile, where attaching another delta compiles once per delta. Checked before anything changes."""
    models = delta_models(backbone)
    return models[swapping.named(models, name)].hotswap(source)


def reset_deltas(backbone: nn.Module) -> list[str]:
    """Initialise every delta of ``backbone`` (attached or not; through a wrapper) again, as compile does on the
    weights it holds now, and return their names. Call it after materialising a backbone the deltas were compiled
    onto on the ``meta`` device (``to_empty`` + ``load_state_dict``, or ``load_state_dict(assign=True)``): DoRA's
    magnitudes and soft prompts drawn from the vocabulary then come from the real weights, task-head copies from
    the real head, and random inits from torch's global generator in compile's order (seed first for the deltas
    compile would give). Parameters that can hold the values keep their identity; those on ``meta`` are replaced."""
    return _reset(unwrap(backbone))


def show_graph(backbone: nn.Module, path: str, *, file: Any = None) -> None:
    """Print the rewritten fx graph (code and node list) of the site carrying the delta on ``path``."""
    graphs.show_graph(unwrap(backbone), path, file=file)


def merge(backbone: nn.Module) -> MergeReport:
    """Fold every attached delta that can fold (LoRA, DoRA, IA3, BitFit) into ``backbone``'s weights (through a
    wrapper) and take its sites out; the others stay attached, with a warning. Each merge runs the sites it
    changes on probe inputs before and after, and is refused (a ``MergeError``, nothing changed) above its
    dtype's bound; the returned report holds each site's max abs error. ``fxdelta.unmerge`` undoes it exactly."""
    backbone = unwrap(backbone)
    return whole_model.merge_all(backbone, list(delta_models(backbone).values()))


def unmerge(backbone: nn.Module) -> list[str]:
    """Write back, bit for bit, the weights every merge into ``backbone`` overwrote, and attach those deltas
    again; returns their names (latest merge first)."""
    backbone = unwrap(backbone)
    return whole_model.unmerge_all(backbone, list(delta_models(backbone).values()))


def merge_and_unload(backbone: nn.Module) -> nn.Module:
    """Merge every attached delta for good and remove all of fxdelta from ``backbone`` (sites, hooks, state, the
    delta models): a plain model with the deltas in its weights is left, and returned. Refused while a delta
    that cannot fold is attached (detach it first)."""
    inner = unwrap(backbone)
    whole_model.merge_and_unload(inner, list(delta_models(inner).values()))
    return backbone
