"""The compiler API through the wrappers training uses (DDP, DataParallel, torch.compile), and delta names."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fxdelta
from fxdelta import LoraModel

from zoo import ZOO

IDS = torch.arange(1, 9).unsqueeze(0)


def bert():
    torch.manual_seed(0)
    return ZOO["bert"].build().eval()


@pytest.fixture
def one_process_group(tmp_path):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def wrappers(model):
    return {
        "compile": torch.compile(model, backend="eager"),
        "data-parallel": nn.DataParallel(model),
        "compile(data-parallel)": torch.compile(nn.DataParallel(model), backend="eager"),
    }


@pytest.mark.parametrize("kind", ["compile", "data-parallel", "compile(data-parallel)"])
def test_delta_models_save_and_load_look_through_a_wrapper(kind, tmp_path):
    model = bert()
    wrapped = wrappers(model)[kind]
    assert fxdelta.compile(wrapped, {"delta_type": "lora", "name": "taskA"}) is wrapped
    (handle,) = fxdelta.delta_models(wrapped).values()
    assert handle.backbone is model and handle.name == "taskA"
    with torch.no_grad():
        for p in handle.parameters():
            p.normal_()
    fxdelta.save(wrapped, tmp_path / "ckpt")
    fresh = bert()
    fxdelta.load(wrappers(fresh)[kind], tmp_path / "ckpt")
    assert torch.equal(fresh(input_ids=IDS).logits, model(input_ids=IDS).logits)
    assert torch.equal(wrapped(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_ddp_is_looked_through(one_process_group, tmp_path):
    model = bert()
    fxdelta.compile(model, {"delta_type": "lora"})  # the documented order: deltas first, then DDP
    ddp = nn.parallel.DistributedDataParallel(model)
    assert list(fxdelta.delta_models(ddp)) == ["lora"]
    fxdelta.save(ddp, tmp_path / "ckpt")
    assert all(not k.startswith("module.") for k in fxdelta.delta_models(ddp)["lora"].state_dict())


def test_names_may_be_what_users_write():
    model = bert()
    LoraModel(model, name="taskA")
    assert any(".deltas.taskA." in k for k in model.state_dict())
    for bad in ("task-a", "2task", "a.b", ""):
        with pytest.raises(fxdelta.ConfigError, match="identifier"):
            LoraModel(model, name=bad)


def test_unwrap_looks_through_every_wrapper_but_engines_are_refused():
    from fxdelta.compiler.engines import _engine_wrappers, unwrap, wrapper_types

    assert nn.DataParallel in wrapper_types() and nn.parallel.DistributedDataParallel in wrapper_types()
    assert set(_engine_wrappers()) < set(wrapper_types()) and nn.DataParallel not in _engine_wrappers()
    model = nn.Sequential(nn.Linear(2, 2))
    for wrapped in (model, nn.DataParallel(model), torch.compile(model), nn.DataParallel(torch.compile(model))):
        assert unwrap(wrapped) is model
