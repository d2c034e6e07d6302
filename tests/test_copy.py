"""A deep copy of a patched model is an independent patched model."""

import copy

import pytest
import torch

import fxdelta

from zoo import ZOO

SPECS = {
    "bert": {"delta_type": "lora"},  # opaque graph sites
    "gpt2": {"delta_type": "adapter"},  # traced regions + opaque graphs
    "transformer-encoder": {"delta_type": "lora", "modified_modules": ["linear1"]},  # hook sites
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_deepcopy_is_independent(name):
    zm = ZOO[name]
    model, x = zm.build(), zm.inputs()
    with torch.no_grad():
        base = zm.run(model, x)
    fxdelta.compile(model, SPECS[name])
    (handle,) = fxdelta.delta_models(model).values()
    with torch.no_grad():
        for p in handle.parameters():
            p.normal_()
        patched = zm.run(model, x)

    twin = copy.deepcopy(model)
    twin_handle = fxdelta.delta_models(twin)[handle.name]
    assert twin_handle is not handle and twin_handle.backbone is twin
    with torch.no_grad():
        assert torch.equal(zm.run(twin, x), patched)
        twin_handle.detach()
        assert torch.equal(zm.run(twin, x), base)
        assert torch.equal(zm.run(model, x), patched)  # the original keeps its delta
        twin_handle.attach()
        handle.detach()
        assert torch.equal(zm.run(model, x), base)
        assert torch.equal(zm.run(twin, x), patched)  # and the copy keeps its own
