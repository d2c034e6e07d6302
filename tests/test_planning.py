"""Planning: regions, nesting, and plans that depend only on what is attached, never on history."""

import torch
from torch import nn
from torch.nn.modules.module import register_module_full_backward_hook

import fxdelta
from fxdelta.compiler.state import BackboneState


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(x))


def sites(model):
    """The sites that carry deltas (the region guard, which carries none, is checked on its own)."""
    return sorted(
        (s.kind.value, s.path, tuple(sorted({e.target for e in s.entries})))
        for s in BackboneState.find(model).sites
        if s.entries
    )


def guarded(model) -> bool:
    return any(s.kind.value == "region guard" for s in BackboneState.find(model).sites)


def build():
    torch.manual_seed(0)
    return Nested().eval()


def test_whole_model_region_traces_through_custom_blocks():
    model = build()
    fxdelta.LoraModel(model, modified_modules=["fc1", "head"])
    # one graph for the whole model, with block inlined so block.fc1 is a node of it
    assert sites(model) == [("traced region", "", ("block.fc1", "head"))]


def test_a_target_is_never_traced_through():
    model = build()
    fxdelta.AdapterModel(model, modified_modules=["block"])
    fxdelta.LoraModel(model, modified_modules=["fc1"])
    # block is a target: a node of the root's graph (adapter after it), and the root of its own region
    assert sites(model) == [
        ("traced region", "", ("block",)),
        ("traced region", "block", ("block.fc1",)),
    ]


def test_plan_does_not_depend_on_history():
    x = torch.randn(4, 8)
    fresh = build()
    lora_alone = fxdelta.LoraModel(fresh, modified_modules=["fc1"])
    with torch.no_grad():
        for p in lora_alone.parameters():
            p.normal_()

    model = build()
    adapter = fxdelta.AdapterModel(model, modified_modules=["block"])
    lora = fxdelta.LoraModel(model, modified_modules=["fc1"])
    lora.entries[0].delta.load_state_dict(lora_alone.entries[0].delta.state_dict())
    adapter.detach()
    assert sites(model) == sites(fresh) == [("traced region", "", ("block.fc1",))]
    assert torch.equal(model(x), fresh(x))
    adapter.attach()
    adapter.detach()
    assert sites(model) == sites(fresh)


def test_a_hook_added_after_compile_to_a_traced_through_module_runs():
    """``block`` is inlined into the root's graph: a hook added to it later must not be skipped."""
    model = build()
    x = torch.randn(4, 8)
    handle = fxdelta.LoraModel(model, modified_modules=["fc1"])
    with torch.no_grad():
        for p in handle.parameters():
            p.normal_()
        patched = model(x)
    assert sites(model) == [("traced region", "", ("block.fc1",))] and guarded(model)
    seen = []
    model.block.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert torch.equal(model(x), patched)  # re-planned first, then run with the hook and the delta
    assert seen == [torch.Size([4, 8])]
    assert ("traced region", "block", ("block.fc1",)) in sites(model)


def test_a_forward_replaced_after_compile_on_a_traced_through_module_runs():
    model = build()
    x = torch.randn(4, 8)
    fxdelta.LoraModel(model, modified_modules=["fc1"])
    calls = []
    original = model.block.forward

    def wrapped(*args, **kwargs):  # what device-dispatch tools install
        calls.append(1)
        return original(*args, **kwargs)

    model.block.forward = wrapped
    with torch.no_grad():
        model(x)
    assert calls == [1]


def _backward_hooks_fired(model) -> set[str]:
    """The classes whose modules a global full backward hook saw in one forward and backward."""
    fired: set[str] = set()
    handle = register_module_full_backward_hook(lambda m, gi, go: fired.add(type(m).__name__))
    try:
        model(torch.randn(2, 8, requires_grad=True)).sum().backward()
    finally:
        handle.remove()
    return fired


def test_a_global_backward_hook_keeps_modules_out_of_regions():
    """Global backward hooks, like global forward hooks, run from a module's own call: none is traced through."""
    model = build()
    handle = register_module_full_backward_hook(lambda *a: None)
    try:
        fxdelta.LoraModel(model, modified_modules=["fc1", "head"])
    finally:
        handle.remove()
    assert "traced region" not in {kind for kind, _, _ in sites(model)}


def test_a_global_backward_hook_added_after_compile_runs_on_traced_through_modules():
    model = build()
    fxdelta.LoraModel(model, modified_modules=["fc1", "head"])
    assert sites(model) == [("traced region", "", ("block.fc1", "head"))]  # block inlined
    assert "Block" in _backward_hooks_fired(model)  # the guard re-planned before the forward
