"""Verify a change of the backbone's weights: run the sites it touches before and after, on real inputs.

A site is run as its module is called (a traced region's root, or the patched module itself for
opaque and hook sites), on random tensors of the shapes observation recorded for that call (integer
tensors are zeros; an argument that was no tensor is left to its default), in
eval mode (dropout off) without autograd, with fxdelta's own hooks in place and the user's set
aside. The inputs come from a generator of their own, so the user's random streams do not move.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.restore import hooks_set_aside
from fxdelta.compiler.state import BackboneState
from fxdelta.core.errors import MergeError
from fxdelta.core.records import TensorSpec

# The bound on a changed site's max abs error: TOLERANCE units of the output dtype's machine epsilon,
# times its largest value (at least 1): 1.9e-6 in float32, 0.0156 in float16, 0.125 in bfloat16. LoRA
# merges on the tiny test models (BERT, GPT-2, Llama) used 2-12% of it in each of the three dtypes.
TOLERANCE = 16


@dataclass(frozen=True)
class Check:
    """One site run before and after a change: its largest absolute difference, and the bound it must stay under."""

    path: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound  # False for NaN too


def _real(spec: TensorSpec | None, generator: torch.Generator) -> torch.Tensor | None:
    if spec is None:  # not a tensor (an optional argument, a flag): its default
        return None
    if not spec.floating:
        return torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
    return torch.randn(spec.shape, generator=generator).to(dtype=spec.dtype, device=spec.device)


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    """Every tensor of an output (a tensor, tuples/lists of them, dicts such as ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


@contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class Probe:
    """The calls that run ``paths`` (site modules of ``state.backbone``), on inputs fixed once."""

    def __init__(self, state: BackboneState, paths: Iterable[str]) -> None:
        self.state = state
        modules = dict(state.backbone.named_modules())
        generator = torch.Generator().manual_seed(0)
        self.calls: list[tuple[str, nn.Module, tuple, dict[str, Any]]] = []
        for path in dict.fromkeys(paths):
            record = state.records.get(path)
            if record is None:
                raise MergeError(
                    f"fxdelta cannot check the merge at {path or '<root>'}: observation recorded no call of it to run "
                    f"before and after; keep the delta attached"
                )
            args = tuple(_real(s, generator) for s in record.args)
            kwargs = {k: _real(s, generator) for k, s in record.kwargs}
            self.calls.append((path, modules[path], args, kwargs))

    def run(self) -> dict[str, list[torch.Tensor]]:
        """Each site's output tensors, as the backbone computes them now."""
        ours = {i for site in self.state.sites for i in site.hook_ids}
        outputs = {}
        with torch.no_grad():
            for path, module, args, kwargs in self.calls:
                with _eval(module), hooks_set_aside(module, keep=ours):
                    try:
                        out = module(*args, **kwargs)
                    except Exception as e:
                        raise MergeError(
                            f"fxdelta cannot check the merge at {path or '<root>'}: it failed on probe inputs of the "
                            f"observed shapes ({type(e).__name__}: {e}); keep the delta attached"
                        ) from e
                outputs[path] = [t.detach().clone() for t in _tensors(out)]
        return outputs


def _bound(reference: Sequence[torch.Tensor]) -> float:
    floats = [t for t in reference if t.is_floating_point()]
    if not floats:
        return 0.0
    eps = max(torch.finfo(t.dtype).eps for t in floats)
    largest = max((float(t.abs().max()) for t in floats if t.numel()), default=0.0)
    return TOLERANCE * eps * max(1.0, largest)


def _error(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    if len(before) != len(after) or any(a.shape != b.shape for a, b in zip(before, after, strict=True)):
        return float("inf")
    worst = 0.0
    for a, b in zip(before, after, strict=True):
        if a.numel():
            diff = float((a.double() - b.double()).abs().max())
            worst = float("inf") if diff != diff else max(worst, diff)  # NaN: never within the bound
    return worst


def compare(before: dict[str, list[torch.Tensor]], after: dict[str, list[torch.Tensor]]) -> list[Check]:
    """One check per site run: max abs error between its outputs before and after, and its dtype's bound."""
    return [Check(path, _error(ref, after[path]), _bound(ref)) for path, ref in before.items()]
