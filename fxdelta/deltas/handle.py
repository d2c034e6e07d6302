"""The handle: one delta on one backbone, and what attach/detach must keep true.

A handle is not an ``nn.Module`` and is not called: the backbone is. It has the compiler build its
delta modules (``fxdelta.compiler.build``) and attach them (``fxdelta.compiler.install``); it owns its
config and entries, attach/detach (with its own task-head copy, ``heads.py``, and the exact write-back
of a merge, ``merge_record.py``), its parameter queries (``scope.py``) and freezing (``freeze.py``).
What users do with a delta beyond that (save, load, merge, hot-swap, log) lives in the feature wings;
the user's class, ``fxdelta.DeltaModel`` (``fxdelta.opendelta.model``), reaches them in one call each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from fxdelta.compiler.build import build_entries
from fxdelta.compiler.install import apply, match_backbone
from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import ConfigError, FxDeltaError, UnsupportedModelError
from fxdelta.core.paths import backbone_module_names
from fxdelta.deltas import freeze, heads, meta
from fxdelta.deltas.merge_record import Merged, refuse_attach, unmerge
from fxdelta.deltas.scope import BackboneScope
from fxdelta.methods.registry import method_for
from fxdelta.spec.config import DEFAULT_UNFROZEN, DeltaConfig
from fxdelta.spec.heads import task_heads
from fxdelta.spec.method import Method
from fxdelta.spec.structure import common_selectors


class Handle(BackboneScope):
    """One delta (one method, one config) on one backbone: built (and attached) on construction.

    ``config`` or the config's fields as keyword arguments (a method's class sets ``config_class``);
    ``example_inputs`` overrides the generated example the backbone is observed with;
    ``hooks_only=True`` uses the hook fallback everywhere (slower; for checks and debugging).
    """

    config_class: ClassVar[type[DeltaConfig] | None] = None  # set by each method's class (opendelta/classes.py)
    merge_record: Merged | None = None  # while merged into the backbone's weights (the merge wing)

    def __init__(
        self,
        backbone_model: nn.Module,
        config: DeltaConfig | None = None,
        *,
        example_inputs: Any = None,
        hooks_only: bool = False,
        attach: bool = True,
        **hyper_parameters: Any,
    ) -> None:
        if not isinstance(backbone_model, nn.Module):
            raise UnsupportedModelError(
                f"backbone_model must be a torch.nn.Module, got {type(backbone_model).__name__}"
            )
        self.config = self._make_config(config, hyper_parameters)
        self.method: Method = method_for(self.config.delta_type)
        self.backbone = backbone_model
        self.state = BackboneState.ensure(backbone_model)
        try:
            self.name = self.state.unique_name(self.config.name or self.config.delta_type)
            built = build_entries(
                self.state, self.method, self.config, self.name, example_inputs=example_inputs, hooks_only=hooks_only
            )
            self.targets, self.sources, self.entries = built.targets, built.sources, built.entries
            self.state.handles.append(self)
            self.unfrozen: list[str] = []  # backbone parameters freeze_module() left trainable
            self._trims_state_dict = False  # freeze_module(set_state_dict=True), in effect while attached
            self._state_dict_hook: Any = None
            self.heads: heads.HeadSet | None = None  # this delta's own task-head parameters (deltas/heads.py)
            self.attached = False
            meta.noted_at_build(self)  # built on the meta device: reset_deltas gives it values later
            self._built()
            if attach:
                self.attach()
        except BaseException:
            self.state.forget(self)
            raise

    def _built(self) -> None:
        """Called once the delta is built, before it attaches, inside the guard that undoes a failed construction:
        a face adds what it offers on the backbone here (registering its undo on ``state.on_drop``)."""

    @property
    def delta_type(self) -> str:
        return self.config.delta_type

    @property
    def merged(self) -> bool:
        """Whether the delta is folded into the backbone's weights (``merge_into_backbone``)."""
        return self.merge_record is not None

    # -- construction -----------------------------------------------------------------------------
    def _make_config(self, config: DeltaConfig | None, hyper: dict[str, Any]) -> DeltaConfig:
        cls = self.config_class
        if config is not None:
            if hyper:
                raise ConfigError(f"pass either a config or keyword hyper-parameters, not both (got {sorted(hyper)})")
            if not isinstance(config, DeltaConfig) or (cls is not None and not isinstance(config, cls)):
                expected = cls.__name__ if cls else "a DeltaConfig"
                raise ConfigError(f"{type(self).__name__} needs {expected}, got {type(config).__name__}")
            return config
        if cls is None:
            raise ConfigError(
                "DeltaModel needs a config; use AutoDeltaModel.from_config or a method class such as LoraModel"
            )
        return cls.from_kwargs(hyper)

    # -- attach / detach --------------------------------------------------------------------------
    def attach(self, module: nn.Module | None = None) -> Handle:
        """Put the delta back into the backbone's computation (idempotent). ``module``, if given, must be
        the backbone: a delta is built for, and lives on, one backbone."""
        self._backbone_or(module, "attach")
        refuse_attach(self)
        if not self.attached:
            meta.refuse_attach(self)
            match_backbone(self.backbone, self.entries)
            others = [e for e in self.state.active if e.name != self.name]
            apply(self.state, others + self.entries)
            try:
                with self.state.gate.changing():  # no forward sees a half-swapped head
                    self.heads = heads.on_attach(self.state, self.heads, self._attached_heads())
            except BaseException:
                apply(self.state, others)
                raise
            self.attached = True
            self.sync_state_dict_hook()
        return self

    def detach(self, module: nn.Module | None = None) -> Handle:
        """Take the delta out: the backbone computes exactly what it did before (idempotent; a delta merged into
        the weights is unmerged: the weights it overwrote are written back)."""
        self._backbone_or(module, "detach")
        in_use = self.attached or self.merged
        unmerge([self], attach=False)
        if self.attached:
            apply(self.state, [e for e in self.state.active if e.name != self.name])
            self.attached = False
        if in_use:  # a merged delta's head stayed in, with the merged weights it was trained with
            with self.state.gate.changing():
                heads.on_detach(self.state, self.heads, self._attached_heads())
            self.sync_state_dict_hook()  # the bare backbone's state_dict is whole again
        return self

    def _attached_heads(self) -> list[heads.HeadSet | None]:
        handles = [h for h in self.state.handles if isinstance(h, Handle) and h is not self]
        return [h.heads for h in handles if h.attached or h.merged]

    def sync_state_dict_hook(self) -> None:
        wanted = self._trims_state_dict and self.attached
        if wanted and self._state_dict_hook is None:
            self._state_dict_hook = freeze.keep_trainable_in_state_dict(self.backbone)
        elif not wanted and self._state_dict_hook is not None:
            self._state_dict_hook.remove()
            self._state_dict_hook = None

    # -- parameters -------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This delta's parameters, by their backbone state_dict names (whether attached or not)."""
        for e in self.entries:
            for name, p in e.delta.named_parameters():
                yield f"{e.qualified_name}.{name}", p

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of this delta (parameters and buffers, e.g. a frozen PHM rule), by backbone name."""
        return {f"{e.qualified_name}.{k}": v for e in self.entries for k, v in e.delta.state_dict().items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise FxDeltaError(f"a delta model is not called; call the backbone ({type(self.backbone).__name__})")

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"{type(self).__name__}(name={self.name!r}, {state}, targets={len(self.targets)}, "
            f"parameters={self.num_parameters():,})"
        )

    # -- freezing -------------------------------------------------------------------------------
    def freeze_module(
        self,
        module: nn.Module | None = None,
        exclude: Sequence[str] | None = None,
        set_state_dict: bool = True,
    ) -> Handle:
        """Freeze ``module`` (default: the backbone) except ``exclude`` (default: ``config.unfrozen_modules``,
        i.e. the deltas, and the task heads of a ``*For<Task>`` model: ``fxdelta.spec.heads``).

        ``exclude`` uses the module-selector grammar on module and parameter names: ``"deltas"``
        keeps every attached delta trainable, ``"layernorm_embedding"`` that module's parameters; a
        name the model lacks is read as a common-structure name (``layer_norm``), and one that still
        matches nothing is a warning. With ``set_state_dict=True`` (the default) the backbone's
        ``state_dict()`` then holds only trainable tensors, while this delta is attached; ``False``
        gives back the whole state_dict. Backbone parameters left trainable are saved by ``save_finetuned``.
        An ``exclude`` given that freezes a task head is a warning naming it.
        """
        within = self._backbone_or(module, "freeze_module")
        heads = task_heads(self.backbone) if within is self.backbone else []
        patterns = self.config.unfrozen_modules if exclude is None else exclude
        default = exclude is None and tuple(patterns) == DEFAULT_UNFROZEN
        if default:  # the task heads train with the deltas (and are saved with them)
            patterns = [*patterns, *("re:" + re.escape(h) for h in heads)]
        names = backbone_module_names(within)
        expand = partial(common_selectors, self.backbone)
        self.unfrozen = freeze.freeze(self.backbone, patterns, names, within=within, expand=expand)
        if not default:
            freeze.warn_frozen_heads(self.backbone, heads)
        self._trims_state_dict = set_state_dict
        self.sync_state_dict_hook()
        return self


def discard(handle: Handle) -> None:
    """Detach ``handle`` and forget it (used to undo a partial compile or load)."""
    handle.detach()
    state = BackboneState.find(handle.backbone)
    if state is not None:
        state.forget(handle)
