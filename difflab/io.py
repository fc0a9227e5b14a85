"""Run folders, checkpoints and atomic writes.

A run folder holds everything ``difflab sample`` needs::

    RUN/config.yaml                     the full resolved config
    RUN/metrics.jsonl                   one JSON row per logged training step
    RUN/checkpoints/step-00000500/      model.safetensors, ema.safetensors, state.pt
    RUN/checkpoints/latest              the name of the newest complete checkpoint
    RUN/samples/                        what ``difflab sample`` wrote by default

Every file is written to a temporary name in the same folder and renamed into place, and a
checkpoint folder is renamed into place only when all its files are complete, so a run
killed at any moment never leaves a half-written checkpoint. Weights are safetensors; the
training state (optimizer, step) is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from difflab.config import Config, dump_config, load_config
from difflab.errors import UserError
from difflab import files
from difflab.files import os_error, read_torch_state
from difflab.paths import atomic_path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
CHECKPOINT_PREFIX = "step-"
LOCK_FILE = ".lock"  # held (flock) by the one process training into the folder; holds its pid


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# -- run folder ---------------------------------------------------------------------------
def init_run(out: Path, cfg: Config) -> None:
    """Create a run folder and write its resolved config."""
    try:
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
    except OSError as e:
        raise os_error(e, out, "run folder") from None
    write_config(out, cfg)


def write_config(out: Path, cfg: Config) -> None:
    """(Re)write a run's resolved ``config.yaml``."""
    write_text_atomic(out / CONFIG_FILE, dump_config(cfg))


def holds_checkpoints(run: Path) -> bool:
    """Whether ``run`` or a stage folder inside it (``RUN/<name>``) holds a checkpoint."""
    return run.is_dir() and any(latest_checkpoint(p) is not None for p in [run, *run.iterdir()] if p.is_dir())


@contextlib.contextmanager
def provisional_run(run: Path) -> Iterator[None]:
    """Remove ``run`` again when it did not exist before the block and the block fails before any checkpoint
    in it (its own or a stage's): a refused command leaves nothing behind."""
    created = not run.exists()
    try:
        yield
    except BaseException:
        if created and not holds_checkpoints(run):
            shutil.rmtree(run, ignore_errors=True)
        raise


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Be the one writer of ``run`` while the block runs: an exclusive ``flock`` on ``RUN/.lock``.

    A second process refuses with one line naming the holder's pid. The kernel drops the lock when its
    process dies, however it dies, so the lock of a killed run is simply taken over. A folder this call
    created is removed again when the block fails before the first checkpoint (nothing in it to resume).
    """
    created = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(e, run, "run folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"{run} is being trained right now by process {holder}: wait for it to finish or stop it, "
                            "or train into another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    except BaseException:
        if created and latest_checkpoint(run) is None:
            shutil.rmtree(run, ignore_errors=True)
        raise
    finally:
        os.close(fd)  # releases the lock


def read_run_config(run: str | Path) -> Config:
    """The resolved config of a run folder (a clear error when it is not one)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist: pass the --out folder of a `difflab train` run")
    if not (run / CONFIG_FILE).is_file():
        raise UserError(f"{run} has no {CONFIG_FILE}, so it is not a run folder: pass the --out folder of a `difflab train` run")
    return load_config(run / CONFIG_FILE)


def list_checkpoints(run: str | Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (step numbers are zero-padded)."""
    return sorted(p for p in (Path(run) / CHECKPOINTS).glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None.

    A ``step-N`` folder exists only complete (it is renamed into place when written), so the newest one is
    right even when a run was killed between that rename and the update of the ``latest`` pointer.
    """
    done = list_checkpoints(run)
    return done[-1] if done else None


def is_finished(run: str | Path) -> bool:
    """Whether a run's newest checkpoint was written at the end of training (not by a killed run)."""
    ckpt = latest_checkpoint(run)
    return ckpt is not None and bool(load_state(ckpt).get("finished", False))


def require_checkpoint(run: str | Path) -> Path:
    """Like :func:`latest_checkpoint`, but a one-line error when there is none."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise UserError(f"run folder {run} has no checkpoints yet: train it first "
                        f"(`difflab train CONFIG --out {run}`) or let training reach a checkpoint")
    return ckpt


def save_checkpoint(run: Path, step: int, weights: dict[str, dict[str, Tensor]],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-N/`` with one safetensors file per entry of ``weights`` plus ``state.pt``.

    The folder appears only when complete; then ``latest`` points at it and all but the
    newest ``keep`` checkpoints are removed.
    """
    ckpts = run / CHECKPOINTS
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    with atomic_path(ckpts / name, "checkpoint") as tmp:
        tmp.mkdir()
        for filename, tensors in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / filename))
        torch.save(state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    write_text_atomic(ckpts / LATEST, name)
    old = sorted(p for p in ckpts.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())[:-keep] if keep > 0 else []
    for p in old:  # renamed first (atomic), so a kill during the removal never leaves a named, partial checkpoint
        doomed = p.with_name(f".tmp-{p.name}-removing")
        p.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return ckpts / name


def remove_stale_temporaries(run: Path) -> int:
    """Delete temporaries a killed process left in ``checkpoints/`` (never a named checkpoint)."""
    stale = list((run / CHECKPOINTS).glob(".tmp-*"))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def load_state(ckpt: Path) -> dict[str, Any]:
    """The training state of a checkpoint (plain tensors and numbers only: nothing in the file can run)."""
    state = read_torch_state(ckpt / STATE_FILE, "training state",
                             f"delete the folder {ckpt} to resume from the checkpoint before it")
    if "step" not in state:
        raise UserError(f"training state {ckpt / STATE_FILE} has no step, so it was not written by difflab: "
                        f"delete the folder {ckpt} to resume from the checkpoint before it")
    return state


def load_weights(module: nn.Module, file: Path) -> None:
    """Load a checkpoint's safetensors file into ``module``; a one-line error when it is unreadable or the
    architecture differs."""
    if not file.is_file():
        raise UserError(f"checkpoint file {file} is missing: the checkpoint is incomplete, use an earlier one")
    files.load_weights_into(module, file, "checkpoint file", f"delete the folder {file.parent} to use the "
                            "checkpoint before it, or retrain", "use the config the checkpoint was trained with")


# -- metrics ----------------------------------------------------------------------------------
def append_metrics(run: Path, row: dict[str, Any]) -> None:
    """Append one JSON row to ``metrics.jsonl``."""
    try:
        with open(run / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise os_error(e, run / METRICS_FILE, "training log") from None


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (a torn last line, from a kill mid-write, is ignored)."""
    path = run / METRICS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def truncate_metrics(run: Path, max_step: int) -> None:
    """Drop rows logged after ``max_step`` (used on resume, so the log matches the weights)."""
    rows = [r for r in read_metrics(run) if r.get("step", 0) <= max_step]
    write_text_atomic(run / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
