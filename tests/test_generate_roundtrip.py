"""Generate -> save -> load on a fresh backbone -> generate: the same tokens and scores, with the KV cache.

What a user does after fine-tuning a decoder with the methods people ship (LoRA, adapters, IA3, prefix,
BitFit): the matrix checks generate() and save/load apart; this checks them in one piece.
"""

from __future__ import annotations

import pytest
import torch

from fxdelta import AutoDeltaModel

from invariants import NOISE, generation_inputs, patch, perturb
from zoo import ZOO

SHIPPED = ("lora", "adapter", "ia3", "prefix", "bitfit")


def _cells() -> list:
    return [
        pytest.param(name, method, id=f"{name}-{method}")
        for name, zm in ZOO.items()
        for method in SHIPPED
        if zm.generates  # every generating family takes all five (test_matrix's KNOWN_GAPS has none of them)
    ]


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=5,
            do_sample=False,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
        )


@pytest.mark.parametrize("name, method", _cells())
def test_generate_save_load_generate(name, method, tmp_path):
    p = patch(name, method)
    perturb(p.handle.parameters(), scale=NOISE * (3 if method == "ia3" else 1))
    inputs = generation_inputs(p.inputs)
    before = _generate(p.model, inputs)
    p.handle.save_finetuned(tmp_path / "delta")

    fresh = ZOO[name].build(0)
    AutoDeltaModel.from_finetuned(tmp_path / "delta", backbone_model=fresh)
    after = _generate(fresh, inputs)
    assert torch.equal(after.sequences, before.sequences)
    assert torch.equal(torch.stack(after.scores), torch.stack(before.scores)), "loading must reproduce generate()"
