"""What the bench scripts share: train a config for a wall-clock budget, summarise a run folder, run child
processes that stop when the script is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from difflab import io
from difflab.config import apply_overrides, load_config
from difflab.tasks import build_task
from difflab.train import train


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_processes(cmds: list[list[str]], env: dict | None = None) -> None:
    """Run ``cmds`` side by side and wait for all of them. A stop signal to this script (Ctrl-C, ``kill``, a
    closed terminal) is passed on to every child still running, so no training run is left behind writing into a
    folder (its atomic checkpoints make ``--resume`` exact). Raises SystemExit when a child fails or was stopped."""
    procs = [subprocess.Popen(cmd, env=env) for cmd in cmds]
    stopped: list[int] = []

    def forward(signum: int, _frame) -> None:
        stopped.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped:
        raise SystemExit(128 + stopped[0])
    failed = [" ".join(cmd) for cmd, code in zip(cmds, codes) if code != 0]
    if failed:
        raise SystemExit("a training run failed (see its output above): " + "; ".join(failed))


def run_process(cmd: list[str], env: dict | None = None) -> None:
    """:func:`run_processes` of one command, echoed first."""
    print("$", " ".join(cmd), flush=True)
    run_processes([cmd], env)


def run_summary(run: Path) -> dict:
    """Steps, seconds, training images/s and peak memory of a finished run folder."""
    state = io.load_state(io.latest_checkpoint(run))
    batch = load_config(run / io.CONFIG_FILE).train.batch_size
    return {"steps": state["step"], "train_seconds": round(state["elapsed_s"], 1),
            "img_per_s": round(state["step"] * batch / state["elapsed_s"], 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in io.read_metrics(run))}


def train_for(out: Path, config: str | Path, minutes: float, overrides: list[str]) -> dict:
    """Train ``config`` with ``overrides`` for ``minutes`` into ``out`` (reused when finished)."""
    if not io.is_finished(out):
        cfg = apply_overrides(load_config(config, overrides), [f"train.max_minutes={minutes}", "train.max_steps=1000000"])
        train(build_task(cfg), out, resume=io.latest_checkpoint(out) is not None, progress=False)
    return run_summary(out)


def train_process(out: Path, config: str | Path, minutes: float, overrides: list[str]) -> dict:
    """:func:`train_for` in a process of its own (`difflab train`), so its peak memory is its own."""
    if not io.is_finished(out):
        run_process(train_command(out, config, minutes, overrides))
    return run_summary(out)


def train_command(out: Path, config: str | Path, minutes: float, overrides: list[str]) -> list[str]:
    """The `difflab train` command line of :func:`train_process` (resumed when interrupted)."""
    return [sys.executable, "-m", "difflab.cli", "train", str(config), "--out", str(out), "--max-minutes",
            str(minutes), "--max-steps", "10000000", "--no-progress", "--resume",
            *(["--set", *overrides] if overrides else [])]


def train_in_parallel(jobs: list[tuple[Path, str | Path, float, list[str]]], parallel: int) -> None:
    """:func:`train_process` of each job (out, config, minutes, overrides), ``parallel`` at a time, each process on
    cores // parallel threads (OMP_NUM_THREADS), so that equal budgets get equal shares of the machine; finished
    runs are reused."""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    todo = [job for job in jobs if not io.is_finished(job[0])]
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TQDM_DISABLE": "1"}
    for start in range(0, len(todo), parallel):
        cmds = [train_command(out, config, minutes, overrides) for out, config, minutes, overrides in
                todo[start:start + parallel]]
        for cmd in cmds:
            print(f"$ OMP_NUM_THREADS={threads}", " ".join(cmd), flush=True)
        run_processes(cmds, env)
