"""Run ``difflab train`` and SIGKILL this process at a chosen point (a helper of test_kill_resume.py).

    python tests/kill_train.py --die-at-step K --die-in WHERE -- <difflab train args...>

WHERE is one of:

    none                 no kill: an ordinary ``difflab train`` (the uninterrupted reference run)
    step                 right after optimizer step K, before it is logged or checkpointed
    checkpoint-weights   writing the step-K checkpoint: after its first weights file, before the rest
    checkpoint-state     writing the step-K checkpoint: half of state.pt written, then the kill
    before-latest        the step-K checkpoint folder renamed into place, the ``latest`` pointer not yet

The hooks are monkeypatches of difflab's own functions in this process only (no production
code knows about them); each kills with ``os.kill(os.getpid(), SIGKILL)``, so nothing (no
``finally``, no atexit, no buffered file) runs after it, as with ``kill -9``.
"""

from __future__ import annotations

import argparse
import io as _bytes_io
import os
import signal
import sys
from pathlib import Path

WHERE = ("none", "step", "checkpoint-weights", "checkpoint-state", "before-latest")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(where: str, at_step: int) -> None:
    import torch

    from difflab import io, train

    if where == "step":
        real_step = train._Trainer.train_step

        def train_step(self):
            loss = real_step(self)
            if self.step == at_step:
                die()
            return loss

        train._Trainer.train_step = train_step
        return
    if where == "none":
        return

    writing = {"step": None}  # the step of the checkpoint being written, while save_checkpoint runs
    real_save_checkpoint = io.save_checkpoint

    def save_checkpoint(run, step, *args, **kwargs):
        writing["step"] = step
        try:
            return real_save_checkpoint(run, step, *args, **kwargs)
        finally:
            writing["step"] = None

    io.save_checkpoint = save_checkpoint

    if where == "checkpoint-weights":
        real_save_file = io.save_file

        def save_file(tensors, filename, *args, **kwargs):
            real_save_file(tensors, filename, *args, **kwargs)
            if writing["step"] == at_step:
                die()  # the first weights file is complete, the others and state.pt are not written

        io.save_file = save_file
    elif where == "checkpoint-state":
        real_torch_save = torch.save

        def torch_save(obj, f, *args, **kwargs):
            if writing["step"] != at_step or not str(f).endswith(io.STATE_FILE):
                return real_torch_save(obj, f, *args, **kwargs)
            buf = _bytes_io.BytesIO()
            real_torch_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(f, "wb") as fh:  # a torn state.pt: half its bytes, on disk
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            die()

        torch.save = torch_save
    elif where == "before-latest":
        real_write_text_atomic = io.write_text_atomic

        def write_text_atomic(path, text):
            if writing["step"] == at_step and Path(path).name == io.LATEST:
                die()  # step-K/ is complete and in place; `latest` still names the previous checkpoint
            return real_write_text_atomic(path, text)

        io.write_text_atomic = write_text_atomic


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: kill_train.py --die-at-step K --die-in WHERE -- <difflab train args...>")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="kill_train.py")
    p.add_argument("--die-at-step", type=int, default=0)
    p.add_argument("--die-in", choices=WHERE, default="none")
    args = p.parse_args(argv[:split])
    install(args.die_in, args.die_at_step)
    from difflab.cli import main as difflab_main

    return difflab_main(["train", *argv[split + 1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
