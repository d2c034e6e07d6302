"""Start a script on 2 CPU processes (torchrun or ``accelerate launch``) from a test, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
TIMEOUT = 180  # seconds for one launch: a hung collective fails the test instead of the whole run


def launch(launcher: list[str], script: str, *args: str, cwd: Path) -> str:
    """Run ``launcher + [script, *args]`` in its own process group and return its output; on failure or time-out
    the whole group is killed and the test fails with the output's tail."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [*launcher, str(HERE / script), *args]
    proc = subprocess.Popen(  # cwd elsewhere: the repo root's fxdelta/ lacks fxdelta.passes
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} did not finish in {TIMEOUT} s:\n{out[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{out[-6000:]}")
    return out


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# On a machine without GPUs, `--multi_gpu` starts CPU processes (torchrun underneath) that use gloo.
ACCELERATE = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
]  # fmt: skip
