"""Merging deltas into the backbone's weights, checked, and taking them out again.

- ``checked.py``: merge deltas one by one, each run on probe inputs before and after (``compiler/verify.py``).
- ``writes.py``: what a merge writes into which parameters, and where it is checked; nothing is written there.
- ``whole_model.py``: every delta of a backbone at once: ``fxdelta.merge``, ``unmerge``, ``merge_and_unload``.

The record a merge leaves and the write-back that undoes it live on the handle (``deltas/merge_record.py``).
"""
