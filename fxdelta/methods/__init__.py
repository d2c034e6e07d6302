"""The delta methods: one file per method (config, module, ``Method``), and ``registry.py`` listing them all.

Methods: ``lora.py``, ``dora.py``, ``adapter.py``, ``low_rank_adapter.py``, ``compacter.py``,
``parallel_adapter.py``, ``ia3.py``, ``bitfit.py``, ``prefix.py`` (with ``prefix_probe.py``, its FakeTensor
probe of each attention), ``soft_prompt.py``. Shared parts: ``activations.py`` (non-linearities by
OpenDelta's names), ``bottleneck.py`` and ``low_rank.py`` (the adapters'), ``folding.py`` (weight layouts for
merging). Each method's own mapping to PEFT's format: ``peft_lora.py``, ``peft_ia3.py``, ``peft_prompt.py``.
"""
