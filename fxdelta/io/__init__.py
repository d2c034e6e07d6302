"""Checkpoint formats on disk (``checkpoint.py``: fxdelta's own)."""
