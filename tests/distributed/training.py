"""One small training run, the same in a single process and under each distributed engine.

A tiny BERT (tests/zoo.py) with dropout off learns a masked-LM loss for ``STEPS`` SGD steps on one global
batch of ``BATCH`` sequences. Under an engine each of the two ranks takes its half of every batch: the mean of
the two ranks' losses is the global loss, and the averaged gradients are the global batch's gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import fxdelta

from zoo import VOCAB, ZOO

METHODS = ["lora", "adapter", "bitfit", "prefix"]  # what the engines are tested with
STEPS = 3
BATCH, SEQ = 4, 6
LR = 2.0  # large, so three steps move every delta far from its init (the comparison must see them)


# What a method needs under an engine: prefix tuning's one MLP for all layers cannot be split over per-layer
# shards (a ConfigError says so), so with fully_shard on each layer it trains its prefixes directly.
ENGINE_KWARGS = {("fsdp-layer", "prefix"): {"reparameterize": False}}


def spec(method: str, engine: str | None = None) -> dict[str, Any]:
    from fxdelta.methods.registry import METHODS as REGISTRY

    return {"delta_type": method, **REGISTRY[method].small, **ENGINE_KWARGS.get((engine, method), {}), "name": "task"}


def backbone() -> nn.Module:
    model = ZOO["bert"].build(seed=0)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # the same computation on every rank and in the reference
    return model.train()


def patched(method: str, engine: str | None = None) -> nn.Module:
    """The backbone with ``method`` compiled on (seeded: every rank builds the same deltas) and perturbed, so
    that zero-initialised halves (LoRA's B) get gradients from the first step on."""
    model = backbone()
    torch.manual_seed(1)
    fxdelta.compile(model, spec(method, engine))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in fxdelta.delta_models(model)["task"].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, VOCAB, (BATCH, SEQ), generator=g) for _ in range(STEPS)]


def probe() -> torch.Tensor:
    """The input the final outputs are compared on."""
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(4))


def shard(ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = ids.shape[0] // world
    return ids[rank * per : (rank + 1) * per]


def train(model: nn.Module, rank: int = 0, world: int = 1, step: Any = None) -> list[float]:
    """SGD on the trainable parameters; returns this rank's losses. ``step(loss, optimizer)`` replaces
    ``loss.backward(); optimizer.step()`` (accelerate's ``accelerator.backward``)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for ids in batches():
        ids = shard(ids, rank, world)
        loss = model(input_ids=ids, labels=ids).loss
        if step is None:
            loss.backward()
            optimizer.step()
        else:
            step(loss, optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def layers(model: nn.Module) -> list[nn.Module]:
    return list(model.bert.encoder.layer)
