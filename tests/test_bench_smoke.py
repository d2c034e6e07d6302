"""The benchmark runs end to end (``bench/run.py --quick``) and writes every expected row.

No timing is asserted: on a shared 2-core machine numbers only mean something in a full run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["bert-256", "gpt2-256", "llama-256", "bert-tiny", "gpt2-tiny", "llama-tiny"]
FORWARD = [
    "naive lora / unpatched",
    "lora / unpatched",
    "lora hooks_only / unpatched",
    "adapter / unpatched",
    "bitfit / unpatched",
    "lora / naive lora",
    "lora hooks_only / naive lora",
]
TRAIN = ["lora / naive lora", "lora hooks_only / naive lora"]
COMPILE = [f"{m}: {p}" for m in ("lora", "adapter", "bitfit") for p in ("total", "observe", "plan", "install", "other")]
META_MODELS = ["llama-70b-2L", "llama-70b-4L"]  # the quick run's depths
META = ["lora: fxdelta", "lora: peft", "lora: fxdelta / peft"]
NUMBER = r"-?\d+\.\d+"


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    # Run as `make bench` does (the script's folder first on sys.path, fxdelta from the install), on one
    # thread: under `pytest -n 2` the other worker holds the second core, and two torch threads would thrash.
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "torch " in text and "transformers " in text and "machine:" in text

    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("forward", "train step", "compile", "meta compile", "context"):
            rows[(cells[0], cells[1], cells[2])] = cells[3:]
    expected = [("forward", m, f) for m in MODELS for f in FORWARD]
    expected += [("train step", m, t) for m in MODELS for t in TRAIN]
    expected += [("compile", m, c) for m in MODELS for c in COMPILE]
    expected += [("meta compile", m, c) for m in META_MODELS for c in META]
    missing = [key for key in expected if key not in rows]
    assert not missing, f"rows missing from the results table: {missing}"
    for key in expected:
        median, spread, n = rows[key]
        assert re.fullmatch(NUMBER + r"( s)?", median), (key, median)
        assert re.fullmatch(NUMBER + r"( s)? – " + NUMBER + r"( s)?", spread), (key, spread)
        assert int(n) >= 1, (key, n)
    # Ratios are positive, and the printed table is the one written.
    assert all(float(rows[k][0].split()[0]) > 0 for k in expected if k[0] != "compile")
    assert _table(text) in proc.stdout


def _table(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))
