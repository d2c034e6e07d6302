"""`make demo` runs end to end: the demo exits 0 only if init is identity and the reload is exact."""

import subprocess
import sys


def test_demo_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fxdelta.demo", "--steps", "20", "--out", str(tmp_path / "ckpt")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "output unchanged at init: True" in out
    assert "reproduces the trained outputs exactly: True" in out
    assert "deltas (lora)" in out and "def forward" in out  # the marked tree and a rewritten graph
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["delta.safetensors", "delta_config.json"]
