"""Activation (gradient) checkpointing gives every method the gradients it has without it.

transformers' ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before 5.23, still there
as a deprecated alias) recomputes each layer's forward during backward: deltas inside a layer run twice, hook
sites on a layer see the recompute without the layer's own hooks, and with ``use_reentrant=True`` the
recompute only produces gradients if the layer's input requires grad. transformers makes the input
embeddings' output require grad itself for models fed ``input_ids`` (``enable_input_require_grads``); a
plain module under ``torch.utils.checkpoint`` needs the same from its user (see the README). Measured: the
gradients agree to 3e-8 (tolerance 1e-6 absolute + 1e-5 relative).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hf_compat import enable_checkpointing
from invariants import METHODS, delta_kwargs, perturb
from zoo import TORCH_TARGETS, ZOO


def trainable_grads(model: nn.Module, loss_of) -> tuple[dict[str, torch.Tensor], int]:
    """The gradients of every trainable parameter, and how many tensors the forward saved for backward
    (checkpointed layers save only their inputs: fewer tensors say the checkpointing really ran)."""
    model.zero_grad(set_to_none=True)
    saved = [0]

    def pack(t):
        saved[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return grads, saved[0]


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # the recompute must see the same masks (dropout's RNG replay is torch's business)
    return model.train()  # checkpointing runs in training mode only


def assert_same(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys(), f"{what}: gradients for {sorted(got.keys() ^ expected.keys())[:4]} differ"
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{what}, {n}: {m}")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_hf_checkpointing_keeps_the_gradients(family, method):
    zm = ZOO[family]
    model = no_dropout(zm.build())
    handle = METHODS[method](model, **delta_kwargs(family, method))
    perturb(handle.parameters())  # zero-initialised halves (LoRA's B) get gradients too
    handle.freeze_module()
    x = zm.inputs()
    weights = torch.randn_like(zm.run(model, x), generator=torch.Generator().manual_seed(5))

    def loss_of(m):
        return (zm.run(m, x) * weights).sum()

    expected, saved = trainable_grads(model, loss_of)
    assert {n for n, _ in handle.named_parameters()} <= expected.keys()  # every delta tensor gets a gradient
    for reentrant in (True, False):
        enable_checkpointing(model, use_reentrant=reentrant)
        grads, saved_now = trainable_grads(model, loss_of)
        assert_same(grads, expected, f"use_reentrant={reentrant}")
        assert saved_now < saved, f"use_reentrant={reentrant}: nothing was checkpointed"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class Checkpointed(nn.Module):
    """A plain model that checkpoints its blocks with torch.utils.checkpoint (``reentrant=None``: it does not)."""

    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 4)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x) if self.reentrant is None else checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("method", list(TORCH_TARGETS["mlp"]))
def test_torch_checkpoint_on_a_plain_module_keeps_the_gradients(method):
    """fxdelta traces the block, not the model: a trace of the model would inline the blocks and drop the
    checkpoint (the same gradients, but every activation saved). With ``use_reentrant=True`` the input must
    require grad (the blocks' weights are frozen), as torch documents; ``use_reentrant=False`` needs nothing."""
    x = torch.randn(3, 16)
    runs = {}
    for reentrant in (None, True, False):
        torch.manual_seed(0)
        model = Checkpointed(reentrant)
        handle = METHODS[method](model, **delta_kwargs("mlp", method))
        perturb(handle.parameters())
        handle.freeze_module()
        given = x.clone().requires_grad_(reentrant is True)
        runs[reentrant] = trainable_grads(model, lambda m, given=given: m(given).sum())
    expected, saved = runs[None]
    assert {n for n, _ in handle.named_parameters()} <= expected.keys()
    for reentrant in (True, False):
        grads, saved_now = runs[reentrant]
        assert_same(grads, expected, f"use_reentrant={reentrant}")
        assert saved_now < saved, f"use_reentrant={reentrant}: nothing was checkpointed"


def test_reentrant_checkpointing_of_a_model_not_fed_input_ids_needs_enable_input_require_grads():
    """ViT takes ``pixel_values``: transformers does not make its embeddings' output require grad, so with
    the backbone frozen the reentrant-checkpointed layers give the deltas no gradient at all (torch only warns).
    ``model.enable_input_require_grads()``, as the README says, gives them the gradients they have without it."""
    zm = ZOO["vit"]
    model = no_dropout(zm.build())
    handle = METHODS["lora"](model, **delta_kwargs("vit", "lora"))
    perturb(handle.parameters())
    handle.freeze_module()
    x = zm.inputs()
    deltas = {n for n, _ in handle.named_parameters()}

    def loss_of(m):
        return zm.run(m, x).sum()

    expected, _ = trainable_grads(model, loss_of)
    enable_checkpointing(model, use_reentrant=True)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        grads, _ = trainable_grads(model, loss_of)
    assert not deltas & grads.keys()
    model.enable_input_require_grads()
    grads, _ = trainable_grads(model, loss_of)
    assert deltas <= grads.keys()
    assert_same(grads, expected, "use_reentrant=True after enable_input_require_grads()")
