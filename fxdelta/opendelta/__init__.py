"""The OpenDelta face: the classes users hold, each method reached in one call into the wings.

- ``model.py``: ``DeltaModel``, the user's class over the handle (save, merge, hot-swap, log, ...).
- ``classes.py``: one class per method generated from the registry (``LoraModel``, ...), ``from_finetuned``.
- ``auto.py``: ``AutoDeltaConfig``, ``AutoDeltaModel``.
"""
