"""What the bench scripts share: train a config for a wall-clock budget, summarise a run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from difflab import io
from difflab.config import apply_overrides, load_config
from difflab.tasks import build_task
from difflab.train import train


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
        cmd = [sys.executable, "-m", "difflab.cli", "train", str(config), "--out", str(out), "--max-minutes",
               str(minutes), "--max-steps", "10000000", "--no-progress", "--resume",
               *(["--set", *overrides] if overrides else [])]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return run_summary(out)
