"""What a checkpoint is: deltas to folders and back, in fxdelta's format and PEFT's.

- ``save.py``: a delta's record and tensors, OpenDelta's saving options, ``save``/``save_finetuned``.
- ``load.py``: build the deltas a folder describes, fill in their values, attach all or none.
- ``folders.py``: which format a folder is in, and reading either as fxdelta's record.
- ``peft.py``: PEFT's adapter folder, both ways; ``peft_rules.py``: PEFT's config rules all methods share.
- ``pretrained.py``: the ``save_pretrained`` (``Trainer.save_model``) of a patched transformers model.
"""
