"""The vocabulary every stage shares; nothing here imports torch.fx, transformers or the rest of fxdelta.

- ``routes.py``: the routes a delta joins a module's computation by.
- ``entries.py``: one delta module on one target, and the ``deltas`` container on a module.
- ``calls.py``: call conventions (where ``h_in``/``h_out`` sit in arguments and outputs).
- ``paths.py``: dotted module paths, the names selectors may address, delta parameter names.
- ``records.py``: what observation records of a module.
- ``precision.py``: a delta computes in its own dtype and hands back the backbone's.
- ``per_thread.py``: per-forward bookkeeping that threads must not share.
- ``handles.py``: the protocol the compiler and the views need of a delta model.
- ``errors.py``: the one exception family.
- ``torch_internals.py``: every name of torch's private surface fxdelta uses (no other file names one).
"""
