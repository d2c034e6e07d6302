"""The common structure map resolves every position on every family, to the modules meant."""

import pytest
from torch import nn

from fxdelta.core.errors import UnsupportedModelError
from fxdelta.spec.method import is_linear_like
from fxdelta.spec.selectors import compile_pattern, select
from fxdelta.spec.structure import COMMON_STRUCTURE, common_selectors, default_selectors

from zoo import HF_FAMILIES, UNAVAILABLE_TYPES, ZOO

POSITIONS = ["attn.q", "attn.k", "attn.v", "attn.o", "ff.w1", "ff.w2", "layer_norm", "attn", "ff", "ff.in", "ff.act"]
CROSS = ["crossattn.q", "crossattn.k", "crossattn.v", "crossattn.o", "crossattn"]
ENCODER_DECODERS = ("t5", "bart")
LAYERS = 2  # every zoo model has 2 layers (per stack)
GATED = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")  # ff.w1 is gate_proj and up_proj (Phi-3 fuses them)


def expected_count(family: str, position: str) -> int | None:
    """How many modules a position names on the tiny zoo models."""
    if position.startswith("attn"):  # self-attention: the encoder's and (encoder-decoders) the decoder's
        return LAYERS * (2 if family in ENCODER_DECODERS else 1)
    if position.startswith("crossattn"):
        return LAYERS
    if position.startswith("ff"):
        stacks = 2 if family in ("t5", "bart") else 1
        gated = 2 if position == "ff.w1" and family in GATED else 1

        return LAYERS * stacks * gated
    return None  # norms per block differ by family


def test_every_family_of_the_zoo_has_a_map():
    # falcon and falcon-new are one family (model_type falcon): the old and the new decoder architecture
    types = {ZOO[name].model_type for name in HF_FAMILIES}
    assert types <= set(COMMON_STRUCTURE)
    assert all(ZOO[name].build().config.model_type == ZOO[name].model_type for name in HF_FAMILIES)
    # An older transformers lacks families that came later: their maps are there, their zoo models are not.
    assert types | UNAVAILABLE_TYPES == set(COMMON_STRUCTURE)


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
            or "GELU" in type(modules[t]).__name__  # Gemma3: GELUTanh
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


class _Wrapper(nn.Module):
    """A user's model holding a transformers model (as OpenDelta's users wrap theirs)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm, self.head = lm, nn.Linear(2, 2)


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_positions_are_found_inside_a_user_wrapper(family):
    model = ZOO[family].build()
    wrapped = _Wrapper(model)
    for position in ("attn.q", "ff.w2", "layer_norm", "attn.self"):
        bare = select([n for n, _ in model.named_modules()], default_selectors(model, [position], "test"))
        inside = select([n for n, _ in wrapped.named_modules()], default_selectors(wrapped, [position], "test"))
        assert inside == [f"lm.{n}" for n in bare] and bare, position


def test_unknown_family_asks_for_modified_modules():
    with pytest.raises(UnsupportedModelError, match="modified_modules"):
        default_selectors(nn.Sequential(nn.Linear(2, 2)), ["attn.q"], "lora")


@pytest.mark.parametrize("family", ENCODER_DECODERS)
@pytest.mark.parametrize("position", CROSS)
def test_cross_attention_positions_resolve(family, position):
    model = ZOO[family].build()
    modules = dict(model.named_modules())
    targets = select(list(modules), default_selectors(model, [position], "test"))
    assert len(targets) == LAYERS and all(("EncDecAttention" in t) or ("encoder_attn" in t) for t in targets)


@pytest.mark.parametrize(
    "family, finals",
    [("t5", 2), ("gpt2", 1), ("opt", 1), ("llama", 1), ("qwen2", 1), ("qwen3", 1), ("vit", 1), ("bert", 0)]
    + [(f, 1) for f in ("mistral", "gemma3_text", "phi3", "falcon", "falcon-new", "gpt_neox")],
)
def test_final_layer_norm_is_each_stacks_last(family, finals):
    model = ZOO[family].build()
    names = list(dict(model.named_modules()))
    selectors = default_selectors(model, ["final_layer_norm"], "test")
    found = {n for s in selectors for n in names if n and compile_pattern(s)(n)}
    assert len(found) == finals, found


def test_opendelta_spellings_of_common_names():
    model = ZOO["bert"].build()
    assert common_selectors(model, "attn@.proj@") == common_selectors(model, "attn.o")
    assert common_selectors(model, "attn@.q@") == common_selectors(model, "attn.q")
    assert common_selectors(model, "nosuchname") is None
