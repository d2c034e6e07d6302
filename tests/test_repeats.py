"""Observation replays a layer for siblings that would see what it saw (``compiler.repeats``): the records are
always those of observing every layer, and a layer runs whenever something it reads differs."""

import functools

import pytest
import torch
from torch import nn

import fxdelta
from fxdelta.compiler.examples import example_for
from fxdelta.compiler.observe import observe
from fxdelta.compiler.watch import ALL, watching

from zoo import ZOO

RUNS: list[int] = []  # id() of each Block whose forward ran (id reads no attribute)


class Block(nn.Module):
    def __init__(self, index: int, kind: str = "full") -> None:
        super().__init__()
        self.index = index  # differs among siblings; the forward never reads it
        self.kind = kind
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def kind_now(self) -> str:
        return self.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        RUNS.append(id(self))
        h = self.fc(x)
        return h if self.kind_now() == "short" else self.out(h)  # a short block never calls `out`


class ByDict(Block):
    def kind_now(self) -> str:
        return self.__dict__["kind"]


class ByVars(Block):
    def kind_now(self) -> str:
        return vars(self).get("kind", "full")


class ByGetattr(Block):
    def kind_now(self) -> str:
        return getattr(self, "kind", "full")


class Counting(Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1  # changes its own state: not one to replay
        return super().forward(x)


class PassThrough(Block):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(x), x  # hands its input on, as T5 blocks hand on the position bias


class Stack(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        return self.head(x)


def _stack(cls: type[Block] = Block, kinds: tuple[str, ...] = ("full",) * 6, device: str = "meta") -> Stack:
    with torch.device(device):
        return Stack([cls(i, kind) for i, kind in enumerate(kinds)]).eval()


def _both(model: nn.Module, example=None, hooked: list[str] = ()):  # type: ignore[assignment]
    """Observation of every module with replays and without: (replayed, full), and the blocks that ran."""
    paths = [p for p, _ in model.named_modules()]
    ex = example_for(model, example)
    RUNS.clear()
    replayed = observe(model, ex, paths, hooked=hooked)
    ran = set(RUNS)
    full = observe(model, ex, paths, hooked=hooked, replay=False)
    return replayed, full, ran


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_on_meta_gets_the_records_of_a_full_observation(name):
    with torch.device("meta"):
        model = ZOO[name].build()
    replayed, full, _ = _both(model, ZOO[name].example_inputs)
    assert replayed == full and replayed[1] is None


def test_layers_that_differ_only_in_what_they_never_read_run_once():
    model = _stack()
    replayed, full, ran = _both(model)
    assert replayed == full
    assert ran == {id(model.blocks[0])}
    records = replayed[0]
    assert records["blocks.5.out"].calls == 1 and records["blocks.5.out"].order > records["blocks.5.fc"].order


@pytest.mark.parametrize("cls", [Block, ByDict, ByVars, ByGetattr])
def test_a_differing_attribute_the_forward_reads_makes_the_layer_run(cls):
    model = _stack(cls, ("full", "full", "short", "full", "short", "full"))
    replayed, full, ran = _both(model)
    assert replayed == full
    assert "blocks.2.out" not in replayed[0] and "blocks.3.out" in replayed[0]
    assert id(model.blocks[2]) in ran and id(model.blocks[4]) not in ran  # a short one stands for the other


def test_a_layer_that_changes_its_own_state_is_not_replayed():
    model = _stack(Counting)
    replayed, full, ran = _both(model)
    assert replayed == full and len(ran) == 6
    assert not hasattr(model.blocks[0], "calls")  # and observation took the change back


def test_an_input_handed_on_is_handed_on_by_the_replay_too():
    model = _stack(PassThrough)
    replayed, full, ran = _both(model)
    assert replayed == full and len(ran) == 1


def test_layers_with_real_weights_always_run():
    model = _stack(device="cpu")
    replayed, full, ran = _both(model)
    assert replayed == full and len(ran) == 6  # a forward could read their values without a dispatched op


def test_a_hooked_layer_and_one_with_a_forward_of_its_own_run():
    model = _stack()
    block = model.blocks[3]
    block.forward = functools.partial(Block.forward, block)  # someone else's forward: it may read anything
    replayed, full, ran = _both(model, hooked=["blocks.4"])
    assert replayed == full
    assert {id(model.blocks[i]) for i in (0, 3, 4)} <= ran and id(model.blocks[5]) not in ran


def test_a_module_held_as_a_plain_attribute_makes_its_layers_run():
    model = _stack()
    for block in model.blocks:
        object.__setattr__(block, "peer", model.head)  # not a child: its state is no attribute of the tree
    replayed, full, ran = _both(model)
    assert replayed == full and len(ran) == 6


def test_a_layer_listed_twice_is_observed_as_one_module_called_twice():
    model = _stack()
    model.blocks = nn.ModuleList([model.blocks[0], model.blocks[1], model.blocks[0], model.blocks[2]])
    model.extra = nn.ModuleList([model.blocks[1], Block(9).to("meta")])  # and one listed in a second stack
    replayed, full, _ = _both(model)
    assert replayed == full and replayed[0]["blocks.0.fc"].calls == 2


def test_compile_on_a_meta_llama_patches_every_layer():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    fxdelta.compile(model, {"delta_type": "lora", "lora_r": 4})
    (handle,) = fxdelta.delta_models(model).values()
    assert sorted(e.target for e in handle.entries) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(6) for p in ("q_proj", "v_proj")
    )


# -- watch ------------------------------------------------------------------------------------------------
class Owner(nn.Module):
    shared = "a class attribute"

    def __init__(self) -> None:
        super().__init__()
        self.x = 1
        self.shared_too = 2


def test_watching_notes_instance_reads_and_leaves_everything_as_it_was():
    a, b = Owner(), Owner()
    own = a.__dict__
    with watching({a: {"x", "shared"}}) as reads:
        assert reads is not None
        assert a.x == 1 and b.x == 1 and a.shared == "a class attribute" and not hasattr(Owner, "x")
        b.x = 5  # another instance of the class: not noted, as it was
        a.x = 3
        assert a.x == 3
    # `shared` is the class's: no instance attribute was read (torch's __setattr__ looks at the tables)
    assert reads[id(a)] - {"_parameters", "_buffers", "_modules"} == {"x"}
    assert "x" not in Owner.__dict__ and Owner.__dict__["shared"] == "a class attribute"
    assert a.__dict__ is own and type(own) is dict and a.x == 3 and b.x == 5


def test_reads_of_the_whole_dict_are_noted():
    a = Owner()
    with watching({a: {"x"}}) as reads:
        assert reads is not None
        assert a.__dict__["shared_too"] == 2
    assert reads[id(a)] == {"shared_too"}  # a name read from the dict, not the whole dict
    with watching({a: {"x"}}) as reads:
        assert reads is not None
        assert sorted(vars(a))
    assert ALL in reads[id(a)]


def test_only_one_call_at_a_time_watches_and_never_a_torch_class():
    a = Owner()
    with watching({a: {"x"}}) as outer:
        with watching({Owner(): {"x"}}) as inner:
            assert inner is None
    assert outer is not None
    with watching({nn.Linear(2, 2): {"in_features"}}) as reads:
        assert reads is None


def test_an_error_inside_puts_everything_back():
    a = Owner()
    own = a.__dict__
    with pytest.raises(RuntimeError), watching({a: {"x"}}):
        a.x = 7
        raise RuntimeError
    assert a.__dict__ is own and a.x == 7 and "x" not in Owner.__dict__
    with watching({a: {"x"}}) as reads:  # and the lock is free again
        assert reads is not None
