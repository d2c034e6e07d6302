"""The demos behind ``make demo`` (``fxdelta-demo``): the real one on a pre-trained MiniLM and BBC News
(``real``), and the offline toy one (``tiny``, ``fxdelta-demo --tiny``)."""

from fxdelta.demo.cli import main

__all__ = ["main"]
