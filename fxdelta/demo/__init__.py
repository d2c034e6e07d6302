"""The demos behind ``make demo`` (``fxdelta-demo``, dispatched by ``cli.py``).

- ``real.py``: the real one, on a pre-trained MiniLM and BBC News: ``data.py`` (model and articles),
  ``runs.py`` (the runs compared), ``report.py`` (tables and the plot).
- ``tiny.py``: the offline toy one (``fxdelta-demo --tiny``).
"""

from fxdelta.demo.cli import main

__all__ = ["main"]
