"""Small helpers under OpenDelta's module paths (``fxdelta.utils.inspect``)."""
