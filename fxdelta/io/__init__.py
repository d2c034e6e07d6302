"""Checkpoint files on disk, below everything that reads them (configs read a saved config through here).

- ``checkpoint.py``: fxdelta's folder (``delta_config.json`` + ``delta.safetensors``), written and read strictly.
- ``atomic.py``: a folder (or a file beside others) replaced in one step.
- ``distributed.py``: sharded tensors gathered, and the folder written once (rank 0).
"""
