"""The training loop: the loss falls, resume is exact, a SIGKILL loses nothing, multi-process works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from difflab import io
from difflab.config import apply_overrides, load_config
from difflab.losses import diffusion_loss
from difflab.tasks.image import ImageTask
from difflab.train import train

from conftest import ROOT, TINY, difflab_cmd


def tiny_config(*extra: str):
    return apply_overrides(load_config(None), TINY + list(extra))


def fixed_loss(task: ImageTask, model: torch.nn.Module) -> float:
    """Loss on a fixed batch with fixed t and noise (same generator seed every call)."""
    g = torch.Generator().manual_seed(123)
    x0 = task.images[:256].float() / 127.5 - 1
    labels = task.labels[:256]
    with torch.no_grad():
        return float(diffusion_loss(lambda x, t: model(x, t, labels=labels), x0, task.schedule, generator=g))


def test_loss_falls(tmp_path):
    cfg = tiny_config("train.max_steps=150", "train.lr=2e-3", "train.checkpoint_every=1000")
    task = ImageTask(cfg)
    torch.manual_seed(cfg.train.seed)
    before = fixed_loss(task, task.build_model())
    train(task, tmp_path / "run", progress=False)
    model = task.build_model()
    io.load_weights(model, io.latest_checkpoint(tmp_path / "run") / io.MODEL_FILE)
    after = fixed_loss(task, model)
    assert after < 0.5 * before, (before, after)
    rows = io.read_metrics(tmp_path / "run")
    assert rows[-1]["step"] == 150 and {"loss", "lr", "img_per_s", "peak_rss_mb"} <= set(rows[-1])


def test_resume_continues_exactly(tmp_path):
    cfg = tiny_config("train.max_steps=6", "train.checkpoint_every=3")
    train(ImageTask(cfg), tmp_path / "straight", progress=False)
    half = apply_overrides(cfg, ["train.max_steps=3"])
    train(ImageTask(half), tmp_path / "resumed", progress=False)
    train(ImageTask(cfg), tmp_path / "resumed", resume=True, progress=False)
    for name in (io.MODEL_FILE, io.EMA_FILE):
        a = load_file(str(io.latest_checkpoint(tmp_path / "straight") / name))
        b = load_file(str(io.latest_checkpoint(tmp_path / "resumed") / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_sigkill_mid_run_then_resume(tmp_path):
    """Kill -9 while checkpoints are being written every step; every named checkpoint is complete."""
    run = tmp_path / "run"
    cmd = difflab_cmd("train", "--out", str(run), "--no-progress", "--max-steps", "100000",
                      "--set", *[f"{o}" for o in TINY], "--set", "train.checkpoint_every=1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((run / io.CHECKPOINTS).glob("step-*"))) < 2:
        time.sleep(0.2)
    time.sleep(0.7)  # land somewhere inside the next writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for ckpt in (run / io.CHECKPOINTS).glob("step-*"):
        for f in (io.MODEL_FILE, io.EMA_FILE):
            load_file(str(ckpt / f))  # complete safetensors
        io.load_state(ckpt)
    last = io.load_state(io.latest_checkpoint(run))["step"]
    target = last + 3
    res = subprocess.run(difflab_cmd("train", "--out", str(run), "--resume", "--no-progress",
                                     "--max-steps", str(target)), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"from step {last}" in res.stdout
    assert io.load_state(io.latest_checkpoint(run))["step"] == target
    assert not list((run / io.CHECKPOINTS).glob(".tmp-*"))


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed")
def test_accelerate_launch_two_cpu_processes(tmp_path):
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    run = tmp_path / "run"
    cmd = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "difflab.cli", "train", "--out", str(run), "--no-progress",
           "--max-steps", "4", "--set", *TINY, "train.checkpoint_every=2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    state = io.load_state(io.latest_checkpoint(run))
    assert state["step"] == 4 and state["finished"]
    rows = io.read_metrics(run)
    assert rows and rows[-1]["step"] == 4
    # two processes of batch 16 each: 32 images per step
    assert rows[-1]["img_per_s"] > 0


def test_cosine_decay_ends_with_the_minute_budget():
    """A run stopped by max_minutes ends its cosine decay there, not at max_steps (issue 5)."""
    from difflab.train import COSINE_FLOOR, lr_factor

    t = tiny_config("train.lr_decay=cosine", "train.warmup_steps=10", "train.max_steps=1000000",
                    "train.max_minutes=10").train
    assert lr_factor(0, t) == pytest.approx(0.1)  # warm-up
    assert lr_factor(50, t, time_fraction=0.0) == pytest.approx(1.0, abs=1e-6)
    assert lr_factor(50, t, time_fraction=0.5) == pytest.approx(COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5)
    assert lr_factor(50, t, time_fraction=1.2) == pytest.approx(COSINE_FLOOR)
    steps_bound = tiny_config("train.lr_decay=cosine", "train.warmup_steps=0", "train.max_steps=100").train
    assert lr_factor(100, steps_bound, time_fraction=0.1) == pytest.approx(COSINE_FLOOR)


def test_channels_last_trains_the_same_model(tmp_path):
    """train.channels_last changes the memory layout only: the same steps give the same weights."""
    runs = {}
    for fmt in ("false", "true"):
        cfg = tiny_config("train.max_steps=3", "train.checkpoint_every=1000", f"train.channels_last={fmt}")
        train(ImageTask(cfg), tmp_path / fmt, progress=False)
        runs[fmt] = load_file(str(io.latest_checkpoint(tmp_path / fmt) / io.MODEL_FILE))
    for k in runs["false"]:
        torch.testing.assert_close(runs["true"][k], runs["false"][k], rtol=1e-4, atol=1e-5)
