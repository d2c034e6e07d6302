"""Small helpers under OpenDelta's module paths: ``inspect.py`` (``inspect_optimizer_statistics``)."""
