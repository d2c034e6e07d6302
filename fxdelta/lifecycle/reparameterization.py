"""Folding a reparameterization into the delta itself: what only serves training goes, the outputs stay.

Prefix tuning trains its prefixes through a shared MLP; ``fold_reparameterization()`` replaces the MLP
by the prefixes it computes now, and the config then records ``exported()`` (``reparameterize=False``).
This is not a merge into the backbone's weights (``fxdelta.merge``): the delta stays a delta.
"""

from __future__ import annotations

from fxdelta.compiler.install import apply
from fxdelta.core.errors import FxDeltaError
from fxdelta.deltas.handle import Handle
from fxdelta.methods.registry import METHODS


def fold_reparameterization(handle: Handle) -> None:
    """Fold what only serves training into ``handle``'s delta modules; methods with nothing to fold raise."""
    fold = handle.method.fold_reparameterization
    if fold is None:
        foldable = sorted(m.delta_type for m in METHODS.values() if m.fold_reparameterization is not None)
        raise FxDeltaError(
            f"{handle.config.delta_type} has no reparameterization to fold: only {foldable} train through one "
            f"(to fold a delta into the backbone's weights: merge_into_backbone() or fxdelta.merge(model))"
        )
    for e in handle.entries:
        fold(e.delta)
    handle.config = handle.config.exported()
    if handle.attached:  # the sites that served the folded part go
        apply(handle.state, handle.state.active)
