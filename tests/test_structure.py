"""The common structure map resolves every position on every family, to the modules meant."""

import pytest
from torch import nn

from fxdelta.core.errors import UnsupportedModelError
from fxdelta.spec.method import is_linear_like
from fxdelta.spec.selectors import select
from fxdelta.spec.structure import COMMON_STRUCTURE, default_selectors

from zoo import HF_FAMILIES, ZOO

POSITIONS = ["attn.q", "attn.k", "attn.v", "attn.o", "ff.w1", "ff.w2", "layer_norm", "attn", "ff", "ff.in", "ff.act"]
LAYERS = 2  # every zoo model has 2 layers (per stack)


def expected_count(family: str, position: str) -> int | None:
    """How many modules a position names on the tiny zoo models."""
    if position.startswith("attn"):
        # encoder self-attention + decoder self- and cross-attention for encoder-decoders
        return LAYERS * (3 if family in ("t5", "bart") else 1)
    if position.startswith("ff"):
        stacks = 2 if family in ("t5", "bart") else 1
        gated = 2 if position == "ff.w1" and family in ("llama", "qwen2", "qwen3") else 1  # gate_proj + up_proj
        return LAYERS * stacks * gated
    return None  # norms per block differ by family


def test_every_family_of_the_zoo_has_a_map():
    assert set(HF_FAMILIES) == set(COMMON_STRUCTURE)


@pytest.mark.parametrize("family", HF_FAMILIES)
@pytest.mark.parametrize("position", POSITIONS)
def test_position_resolves(family, position):
    model = ZOO[family].build()
    modules = dict(model.named_modules())
    targets = select(list(modules), default_selectors(model, [position], "test"))
    expected = expected_count(family, position)
    if expected is not None:
        assert len(targets) == expected, targets
    if position.startswith(("attn.", "ff.w", "ff.in")):
        assert all(is_linear_like(modules[t]) for t in targets)
    elif position == "attn":
        assert all("Attention" in type(modules[t]).__name__ for t in targets)
    elif position == "ff.act":
        assert all(
            "Activation" in type(modules[t]).__name__
            or "Intermediate" in type(modules[t]).__name__
            or isinstance(modules[t], (nn.ReLU, nn.GELU, nn.SiLU))
            for t in targets
        ), targets
    elif position == "layer_norm":
        assert len(targets) >= LAYERS
        assert all("Norm" in type(modules[t]).__name__ for t in targets)
        # block norms only: no embedding or final norm of a whole stack
        assert not any(
            t.endswith(("embeddings.LayerNorm", "final_layer_norm")) and ".layers." not in t for t in targets
        )


def test_unknown_family_asks_for_modified_modules():
    with pytest.raises(UnsupportedModelError, match="modified_modules"):
        default_selectors(nn.Sequential(nn.Linear(2, 2)), ["attn.q"], "lora")
