"""How deltas are carried at run time: one file per kind of site, behind the ``Site`` protocol (base.py).

Every use of transformers internals lives in ``hf.py``.
"""
