"""What users and methods declare.

- ``config.py``: ``DeltaConfig``, the frozen keyword-only config every method's config extends.
- ``selectors.py``: the one selector grammar for module and parameter names.
- ``structure.py``: the common structure map (``attn.q``, ``ff.w2``, ...) per model family.
- ``heads.py``: the model kinds (``*For<Task>``) and their task heads.
- ``method.py``: ``Method``, what a delta method is, as data.
- ``peft.py``: ``PeftFormat``, what a method declares to read and write PEFT's adapter format.
"""
