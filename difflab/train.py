"""The one training loop, on Hugging Face Accelerate, for every task.

A task is a :class:`difflab.tasks.base.Task`: it supplies ``config`` (resolved), ``build_model()``,
``to(device)``, ``loss(model, batch_size, generator)``, ``run_files()`` (name -> text of files that
belong beside the config, e.g. a tokenizer's vocabulary) and ``preview(model)`` (a small picture of
samples for the logs). The loop adds what every run needs: AdamW with warm-up, gradient clipping and
accumulation, EMA weights (used for sampling), bf16 autocast, step and wall-clock budgets, a tqdm bar
whose total and ETA follow whichever budget ends the run first, ``metrics.jsonl``, atomic checkpoints
and exact resume. Each step draws its batch and noise from a generator seeded by (seed, step, rank),
so a resumed run continues exactly where the uninterrupted one would have been.

Guards: one process trains into a folder at a time (``RUN/.lock``, see :func:`difflab.io.run_lock`); a loss
or gradient that is not finite stops the run before the optimizer step, with one line naming the step and
the fix, and no checkpoint with non-finite weights is ever written, so the newest one is the last good one.
A ``train.lr`` given with ``--resume`` replaces the saved one.

What a run folder gets from training::

    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        a row every log_every steps: step, loss, lr, img_per_s, elapsed_s, peak_rss_mb
    RUN/checkpoints/step-N/  weights (model, EMA) and the optimizer state
    RUN/logs/train/          train.log_with=tensorboard only: TensorBoard events of the loss, lr and
                             images/s (every log_every steps) and a grid of EMA samples (every checkpoint);
                             view with ``tensorboard --logdir RUN/logs``

Multi-process: ``accelerate launch --cpu --num_processes 2 -m difflab.cli train ...``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast
from torch import nn
from tqdm.auto import tqdm

from difflab import io
from difflab.config import Config, TrainConfig, from_dict, to_dict
from difflab.errors import UserError

if TYPE_CHECKING:  # only for annotations: importing difflab.tasks would load every task's package
    from difflab.tasks.base import Task

LR_DECAYS = ("none", "cosine")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
LOG_WITH = ("none", "tensorboard")  # train.log_with: Accelerate trackers difflab writes to
LOGS_DIR = "logs"  # RUN/logs: the trackers' folder
TRACKER_RUN = "train"  # ... and the tracker's run in it: RUN/logs/train
PREVIEW_TAG = "samples"  # the TensorBoard image of task.preview(ema) at each checkpoint
COSINE_FLOOR = 0.1  # cosine decay ends at this fraction of the peak learning rate
ADAM_BETA1 = 0.9  # AdamW's first-moment decay (Kingma & Ba 2015, Algorithm 1's default); beta_2 is train.adam_beta2
EMA_WARMUP = 10  # EMA decay ramps as (1 + step) / (EMA_WARMUP + step), as in many EMA codes
SEED_STRIDE = 1_000_003  # separates the per-step generator seeds of runs with different seeds


def check_train_config(t: TrainConfig) -> None:
    """One-line errors for training options that cannot work (the numbers are checked where configs are read,
    by their rules in :mod:`difflab.config`)."""
    if t.lr_decay not in LR_DECAYS:
        raise UserError(f"unknown train.lr_decay {t.lr_decay!r}: use one of {', '.join(LR_DECAYS)}")
    if t.mixed_precision not in MIXED_PRECISIONS:
        raise UserError(f"unknown train.mixed_precision {t.mixed_precision!r}: use one of {', '.join(MIXED_PRECISIONS)}")
    if t.log_with not in LOG_WITH:
        raise UserError(f"unknown train.log_with {t.log_with!r}: use one of {', '.join(LOG_WITH)}")
    if t.log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UserError("train.log_with=tensorboard needs the tensorboard package: pip install 'difflab[tensorboard]'")


def lr_factor(step: int, t: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then constant or cosine decay to COSINE_FLOOR at the end of the budget.

    The end is whichever comes first: ``max_steps``, or ``max_minutes`` of wall clock
    (``time_fraction`` is the part of it used so far), so a run stopped by its minute budget
    still ends its decay where it stops.
    """
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_decay == "cosine" and t.max_steps > t.warmup_steps:
        progress = max((step - t.warmup_steps) / (t.max_steps - t.warmup_steps), time_fraction)
        progress = min(1.0, progress)
        return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def bar_total(step: int, elapsed_s: float, max_steps: int, max_minutes: float | None) -> int:
    """The step the run will stop at, for the progress bar's total and ETA.

    ``max_steps`` when no minute budget is set or nothing has been measured yet; else the steps per
    second so far (``step`` in ``elapsed_s``, resumed parts included) extrapolated to ``max_minutes``,
    capped by ``max_steps`` and never below ``step``.
    """
    if not max_minutes or step <= 0 or elapsed_s <= 0:
        return max_steps
    estimate = math.ceil(step / elapsed_s * 60 * max_minutes)
    return max(step, min(max_steps, estimate))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach().float() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Trainer:
    """State of one training run; :func:`train` is the public entry point."""

    def __init__(self, task: Task, out: Path, resume: bool, progress: bool) -> None:
        self.task, self.out, self.cfg = task, out, task.config
        t = self.cfg.train
        self.tracking = t.log_with != "none"
        self.acc = Accelerator(mixed_precision=t.mixed_precision, dynamo_backend="inductor" if t.compile else "no",
                               log_with=t.log_with if self.tracking else None, project_dir=out / LOGS_DIR)
        task.to(self.acc.device)
        torch.manual_seed(t.seed)  # weight init is the same on every process
        model = task.build_model()
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(model).float().requires_grad_(False).to(self.acc.device)
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(ADAM_BETA1, t.adam_beta2),
                                weight_decay=t.weight_decay)
        self.t0, self.elapsed_before, self.budget_used = time.perf_counter(), 0.0, 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t, self.budget_used))
        self.model, self.opt, self.sched = self.acc.prepare(model, opt, sched)
        self.step, self.previewed = 0, -1  # previewed: the step of the last preview logged
        self.progress = progress and self.acc.is_main_process
        if resume:
            self._resume()
        elif self.acc.is_main_process:
            io.init_run(out, self.cfg)
        if self.acc.is_main_process:
            for name, text in task.run_files().items():
                io.write_text_atomic(out / name, text)
        if self.tracking:  # on resume, events a killed run wrote after the checkpoint are hidden (purged)
            self.acc.init_trackers(TRACKER_RUN, init_kwargs={"tensorboard": {"purge_step": self.step + 1}})
        self.acc.wait_for_everyone()

    def _resume(self) -> None:
        if self.acc.is_main_process:
            io.remove_stale_temporaries(self.out)
        ckpt = io.latest_checkpoint(self.out)
        if ckpt is None:  # killed before its first checkpoint: start again, without the rows that run logged
            if self.acc.is_main_process:
                io.init_run(self.out, self.cfg)
                io.truncate_metrics(self.out, 0)
            return
        io.load_weights(self.plain_model(), ckpt / io.MODEL_FILE)
        io.load_weights(self.ema, ckpt / io.EMA_FILE)
        state = io.load_state(ckpt)
        self.opt.optimizer.load_state_dict(state["optimizer"])
        self.sched.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        self._apply_new_optimizer_settings()
        if self.acc.is_main_process:
            io.truncate_metrics(self.out, self.step)
            io.write_config(self.out, self.cfg)  # what --set changed on resume (a lower lr, a longer budget)
            print(f"resuming {self.out} from step {self.step}")

    def _apply_new_optimizer_settings(self) -> None:
        """After loading a checkpoint: a ``train.lr``, ``train.weight_decay`` or ``train.adam_beta2`` given on resume
        replaces the saved one (the optimizer state would otherwise restore it); unchanged settings leave the state
        exactly as saved."""
        t, sched = self.cfg.train, self.sched.scheduler
        for i, group in enumerate(self.opt.optimizer.param_groups):
            if sched.base_lrs[i] != t.lr:
                sched.base_lrs[i] = group["initial_lr"] = t.lr
                group["lr"] = t.lr * sched.lr_lambdas[i](sched.last_epoch)
            group["weight_decay"] = t.weight_decay
            group["betas"] = (group["betas"][0], t.adam_beta2)

    def save(self, finished: bool = False) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            weights = {io.MODEL_FILE: self.plain_model().state_dict(),
                       io.EMA_FILE: self.ema.state_dict()}
            for filename, tensors in weights.items():  # never a non-finite checkpoint: the last good one stays
                bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())),
                           None)
                if bad is not None:
                    raise UserError(f"{self.diverged()}: weight {bad} of {filename} is not finite, so no "
                                    f"checkpoint was written at step {self.step}: {self.fix()}")
            state = {"step": self.step, "optimizer": self.opt.optimizer.state_dict(),
                     "scheduler": self.sched.scheduler.state_dict(), "elapsed_s": self.elapsed(),
                     "finished": finished}
            io.save_checkpoint(self.out, self.step, weights, state, keep=self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()

    def plain_model(self) -> nn.Module:
        """The model without its process and compile wrappers (its state_dict keys are the module's)."""
        return self.acc.unwrap_model(self.model, keep_torch_compile=False)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def train_step(self) -> float:
        t = self.cfg.train
        seed = (t.seed * SEED_STRIDE + self.step) * self.acc.num_processes + self.acc.process_index
        generator = torch.Generator(device=self.acc.device).manual_seed(seed)
        total = 0.0
        for micro in range(t.grad_accum):
            sync = micro == t.grad_accum - 1
            with self.acc.no_sync(self.model) if not sync else contextlib.nullcontext():
                with self.acc.autocast():
                    loss = self.task.loss(self.model, t.batch_size, generator) / t.grad_accum
                self.acc.backward(loss)
            total += loss.item()
        if t.grad_clip > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), t.grad_clip))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters()
                                                             if p.grad is not None]))
        self.check_finite(total, grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        ema_update(self.ema, self.plain_model(),
                   min(t.ema_decay, (1 + self.step) / (EMA_WARMUP + self.step)))
        return total

    def check_finite(self, loss: float, grad_norm: float) -> None:
        """Stop, before the optimizer step, when the loss or the gradient is not finite (NaN or inf).

        Under fp16 an infinite gradient is the loss scaler's business (it skips the step), so only the loss
        counts there. Every process reaches the same decision.
        """
        grads_count = self.cfg.train.mixed_precision != "fp16"
        bad = not math.isfinite(loss) or (grads_count and not math.isfinite(grad_norm))
        if self.acc.num_processes > 1:
            bad = bool(self.acc.reduce(torch.tensor(float(bad), device=self.acc.device), "max").item())
        if bad:
            what = f"the loss is {loss:g}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm:g}"
            raise UserError(f"{self.diverged(self.step + 1)}: {what}: {self.fix()}")

    def diverged(self, step: int | None = None) -> str:
        return f"training diverged at step {self.step if step is None else step}"

    def fix(self) -> str:
        """The way out of a diverged run: a lower learning rate, from the last good checkpoint."""
        lr = self.cfg.train.lr
        last = io.latest_checkpoint(self.out)
        again = (f"resume from the last good checkpoint ({last.name}) with `difflab train --out {self.out} --resume "
                 f"--set train.lr={lr / 10:g}`" if last is not None else
                 f"train again with a lower one, e.g. --set train.lr={lr / 10:g}")
        return f"the learning rate (train.lr={lr:g}) is probably too high: {again}"

    def should_stop(self) -> bool:
        """Whether a budget is spent; also updates ``budget_used``, the part of the minute budget
        used so far, which the lr decay reads (the main process's clock, so every process agrees)."""
        minutes = self.cfg.train.max_minutes
        used = self.elapsed() / (60 * minutes) if minutes else 0.0
        stop = self.step >= self.cfg.train.max_steps or used >= 1.0
        if self.acc.num_processes > 1:  # every process must stop at the same step, with the same lr
            flags = broadcast(torch.tensor([float(stop), used], dtype=torch.float64, device=self.acc.device))
            stop, used = bool(flags[0].item()), float(flags[1].item())
        self.budget_used = used
        return stop

    def log(self, bar: tqdm, loss: float, images: int, since: float) -> None:
        """Append a row to metrics.jsonl (and the trackers) and show loss and images/s on the bar."""
        t = self.cfg.train
        row = {"step": self.step, "loss": loss, "lr": self.sched.get_last_lr()[0],
               "img_per_s": images / (time.perf_counter() - since),
               "elapsed_s": round(self.elapsed(), 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
        budget = {"minutes_used": f"{self.budget_used:.0%}"} if t.max_minutes else {}
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{row['img_per_s']:.0f}", **budget)
        if self.acc.is_main_process:
            io.append_metrics(self.out, row)
        if self.tracking:
            self.acc.log({k: row[k] for k in ("loss", "lr", "img_per_s")}, step=self.step)

    def log_preview(self) -> None:
        """Log ``task.preview`` of the EMA model as an image (once per step, main process only)."""
        if not self.tracking or not self.acc.is_main_process or self.previewed == self.step:
            return
        self.previewed = self.step
        image = self.task.preview(self.ema)  # uint8 (H, W, C) or None
        if image is not None:
            writer = self.acc.get_tracker("tensorboard").writer
            writer.add_image(PREVIEW_TAG, image, self.step, dataformats="HWC")

    def end_trackers(self) -> None:
        """Close the trackers (what ``Accelerator.end_training`` does, without destroying the process group,
        which a later :func:`train` in this process, such as distillation's next round, still needs)."""
        for tracker in self.acc.trackers:
            tracker.finish()

    def run(self) -> None:
        t = self.cfg.train
        self.t0 = time.perf_counter()  # the minute budget counts the whole run, resumed parts included
        images_per_step = t.batch_size * t.grad_accum * self.acc.num_processes
        bar = tqdm(total=bar_total(self.step, self.elapsed(), t.max_steps, t.max_minutes), initial=self.step,
                   disable=not self.progress, desc="train", unit="step", dynamic_ncols=True)
        window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
        self.model.train()
        try:
            while not self.should_stop():
                window_loss += self.train_step()
                window_steps += 1
                bar.total = bar_total(self.step, self.elapsed(), t.max_steps, t.max_minutes)  # ETA: the binding budget
                bar.update(1)
                if self.step % t.log_every == 0:
                    self.log(bar, window_loss / window_steps, images_per_step * window_steps, window_t0)
                    window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
                if self.step % t.checkpoint_every == 0:
                    self.save()
                    self.log_preview()
            if window_steps:
                self.log(bar, window_loss / window_steps, images_per_step * window_steps, window_t0)
            bar.total = self.step
            bar.close()
            self.save(finished=True)
            self.log_preview()
        finally:
            self.end_trackers()


def check_fresh(out: Path, resume: bool) -> None:
    """One line when ``out`` already holds a run with checkpoints and ``resume`` is not asked for."""
    if not resume and io.latest_checkpoint(out) is not None:
        raise UserError(f"{out} already holds a run with checkpoints: pass --resume to continue it, or choose "
                        "another --out")


def train(task: Task, out: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train ``task`` into the run folder ``out``; returns the last checkpoint folder.

    Args:
        task: supplies the resolved config, the model and the loss.
        out: run folder; must not hold checkpoints unless ``resume``.
        resume: continue from the newest checkpoint in ``out`` (exactly: same batches, noise
            and optimizer state as the uninterrupted run).
    """
    out = Path(out)
    from_dict(Config, to_dict(task.config))  # the rules of every value, for configs built in code too
    check_train_config(task.config.train)
    check_fresh(out, resume)
    with io.run_lock(out) if PartialState().is_main_process else contextlib.nullcontext():
        trainer = _Trainer(task, out, resume, progress)
        trainer.run()
        return io.require_checkpoint(out)
