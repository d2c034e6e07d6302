"""Compile deltas before wrapping: the other order is a clear error that leaves the model as it was.

DDP registers the parameters it averages when it is built and FSDP2's fully_shard turns them into DTensor
shards, so a delta added afterwards would never be averaged (DDP: the ranks drift apart silently) or
could not even be observed (FSDP2: a DTensor/Tensor mix deep in torch). One process of a gloo group is
enough to build both engines; the two-process runs are in test_engines.py (which also checks that prefix
tuning's one MLP for all layers, split over per-layer shards, is a ConfigError: with one rank nothing is split).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import fxdelta
from fxdelta import LoraModel, UnsupportedModelError

import training


@pytest.fixture
def one_rank(tmp_path):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def shard_layers(model):
    for layer in training.layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def ddp(model):
    return torch.nn.parallel.DistributedDataParallel(model)


def keys(model):
    return sorted(model.state_dict().keys())


@pytest.mark.parametrize("wrap", [ddp, shard_layers, fully_shard], ids=["ddp", "fsdp-layer", "fsdp-whole"])
def test_compiling_into_a_wrapped_model_is_refused(one_rank, wrap):
    wrapped = wrap(training.backbone())
    before = keys(wrapped)
    with pytest.raises(UnsupportedModelError, match=r"compile the deltas first, then wrap"):
        fxdelta.compile(wrapped, training.spec("lora"))
    with pytest.raises(UnsupportedModelError, match=r"compile the deltas first"):
        LoraModel(wrapped)  # a method class given the wrapper itself
    assert keys(wrapped) == before and fxdelta.delta_models(wrapped) == {}


@pytest.mark.parametrize("wrap", [ddp, shard_layers], ids=["ddp", "fsdp-layer"])
def test_loading_into_a_wrapped_model_is_refused(one_rank, wrap, tmp_path):
    fxdelta.save(training.patched("lora"), tmp_path / "ckpt")
    wrapped = wrap(training.backbone())
    before = keys(wrapped)
    with pytest.raises(UnsupportedModelError, match=r"compile the deltas first"):
        fxdelta.load(wrapped, tmp_path / "ckpt")
    assert keys(wrapped) == before and fxdelta.delta_models(wrapped) == {}


@pytest.mark.parametrize("wrap", [ddp, shard_layers, fully_shard], ids=["ddp", "fsdp-layer", "fsdp-whole"])
def test_compiled_then_wrapped_trains_and_saves(one_rank, wrap, tmp_path):
    model = wrap(training.patched("lora"))
    training.train(model)
    fxdelta.save(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "delta_config.json").read_text())
    assert meta["backbone"]["class"] == "BertForMaskedLM"  # not FSDP2's FSDPBertForMaskedLM
    fresh = fxdelta.load(training.backbone(), tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=training.probe()).logits, model(input_ids=training.probe()).logits, atol=0, rtol=0
        )
