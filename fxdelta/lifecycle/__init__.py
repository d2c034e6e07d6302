"""A delta's values over its life, with its code and sites kept.

- ``hotswap.py``: another task's values copied into an attached delta (no recompile under ``torch.compile``).
- ``reset.py``: ``reset_deltas``, every delta initialised again on the weights held now (after ``meta``).
- ``reparameterization.py``: what only serves training folded into the delta (prefix tuning's MLP).
"""
