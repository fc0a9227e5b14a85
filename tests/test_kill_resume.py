"""Exact resume, proven (issue 13): SIGKILL a run again and again, resume it each time, and its final
weights, EMA and optimizer state equal those of an uninterrupted run bit for bit.

The kills come from tests/kill_train.py (monkeypatched hooks in the training process only): after a
step, in the middle of a checkpoint write (one weights file written; state.pt half written) and
between renaming a checkpoint folder into place and pointing ``latest`` at it. The steps are random
but seeded, so a failure names them and reproduces.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab import io

from conftest import ROOT, TINY

HELPER = ROOT / "tests" / "kill_train.py"
MAX_STEPS = 24
CHECKPOINT_EVERY = 4
SEED = 13  # of the kill plan
# The lr schedule must not read the wall clock (max_minutes=null) and must change every step (cosine);
# grad_accum=2 covers accumulation.
OVERRIDES = [*TINY, f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.max_minutes=null",
             "train.lr_decay=cosine", "train.grad_accum=2", "train.keep_checkpoints=2"]
CHECKPOINT_KILLS = ("checkpoint-weights", "checkpoint-state", "before-latest")


def helper_cmd(run, where: str = "none", step: int = 0, fresh: bool = False) -> list[str]:
    train_args = ["--out", str(run), "--no-progress", "--max-steps", str(MAX_STEPS)]
    train_args += ["--set", *OVERRIDES] if fresh else ["--resume"]
    return [sys.executable, str(HELPER), "--die-at-step", str(step), "--die-in", where, "--", *train_args]


def kill_plan(rng: random.Random) -> list[tuple[int, str]]:
    """Six kills at strictly increasing steps: one of each checkpoint kind at random checkpoint steps,
    three after random steps (a step kill may land on a checkpoint step: killed just before saving)."""
    ckpt_steps = list(range(CHECKPOINT_EVERY, MAX_STEPS + 1, CHECKPOINT_EVERY))
    while True:
        kinds = list(CHECKPOINT_KILLS)
        rng.shuffle(kinds)
        plan = list(zip(sorted(rng.sample(ckpt_steps, len(kinds))), kinds))
        plan += [(s, "step") for s in rng.sample(range(1, MAX_STEPS), 3)]
        plan.sort()
        if len({s for s, _ in plan}) == len(plan):
            return plan


def same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        equal = torch.equal(a[k], b[k])
        assert equal, f"{what}: {k} differs"


def same_state(a, b, what: str) -> None:
    """Equal nested state (dicts, lists, tensors bit for bit, numbers exactly)."""
    if isinstance(a, torch.Tensor):
        equal = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        assert equal, what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), what
        for k in a:
            same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


@dataclass
class Runs:
    straight: Path
    killed: Path
    plan: list[tuple[int, str]]
    resumed_from: list[int]  # the step each resume started from ("resuming RUN from step N"), in order

    @property
    def where(self) -> str:
        return f"kill plan (step, where) {self.plan} (seed {SEED}), resumed from steps {self.resumed_from}"


def resumed_from(stdout: str) -> list[int]:
    return [int(line.split()[-1]) for line in stdout.splitlines() if line.startswith("resuming ")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """An uninterrupted run, and the same run killed by the seeded plan and resumed after each kill."""
    tmp = tmp_path_factory.mktemp("kill_resume")
    straight, killed = tmp / "straight", tmp / "killed"
    # The uninterrupted run, in parallel with the killed one (the same helper, so the same process set-up).
    ref = subprocess.Popen(helper_cmd(straight, fresh=True), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    runs = Runs(straight, killed, kill_plan(random.Random(SEED)), [])
    try:
        for i, (step, kind) in enumerate(runs.plan):
            res = subprocess.run(helper_cmd(killed, kind, step, fresh=i == 0), cwd=ROOT, capture_output=True,
                                 text=True, timeout=300)
            runs.resumed_from += resumed_from(res.stdout)
            assert res.returncode == -signal.SIGKILL, \
                f"{runs.where}: kill {i} ({kind} at step {step}) did not happen: rc {res.returncode}\n{res.stderr[-3000:]}"
            ckpt = killed / io.CHECKPOINTS / f"{io.CHECKPOINT_PREFIX}{step:08d}"
            if kind in ("checkpoint-weights", "checkpoint-state"):  # the half-written checkpoint is a hidden temporary
                assert not ckpt.exists() and list((killed / io.CHECKPOINTS).glob(".tmp-*")), runs.where
            if kind == "before-latest":  # in place and complete, but not yet named by `latest`
                assert (ckpt / io.STATE_FILE).is_file(), runs.where
        res = subprocess.run(helper_cmd(killed), cwd=ROOT, capture_output=True, text=True, timeout=300)
        runs.resumed_from += resumed_from(res.stdout)
        assert res.returncode == 0, f"{runs.where}: the final resume failed\n{res.stderr[-3000:]}"
        _, err = ref.communicate(timeout=300)
        assert ref.returncode == 0, f"the uninterrupted run failed\n{err[-3000:]}"
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    return runs


def test_kill_plan_is_random_but_covers_every_kind():
    plan = kill_plan(random.Random(SEED))
    assert len(plan) >= 5
    assert {k for _, k in plan} == {"step", *CHECKPOINT_KILLS}
    assert [s for s, _ in plan] == sorted({s for s, _ in plan})
    assert all(s % CHECKPOINT_EVERY == 0 for s, k in plan if k != "step")


def test_sigkill_at_random_steps_then_resume_is_bit_exact(runs):
    """Five or more SIGKILLs (after a step, mid checkpoint write, before `latest`), each resumed: the final
    model, EMA and optimizer/scheduler state equal the uninterrupted run's bit for bit."""
    where = runs.where
    assert len(runs.plan) >= 5, where
    # Each resume starts at a checkpoint no later than the kill before it; a kill before the first
    # checkpoint exists restarts from scratch (no "resuming" line).
    assert runs.resumed_from == sorted(runs.resumed_from), where
    assert all(s % CHECKPOINT_EVERY == 0 and 0 < s <= MAX_STEPS for s in runs.resumed_from), where

    a, b = io.latest_checkpoint(runs.straight), io.latest_checkpoint(runs.killed)
    assert a.name == b.name == f"{io.CHECKPOINT_PREFIX}{MAX_STEPS:08d}", (where, a, b)
    for name in (io.MODEL_FILE, io.EMA_FILE):
        same_tensors(load_file(str(a / name)), load_file(str(b / name)), f"{where}: {name}")
    sa, sb = io.load_state(a), io.load_state(b)
    assert sa["step"] == sb["step"] == MAX_STEPS and sa["finished"] and sb["finished"], where
    assert sa.keys() == sb.keys() and {"optimizer", "scheduler"} <= sa.keys(), where
    for key in sa.keys() - {"elapsed_s"}:  # elapsed_s is wall clock
        same_state(sa[key], sb[key], f"{where}: state.pt {key}")

    # Nothing left over: no temporaries, and the same checkpoints kept as the uninterrupted run.
    assert not list((runs.killed / io.CHECKPOINTS).glob(".tmp-*")), where
    names = [sorted(p.name for p in (r / io.CHECKPOINTS).iterdir()) for r in (runs.straight, runs.killed)]
    assert names[0] == names[1], (where, names)


def test_metrics_of_the_killed_run_are_the_uninterrupted_runs(runs):
    """metrics.jsonl: every logged step once, with the uninterrupted run's loss and lr exactly."""
    rows_a, rows_b = io.read_metrics(runs.straight), io.read_metrics(runs.killed)
    steps = list(range(2, MAX_STEPS + 1, 2))  # TINY logs every 2 steps
    assert [r["step"] for r in rows_a] == steps
    assert [r["step"] for r in rows_b] == steps, f"{runs.where}: logged steps {[r['step'] for r in rows_b]}"
    assert [(r["loss"], r["lr"]) for r in rows_b] == [(r["loss"], r["lr"]) for r in rows_a], runs.where
