"""The command line (``fxdelta ...``). Empty so far; it imports only the public API (``import fxdelta``)."""
