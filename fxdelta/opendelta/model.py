"""``DeltaModel``: the class users hold, OpenDelta's delta model, over the handle.

The handle (``fxdelta.deltas.handle.Handle``) keeps what attach/detach must keep true; every other
thing a user does with one delta is a feature wing, reached here in one call each: saving
(``fxdelta.formats``), merging into the weights (``fxdelta.merge``), hot-swapping and folding a
reparameterization (``fxdelta.lifecycle``), and the views (``fxdelta.inspect``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxdelta.deltas.handle import Handle
from fxdelta.deltas.merge_record import MergeReport, unmerge
from fxdelta.formats import pretrained, save
from fxdelta.inspect.graphs import show_graph
from fxdelta.inspect.log import log, rewritten_graphs
from fxdelta.lifecycle.hotswap import swap_in
from fxdelta.lifecycle.reparameterization import fold_reparameterization
from fxdelta.merge.checked import merge_into_backbone


class DeltaModel(Handle):
    """One delta (one method, one config) on one backbone: OpenDelta's delta model.

    ``DeltaModel(backbone, config)`` builds the delta and attaches it. Method classes
    (``LoraModel``, ...) take the config's fields as keyword arguments instead.
    ``example_inputs`` overrides the generated example the backbone is observed with;
    ``hooks_only=True`` uses the hook fallback everywhere (slower; for checks and debugging).
    """

    def _built(self) -> None:
        pretrained.install(self.state)  # save_pretrained (Trainer.save_model) writes the deltas

    def log(
        self,
        module: nn.Module | None = None,
        delta_ratio: bool = True,
        trainable_ratio: bool = True,
        visualization: bool = True,
        cuda_memory: bool = True,
        *,
        file: Any = None,
    ) -> None:
        """Print the collapsed tree of ``module`` (default: the backbone) with the deltas marked
        (``visualization``), one line per delta with its size (``delta_ratio``), the trainable share
        (``trainable_ratio``) and, on machines with CUDA, the memory each device holds (``cuda_memory``)."""
        shown = self._backbone_or(module, "log")
        flags = {"tree": visualization, "deltas": delta_ratio, "trainable": trainable_ratio, "memory": cuda_memory}
        log(self.backbone, self, shown, **flags, file=file)

    def rewritten_graphs(self) -> dict[str, Any]:
        """``{site path: fx.GraphModule}`` for every graph that carries this delta (hook sites omitted)."""
        return rewritten_graphs(self.backbone, self.name)

    def show_graph(self, path: str | None = None, *, file: Any = None) -> None:
        """Print the rewritten code and node list of the site carrying ``path`` (default: the first target)."""
        show_graph(self.backbone, path or self.targets[0], file=file)

    def fold_reparameterization(self) -> DeltaModel:
        """Fold what only serves training into the delta itself (prefix tuning's MLP into its prefixes).

        The outputs stay the same; the config then records ``exported()`` (e.g. ``reparameterize=False``).
        Methods with nothing to fold raise; ``merge_into_backbone`` folds a delta into the weights.
        """
        fold_reparameterization(self)
        return self

    def merge_into_backbone(self) -> MergeReport:
        """Fold this attached delta into its targets' weights and take its sites out (``fxdelta.merge`` does every
        delta). The merge is checked: the sites carrying it run on probe inputs before and after, and a max abs
        error above the dtype's bound is a ``MergeError`` that changes nothing. Returns what was checked
        (``report.max_error``); already merged, returns the first report and changes nothing."""
        return merge_into_backbone(self)

    def unmerge_from_backbone(self) -> DeltaModel:
        """Write back the exact weights the merge overwrote and attach the delta again (a no-op if not merged)."""
        unmerge([self])
        return self

    def hotswap(self, source: str | os.PathLike[str] | Handle) -> DeltaModel:
        """Copy another task's delta (a checkpoint folder or a delta model, same config and shapes) and its task head
        into this delta's tensors, in place: a ``torch.compile``-d backbone runs it without recompiling."""
        swap_in(self, source)
        return self

    def checkpoint_entry(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """This delta's checkpoint record and tensors (its own, its task heads, backbone tensors left trainable)."""
        return save.checkpoint_entry(self)

    def save_finetuned(
        self,
        finetuned_delta_path: str | os.PathLike[str] = "./delta_checkpoints/",
        save_config: bool = True,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        save_function: Any = None,
        push_to_dc: bool = False,
        format: str = "fxdelta",
        **push_options: Any,
    ) -> None:
        """Write a local folder with only this delta's tensors (plus backbone tensors it unfroze) and its config.

        ``state_dict`` gives the tensors to write instead of the live ones (it must hold every key the
        delta saves). fxdelta writes safetensors and always the config (``save_function`` and
        ``save_config=False`` are refused), and saves locally only: ``push_to_dc``/``push_to_hub`` raise.
        ``format="peft"`` writes a PEFT adapter folder instead (``adapter_config.json``, ``adapter_model.safetensors``).
        """
        options = {"save_config": save_config, "save_function": save_function, "push_to_dc": push_to_dc}
        save.save_finetuned(self, finetuned_delta_path, state_dict, format, **options, push_options=push_options)
