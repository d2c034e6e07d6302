"""Snapshot a model completely, to assert that a failed call left it exactly as it was."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fxdelta.compiler.gate import Gate
from fxdelta.compiler.state import BackboneState


def gate_hook_ids(module: nn.Module) -> set[int]:
    """The hooks of fxdelta's thread gate: on a backbone from its first delta model on, by design."""
    tables = (module._forward_hooks, module._forward_pre_hooks)
    return {i for t in tables for i, h in t.items() if isinstance(getattr(h, "__self__", None), Gate)}


def _user_hooks(table: dict, gate: set[int]) -> list:
    return [i for i in table if i not in gate]


@dataclass
class Snapshot:
    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    hooks: dict[str, tuple[list, list]]  # hook ids
    hook_fns: dict[str, tuple[list, list]]  # the hook callables, in call order
    forwards: set[str]
    classes: dict[str, type]
    names: list[str]
    state: Any
    output: torch.Tensor


def snapshot(model: nn.Module, inputs: Any) -> Snapshot:
    modules = list(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        output = run(model, inputs)
    return Snapshot(
        tensors={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        hooks={
            n: (_user_hooks(m._forward_hooks, g), _user_hooks(m._forward_pre_hooks, g))
            for n, m in modules
            for g in [gate_hook_ids(m)]
        },
        hook_fns={
            n: (
                [m._forward_hooks[i] for i in _user_hooks(m._forward_hooks, g)],
                [m._forward_pre_hooks[i] for i in _user_hooks(m._forward_pre_hooks, g)],
            )
            for n, m in modules
            for g in [gate_hook_ids(m)]
        },
        forwards={n for n, m in modules if "forward" in m.__dict__},
        classes={n: type(m) for n, m in modules},
        names=[n for n, _ in modules],
        state=BackboneState.find(model),
        output=output,
    )


def assert_unchanged(
    model: nn.Module, before: Snapshot, inputs: Any, *, same_hook_ids: bool = True, state: Any = None
) -> None:
    """``model`` is as ``before`` found it; ``state``: fxdelta's state it may hold now (deltas all detached)."""
    after = snapshot(model, inputs)
    if state is not None:
        assert after.state is state
        after.state = before.state
    assert after.names == before.names
    assert after.classes == before.classes
    assert after.forwards == before.forwards
    assert after.hook_fns == before.hook_fns
    if same_hook_ids:
        assert after.hooks == before.hooks
    assert after.state is before.state
    assert after.tensors.keys() == before.tensors.keys()
    assert all(torch.equal(after.tensors[k], v) for k, v in before.tensors.items())
    assert after.requires_grad == before.requires_grad
    assert torch.equal(after.output, before.output)


def run(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits
