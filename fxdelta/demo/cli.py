"""``fxdelta-demo``: the real demo (``fxdelta.demo.real``), or with ``--tiny`` the offline toy one
(``fxdelta.demo.tiny``), which needs nothing beyond fxdelta's own dependencies."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv:
        from fxdelta.demo import tiny

        argv.remove("--tiny")
        return tiny.main(argv)
    from fxdelta.demo import real

    return real.main(argv)
