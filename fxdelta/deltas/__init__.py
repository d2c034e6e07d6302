"""The user's side: the delta-model handle (``handle.py``), freezing, loading checkpoints, the classes
with OpenDelta's names generated from the method registry (``classes.py``), and ``AutoDelta*`` (``auto.py``).
"""
