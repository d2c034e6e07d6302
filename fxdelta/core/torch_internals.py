"""The one place fxdelta touches torch's private surface, as ``sites/hf.py`` is for transformers internals.

torch may rename or move any of these in a minor release; when it does, this file is the one to change, and
``tests/test_torch_internals.py`` (which calls every accessor) is the test that says so. Every other file of
fxdelta imports them from here (the same test checks that no other file names a torch private).

The privates, and what fxdelta needs each for:

- ``torch.nn.modules.module._global_forward_hooks``, ``_global_forward_pre_hooks``, ``_global_backward_hooks``,
  ``_global_backward_pre_hooks``: the hooks ``torch.nn.modules.module.register_module_*_hook`` install on every
  module's call (``global_module_hooks``).
- ``torch._subclasses.fake_tensor.FakeTensor``, ``FakeTensorMode``, ``maybe_get_fake_mode``: observation runs the
  backbone on tensors that carry metadata and no values.
- ``torch._dynamo.eval_frame.OptimizedModule``: the module ``torch.compile(model)`` returns
  (``compiled_module_type``; imported on first use, as importing dynamo takes a second).
- ``torch.multiprocessing.reductions.StorageWeakRef`` over ``Tensor.untyped_storage()``: a hashable key for the
  memory a tensor views (``storage_key``).
- ``torch._C._autograd._top_saved_tensors_default_hooks``: whether saved-tensor hooks (activation
  checkpointing's) are active (``saved_tensor_hooks_active``).
- ``Tensor._version``: the counter of in-place writes to a tensor (``version_of``).

Checked (this module imported, each accessor called, as in the test) on torch 2.13.0 (CPU build), 2.14.1 and
2.15.0 (PyPI's default CUDA builds, run on CPU).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, maybe_get_fake_mode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.modules import module as _module

__all__ = [
    "FakeTensor",
    "FakeTensorMode",
    "StorageKey",
    "compiled_module_type",
    "global_module_hooks",
    "maybe_get_fake_mode",
    "saved_tensor_hooks_active",
    "storage_key",
    "version_of",
]

StorageKey = StorageWeakRef  # what ``storage_key`` returns: hashable, equal for tensors sharing memory

# The tables ``nn.Module.__call__`` runs for every module, in this order in ``global_module_hooks``' answer.
_GLOBAL_TABLES = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)


def global_module_hooks() -> tuple[tuple[int, ...], ...]:
    """The ids of the hooks that run on every module's call, one tuple per table (forward pre, forward,
    backward pre, backward): ``any(global_module_hooks())`` says whether there are any, and two answers
    compare equal while no hook was added or removed.

    All four tables matter to every caller, because each caller is about a module's ``__call__`` not
    running: the planner traces modules *through* (their code is inlined in a region's graph), the region
    guard re-plans when that choice would change, and a replayed layer (``compiler/repeats.py``) is never
    called. ``nn.Module.__call__`` runs the global forward hooks itself and sets up the global backward
    hooks (``register_module_full_backward_hook``, ``register_module_full_backward_pre_hook``) on that
    call's tensors, so a module that is not called runs none of them. A table missing from an old torch
    counts as empty.
    """
    return tuple(tuple(getattr(_module, name, None) or ()) for name in _GLOBAL_TABLES)


def compiled_module_type() -> type[torch.nn.Module]:
    """The wrapper ``torch.compile(module)`` returns (``OptimizedModule``), which holds the module as
    ``_orig_mod``. Imported here, on first use: importing dynamo takes a second and ``import fxdelta`` must not."""
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def storage_key(t: torch.Tensor) -> StorageKey:
    """A hashable key for the memory ``t`` views: equal for tensors (views, FakeTensors) sharing a storage."""
    return StorageWeakRef(t.untyped_storage())  # type: ignore[no-untyped-call]  # torch leaves it unannotated


def saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks are set (``torch.autograd.graph.saved_tensors_hooks``, activation
    checkpointing), which a traced graph would not keep."""
    return torch._C._autograd._top_saved_tensors_default_hooks(True) is not None


def version_of(t: torch.Tensor) -> int:
    """How many times ``t`` (or a tensor sharing its storage's version counter) was written in place."""
    return t._version
