"""The handle: one delta on one backbone, and only what attach/detach must keep true.

- ``handle.py``: ``Handle`` (config, entries, build, attach/detach, parameter access, ``freeze_module``).
- ``scope.py``: OpenDelta's parameter queries on the backbone or a module inside it.
- ``freeze.py``: which backbone parameters stay trainable, and a state_dict trimmed to them.
- ``heads.py``: each delta's own copy of the task heads, swapped in on attach and out on detach.
- ``merge_record.py``: what a merge into the weights leaves on the handle, and the exact write-back detach does.
- ``meta.py``: deltas built on the ``meta`` device, watched until they are given values.
- ``values.py``: the one writer of values into a live delta (loading, hot-swap and reset use it).
"""
