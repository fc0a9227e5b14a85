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


def test_bar_total_follows_the_binding_budget():
    """The bar's total is the step the run will stop at: far below max_steps when minutes bind (issue 12)."""
    from difflab.train import bar_total

    assert bar_total(0, 0.0, 100_000, 5.0) == 100_000  # nothing measured yet
    assert bar_total(50, 30.0, 100_000, None) == 100_000  # no minute budget
    assert bar_total(50, 30.0, 100_000, 5.0) == 500  # 50 steps in 30 s, 300 s to go in all: 500 steps
    assert bar_total(50, 1.0, 3000, 5.0) == 3000  # 15000 steps would fit in the minutes: max_steps binds
    assert bar_total(100, 1000.0, 100_000, 1.0) == 100  # past the budget: never below the steps done


def test_log_with_is_checked(monkeypatch):
    import importlib.util

    from difflab.errors import UserError
    from difflab.train import check_train_config

    with pytest.raises(UserError, match="use one of none, tensorboard"):
        check_train_config(tiny_config("train.log_with=wandb").train)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # as if tensorboard were not installed
        return None if name == "tensorboard" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"pip install 'difflab\[tensorboard\]'"):
        check_train_config(tiny_config("train.log_with=tensorboard").train)
    check_train_config(tiny_config("train.log_with=none").train)


def _events(run):
    """(loss steps, sample-image steps, image size) of a run's TensorBoard logs, read back by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "logs" / "train"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    images = acc.Images("samples")
    return [e.step for e in acc.Scalars("loss")], [e.step for e in images], (images[-1].height, images[-1].width)


def test_log_with_tensorboard_writes_events_and_resumes_exactly(tmp_path):
    """Loss, lr and images/s every log_every steps and a sample grid at each checkpoint, under RUN/logs;
    a resumed run gives the uninterrupted run's weights, and its logs hide what the killed run wrote
    after its checkpoint."""
    pytest.importorskip("tensorboard")
    from difflab.tasks import build_task

    cfg = apply_overrides(load_config(None), ["model.base_channels=8", "train.max_steps=4", "train.checkpoint_every=2",
                                              "train.batch_size=8", "train.log_every=2", "train.log_with=tensorboard"])
    train(build_task(cfg), tmp_path / "straight", progress=False)
    loss_steps, image_steps, (H, W) = _events(tmp_path / "straight")
    assert loss_steps == [2, 4] and image_steps == [2, 4] and H > 8 and W > 8
    assert [r["step"] for r in io.read_metrics(tmp_path / "straight")] == [2, 4]  # metrics.jsonl as without logs

    # A run killed after logging steps 3-4 but before its step-4 checkpoint: resume from step 2.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(io.latest_checkpoint(tmp_path / "resumed"))
    train(build_task(cfg), tmp_path / "resumed", resume=True, progress=False)
    assert _events(tmp_path / "resumed")[:2] == ([2, 4], [2, 4])
    for name in (io.MODEL_FILE, io.EMA_FILE):
        a = load_file(str(io.latest_checkpoint(tmp_path / "straight") / name))
        b = load_file(str(io.latest_checkpoint(tmp_path / "resumed") / name))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
