"""The delta methods: one file per method (config, module, ``Method``), and ``registry.py`` listing them all.

``activations.py``, ``bottleneck.py`` and ``low_rank.py`` are parts the adapters share;
``prefix_probe.py`` is prefix tuning's FakeTensor probe of each attention.
"""
