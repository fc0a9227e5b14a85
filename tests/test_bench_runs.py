"""bench/runs.py: stopping a bench script stops the training runs it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARENT = """
import sys
sys.path.insert(0, {bench!r})
from runs import run_processes
run_processes([[sys.executable, "-c", {child!r}]])
"""
CHILD = "import os, time, pathlib; pathlib.Path({pidfile!r}).write_text(str(os.getpid())); time.sleep(600)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stop_signal_reaches_the_child_and_the_script_exits_with_it(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = PARENT.format(bench=str(ROOT / "bench"), child=CHILD.format(pidfile=str(pidfile)))
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        while not pidfile.exists() or not pidfile.read_text():  # the child is up and sleeping
            assert parent.poll() is None, "the bench script died before its child started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert not _alive(child)  # stopped and reaped by the script, not left running
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_failing_child_is_one_line_naming_the_command(tmp_path):
    code = PARENT.format(bench=str(ROOT / "bench"), child="raise SystemExit(3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("a training run failed")
    assert "raise SystemExit(3)" in res.stderr
