"""The tiny offline demo (`fxdelta-demo --tiny`) runs end to end: it exits 0 only if init is identity and the
reload is exact."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _demo_script() -> str:
    """The console script `make demo` runs, from the environment running the tests."""
    script = Path(sys.executable).parent / "fxdelta-demo"
    return str(script) if script.exists() else shutil.which("fxdelta-demo")


@pytest.mark.parametrize("method", ["lora", "prefix", "soft_prompt"])  # identity at init, and not
def test_demo_runs(tmp_path, method):
    result = subprocess.run(
        [_demo_script(), "--tiny", "--steps", "20", "--method", method, "--out", str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert ("output unchanged at init: True" in out) == (method == "lora")
    assert "reproduces the trained outputs exactly: True" in out
    assert f"deltas ({method})" in out  # the marked tree
    assert ("def forward" in out) == (method == "lora")  # LoRA's site is a rewritten graph; the others are hooks
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["delta.safetensors", "delta_config.json"]
