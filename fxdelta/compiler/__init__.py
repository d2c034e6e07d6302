"""The compiler, one stage per file, from a spec to deltas installed on the live backbone.

- ``select.py``: which modules a delta patches (selectors or default positions, resolved on one backbone).
- ``examples.py``: the example inputs the backbone is observed with.
- ``observe.py``: one FakeTensor forward recording shapes and call patterns; ``restore.py`` undoes what that
  forward wrote; ``repeats.py`` replays an observed layer for siblings that would see the same, comparing
  them with ``likeness.py`` and the attributes a call reads with ``watch.py``.
- ``build.py``: drives select -> observe -> probe -> sizing into delta modules (entries), not yet attached.
- ``trace.py``: a region traced into an fx graph and checked against eager.
- ``plan.py``: which site (graph, hooks, ...) carries each attached delta.
- ``install.py``: drives plan -> swap sites, transactionally.
- ``state.py``: what one backbone keeps between calls (delta models, sites, caches); ``gate.py``: its
  forwards and changes kept apart across threads.
- ``verify.py``: the before/after check of a change of the backbone's weights (merging uses it).
- ``engines.py``: models that DDP / FSDP already wrap are refused.
"""
