"""Training's guards: NaN/inf stops a run and leaves the last good checkpoint, one writer per run folder, a full
disk during a checkpoint write loses nothing, a state file with a pickle payload never runs, and the last line
of defence turns an unforeseen exception into one line and a log file."""

from __future__ import annotations

import errno
import math
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from difflab import files, io
from difflab import train as train_module
from difflab.cli import main
from difflab.config import apply_overrides, load_config
from difflab.errors import UserError
from difflab.tasks.image import ImageTask
from difflab.train import train

from conftest import ROOT, TINY, difflab_cmd


def tiny_config(*extra: str):
    return apply_overrides(load_config(None), [*TINY, "train.max_minutes=null", *extra])


class NaNAtStep(ImageTask):
    """The image task, whose loss becomes NaN from optimizer step ``bad_step`` on (a test hook)."""

    def __init__(self, cfg, bad_step: int) -> None:
        super().__init__(cfg)
        self.bad_step, self.calls = bad_step, 0

    def loss(self, model, batch_size, generator):
        self.calls += 1  # one call per step (grad_accum 1)
        loss = super().loss(model, batch_size, generator)
        return loss * math.nan if self.calls >= self.bad_step else loss


def finite_weights(ckpt) -> bool:
    return all(bool(t.isfinite().all()) for name in (io.MODEL_FILE, io.EMA_FILE)
               for t in load_file(str(ckpt / name)).values())


def test_a_nan_at_a_chosen_step_stops_training_and_the_last_checkpoint_is_good_and_resumable(tmp_path):
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=2")
    run = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(NaNAtStep(cfg, bad_step=5), run, progress=False)
    message = str(e.value)
    assert "\n" not in message and "diverged at step 5" in message and "the loss is nan" in message
    assert "train.lr=0.001" in message and f"difflab train --out {run} --resume --set train.lr=0.0001" in message
    ckpt = io.latest_checkpoint(run)
    assert ckpt.name == "step-00000004" and finite_weights(ckpt)
    train(ImageTask(apply_overrides(cfg, ["train.lr=1e-4"])), run, resume=True, progress=False)
    last = io.latest_checkpoint(run)
    assert io.load_state(last)["step"] == 10 and finite_weights(last)
    assert io.load_state(last)["optimizer"]["param_groups"][0]["initial_lr"] == 1e-4  # the new lr applied
    assert "lr: 0.0001" in (run / io.CONFIG_FILE).read_text()


def test_an_absurd_learning_rate_is_one_line_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--no-progress", "--max-steps", "20", "--set", *TINY,
                 "train.lr=1e30", "train.warmup_steps=0", "train.checkpoint_every=1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training diverged at step" in err[0] and "train.lr=1e+30" in err[0], err
    assert not run.exists()  # killed before its first checkpoint: nothing to resume, nothing left behind


def test_no_checkpoint_with_non_finite_weights_is_written(tmp_path):
    cfg = tiny_config("train.max_steps=2", "train.checkpoint_every=1")
    task = ImageTask(cfg)
    run = tmp_path / "run"
    trainer = train_module._Trainer(task, run, resume=False, progress=False)
    trainer.step = 1
    trainer.save()
    with torch.no_grad():
        next(trainer.ema.parameters()).fill_(math.inf)
    trainer.step = 2
    with pytest.raises(UserError, match="is not finite, so no checkpoint was written at step 2"):
        trainer.save()
    assert io.latest_checkpoint(run).name == "step-00000001" and finite_weights(io.latest_checkpoint(run))


def test_one_writer_per_run_folder_and_stale_locks_are_taken_over(tmp_path):
    run = tmp_path / "run"
    with io.run_lock(run):
        with pytest.raises(UserError, match=f"is being trained right now by process {os.getpid()}"):
            with io.run_lock(run):
                pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / io.LOCK_FILE).write_text(f"{dead.pid}\n")  # the lock file a killed run left
    with io.run_lock(run):
        assert (run / io.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_second_train_into_a_training_folder_refuses_and_the_first_finishes_undisturbed(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(difflab_cmd("train", "--out", str(run), "--no-progress", "--max-steps", "100000",
                                         "--max-minutes", "0.4", "--set", *TINY, "train.checkpoint_every=10"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while io.latest_checkpoint(run) is None and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert io.latest_checkpoint(run) is not None, "the first run wrote no checkpoint"
        for args in (["--resume"], ["--set", "train.lr=1e-4"]):
            second = subprocess.run(difflab_cmd("train", "--out", str(run), "--no-progress", *args), cwd=ROOT,
                                    capture_output=True, text=True)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr
            assert ("is being trained right now by process" in lines[0] if args == ["--resume"]
                    else "already holds a run" in lines[0]), lines
        # sampling while it trains reads the newest complete checkpoint
        sample = subprocess.run(difflab_cmd("sample", str(run), "--n", "4", "--steps", "2", "--out",
                                            str(tmp_path / "s.npz")), cwd=ROOT, capture_output=True, text=True)
        assert sample.returncode == 0, sample.stderr
        assert first.poll() is None, "the first run ended before the checks: make it longer"
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    state = io.load_state(io.latest_checkpoint(run))
    assert state["finished"] and finite_weights(io.latest_checkpoint(run))
    rows = io.read_metrics(run)
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == state["step"]


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--no-progress", "--max-steps", "4", "--set", *TINY,
            "train.checkpoint_every=2", "train.max_minutes=null"]
    real_save = io.save_file
    writes = []

    def full_disk(tensors, filename):
        writes.append(filename)
        if len(writes) > 2:  # the second checkpoint: half a file, then the disk is full
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save(tensors, filename)

    monkeypatch.setattr(io, "save_file", full_disk)
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the disk is full" in err[0] and "checkpoint" in err[0], err
    ckpt = io.latest_checkpoint(run)
    assert ckpt.name == "step-00000002" and finite_weights(ckpt) and io.load_state(ckpt)["step"] == 2
    assert not list((run / io.CHECKPOINTS).glob(".tmp-*"))
    monkeypatch.setattr(io, "save_file", real_save)  # space freed: --resume continues from step 2
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert io.load_state(io.latest_checkpoint(run))["step"] == 4


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_state_file_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, write in (("raw", pickle.dump), ("torch", torch.save)):
        path = tmp_path / f"{name}.pt"
        with open(path, "wb") as f:
            write({"step": 1, "optimizer": _Payload(marker)}, f)
        with pytest.raises(UserError, match="holds Python objects other than tensors and numbers"):
            files.read_torch_state(path)
    assert not marker.exists()


def test_an_unforeseen_error_is_one_line_and_a_log(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "1", "--set", *TINY]) == 0

    def broken(*_, **__):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("difflab.tasks.image.ImageRun.sample", broken)
    code = main(["sample", str(run), "--n", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unexpected ZeroDivisionError: a bug" in err[0], err
    log = run / "error.log"
    assert str(log) in err[0] and "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
    monkeypatch.setenv("DIFFLAB_DEBUG", "1")
    main(["sample", str(run), "--n", "2"])
    assert "Traceback" in capsys.readouterr().err
