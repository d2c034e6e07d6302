"""Print the pip requirements of one corner of the supported window, read from pyproject.toml.

    python .ci/window.py oldest   # torch==2.13.0 transformers==5.9.0 (the lowest release accepted)

The window is declared once, in pyproject.toml's dependencies; this reads its lower bounds.
"""

import re
import sys
import tomllib
from pathlib import Path

WATCHED = ("torch", "transformers")


def oldest(dependencies: list[str]) -> list[str]:
    out = []
    for name in WATCHED:
        spec = next(d for d in dependencies if re.match(rf"{name}\b", d))
        low = re.search(r">=\s*(\d+)\.(\d+)", spec)
        if low is None:
            raise SystemExit(f"pyproject.toml gives {name} no lower bound (>=X.Y): {spec!r}")
        out.append(f"{name}=={low[1]}.{low[2]}.0")
    return out


if __name__ == "__main__":
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    if sys.argv[1:] != ["oldest"]:
        raise SystemExit("usage: window.py oldest")
    print(" ".join(oldest(project["dependencies"])))
