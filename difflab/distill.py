"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Algorithm 2): a student learns to take in one deterministic DDIM step what its
teacher takes in two; round after round the steps halve (64 -> 32 -> ... -> N).

Notation (VP form, as the paper and :mod:`difflab.samplers.dpm_solver`):

=================  ==============================================================================
symbol             meaning
=================  ==============================================================================
``z_t``            a noisy sample alpha_t x + sigma_t eps of q(z_t | x) (the lecture's x_t)
``alpha_t``        sqrt(alpha_bar_t)
``sigma_t``        sqrt(1 - alpha_bar_t) (not the noise-to-signal sigma of :mod:`difflab.schedules`)
``t, t', t''``     a student step t -> t'' is the teacher's two steps t -> t' -> t''
``x_tilde``        the student's x0 target: one DDIM step t -> t'' with it lands on the teacher's z_t''
=================  ==============================================================================

A student of N steps evaluates at t_i = T (1 - i/N) - 1 (the ``trailing-fractional`` grid, equal to
``trailing`` when N divides T) and steps from the last one to clean data (``CLEAN_T``); its
teacher's grid of 2N steps nests it. Each round is trained by the one training loop
(:func:`difflab.train.train`) into ``OUT/steps-N/``, an ordinary run folder (config.yaml with
``sample.sampler: ddim``, ``sample.steps: N`` and a ``distill`` section; checkpoints) that
``difflab sample`` and ``difflab eval`` read without the teacher. Conditional teachers are
distilled with their classifier-free guidance built in (``sample.guidance`` of the run, as in
stage one of Meng et al. 2023, "On Distillation of Guided Diffusion Models"); students sample with
guidance 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab import io
from difflab.config import Config, DistillConfig, apply_overrides
from difflab.data.mixture import MIXTURES
from difflab.denoisers import (Cond, Denoiser, NetworkDenoiser, classifier_free_guidance, eps_from_x0,
                               prediction_target)
from difflab.errors import UserError
from difflab.losses import truncated_snr_weight
from difflab.samplers.common import with_clean
from difflab.schedules import Schedule, _expand, step_grid
from difflab.tasks import build_task
from difflab.tasks.image import load_image_model
from difflab.tasks.text_to_image import is_text_to_image
from difflab.train import train

GRID = "trailing-fractional"  # the nested time grids of students and teachers
ROUND_PREFIX = "steps-"  # OUT/steps-N/ holds the student of N steps
DEFAULT_LR = 3e-4  # beat 1e-3 on Fashion-MNIST at 1.5 CPU-minutes a round (README, "Few-step sampling ...")


def distillation_target(z_t: Tensor, z_s: Tensor, alpha_bar_t: Tensor, alpha_bar_s: Tensor) -> Tensor:
    """x_tilde, the student's x0 target (Salimans & Ho 2022, Algorithm 2)::

        x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

    the x0 with which one DDIM step (eta = 0) from z_t at t lands on z_t'' at t'' < t; for clean
    t'' (alpha_bar_s = 1, sigma_t'' = 0) it is z_t'' itself.

    Args:
        z_t: (B, ...) noisy samples at t. z_s: (B, ...) the teacher's samples z_t'' at t''.
        alpha_bar_t, alpha_bar_s: (B,) alpha_bar at t and t'' (float64 keeps the coefficients exact).
    """
    ratio = ((1 - alpha_bar_s) / (1 - alpha_bar_t)).sqrt()  # (B,) sigma_t'' / sigma_t
    denominator = alpha_bar_s.sqrt() - ratio * alpha_bar_t.sqrt()  # (B,)
    return (z_s - _expand(ratio, z_t) * z_t) / _expand(denominator, z_t)


def ddim_step(denoiser: Denoiser, z_t: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
              cond: Cond | None = None) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0) from times t to s < t, per sample.

    z_s = alpha_s x0_hat + sigma_s eps_hat: the forward process q(z_s | x0_hat) with the noise eps_hat
    that the denoiser implies at (z_t, t); the step of :func:`difflab.samplers.ddim.ddim`.

    Args:
        z_t: (B, ...). t, s: (B,) times; s may be ``CLEAN_T``.
    """
    x0_hat = denoiser(z_t, t, cond)
    eps_hat = eps_from_x0(z_t, x0_hat, _expand(schedule.alpha_bar_at(t), z_t))
    return schedule.q_sample(x0_hat, s, eps_hat)


class DistillTask:
    """One round as a task of :func:`difflab.train.train`: the student of ``config.distill.steps`` steps,
    initialised with the weights of ``teacher`` (a run folder, its EMA weights, frozen) of twice as many.

    Args:
        config: the student's config (:func:`student_config`).
        teacher: run folder of the teacher.
        guidance: classifier-free guidance of the teacher (1 = none; only the first teacher needs it).
    """

    def __init__(self, config: Config, teacher: str | Path, guidance: float = 1.0) -> None:
        self.base = build_task(config)  # ImageTask or TextToImageTask: batches and the network
        self.config: Config = self.base.config
        self.schedule: Schedule = self.base.schedule
        self.steps = self.config.distill.steps
        teacher_cfg, self.teacher_net = load_image_model(teacher)
        self.teacher = classifier_free_guidance(
            NetworkDenoiser(self.teacher_net, self.schedule, teacher_cfg.diffusion.prediction,
                            clip_x0=teacher_cfg.sample.clip_x0), guidance)
        self.times = with_clean(step_grid(self.schedule, 2 * self.steps, GRID))  # (2N + 1,): t_i at even i
        _check_run_files(self.run_files(), Path(teacher))

    def to(self, device: torch.device) -> None:
        self.base.to(device)
        self.teacher_net.to(device)
        self.times = self.times.to(device)

    def run_files(self) -> dict[str, str]:
        """The base task's files (a scratch encoder's vocabulary), so the student loads on its own."""
        return getattr(self.base, "run_files", dict)()

    def build_model(self) -> nn.Module:
        """The student, initialised with the teacher's weights."""
        model = self.base.build_model()
        model.load_state_dict(self.teacher_net.state_dict())
        return model

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 2 on a random batch: z_t at a student time t drawn uniformly per sample, the teacher's
        two DDIM steps t -> t' -> t'', and the squared error of the student's prediction against the target
        x_tilde in its own parameterisation, weighted by :func:`difflab.losses.truncated_snr_weight`."""
        x0, cond = self.base.batch(batch_size, generator)  # drop only for empty captions: cond_drop_prob 0
        i = 2 * torch.randint(0, self.steps, (len(x0),), device=x0.device, generator=generator)  # (B,)
        t, t1, t2 = self.times[i], self.times[i + 1], self.times[i + 2]  # (B,) each, float64
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        z_t = self.schedule.q_sample(x0, t, eps)
        alpha_bar_t = self.schedule.alpha_bar_at(t)  # (B,) float64
        with torch.no_grad():
            z_1 = ddim_step(self.teacher, z_t, t, t1, self.schedule, cond)
            z_2 = ddim_step(self.teacher, z_1, t1, t2, self.schedule, cond)
            x_tilde = distillation_target(z_t, z_2, alpha_bar_t, self.schedule.alpha_bar_at(t2))
        prediction = self.config.diffusion.prediction
        alpha_bar = _expand(alpha_bar_t, z_t)
        target = prediction_target(prediction, x_tilde, eps_from_x0(z_t, x_tilde, alpha_bar), alpha_bar)
        out = model(z_t, t.float(), **cond)
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
        snr = (alpha_bar_t / (1 - alpha_bar_t)).float()
        return (per_sample * truncated_snr_weight(snr, prediction)).mean()


def _check_run_files(files: dict[str, str], teacher: Path) -> None:
    """The files a task built from the data (a scratch vocabulary) must be the teacher's."""
    for name, text in files.items():
        if (teacher / name).is_file() and (teacher / name).read_text(encoding="utf-8") != text:
            raise UserError(f"{teacher / name} differs from the one built from the run's data: the data changed "
                            "since the teacher was trained; distill on the data it was trained on")


# -- rounds ------------------------------------------------------------------------------------
def plan_rounds(teacher_steps: int, steps: int, timesteps: int) -> list[int]:
    """Student steps of each round, ``teacher_steps`` halved down to ``steps`` (64, 4 -> [32, 16, 8, 4])."""
    if not 2 <= teacher_steps <= timesteps:
        raise UserError(f"--teacher-steps must be between 2 and the run's {timesteps} diffusion steps, "
                        f"got {teacher_steps}: pass e.g. --teacher-steps 64")
    halvings = [teacher_steps >> k for k in range(1, teacher_steps.bit_length()) if teacher_steps % (1 << k) == 0]
    if not halvings:
        raise UserError(f"--teacher-steps {teacher_steps} is odd, so it cannot be halved: pass e.g. --teacher-steps 64")
    if steps not in halvings:
        raise UserError(f"--steps {steps} is not --teacher-steps {teacher_steps} halved one or more times: "
                        f"pass one of {', '.join(map(str, halvings))}")
    return halvings[:halvings.index(steps) + 1]


def read_teacher(run: str | Path) -> Config:
    """The config of a trained image diffusion run; a one-line error for anything else."""
    cfg = io.read_run_config(run)
    kind = "CLIP" if cfg.task == "clip" else f"2-D mixture ({cfg.data.name})" if cfg.data.name in MIXTURES else None
    if kind:
        raise UserError(f"{run} is a {kind} run, not an image diffusion run: pass the --out folder of "
                        f"`difflab train` on images")
    io.require_checkpoint(run)
    return cfg


def student_config(teacher_cfg: Config, distill: DistillConfig, overrides: Sequence[str] = ()) -> Config:
    """The config of the student of ``distill.steps`` steps: the teacher's, sampled with deterministic
    DDIM on the student's grid and guidance 1, trained at ``DEFAULT_LR`` without warm-up or condition
    dropout, then ``overrides`` (``a.b=value``)."""
    N, T = distill.steps, teacher_cfg.diffusion.timesteps
    cfg = replace(teacher_cfg, model=replace(teacher_cfg.model, cond_drop_prob=0.0),
                  train=replace(teacher_cfg.train, lr=DEFAULT_LR, warmup_steps=0),
                  sample=replace(teacher_cfg.sample, sampler="ddim", eta=0.0, steps=N, guidance=1.0,
                                 grid="trailing" if T % N == 0 else GRID),
                  distill=distill)
    cfg = apply_overrides(cfg, list(overrides))
    fixed = (cfg.distill.teacher, cfg.distill.teacher_steps, cfg.distill.steps, cfg.sample.steps)
    if fixed != (distill.teacher, distill.teacher_steps, N, N):
        raise UserError("--set cannot change distill.teacher, distill.teacher_steps, distill.steps or sample.steps: "
                        "pass RUN, --teacher-steps and --steps instead")
    return cfg


def _check_out(out: Path, distill: DistillConfig, resume: bool) -> None:
    """One-line errors when ``out`` holds another distillation, or this one without --resume."""
    same = (distill.teacher, distill.teacher_steps, distill.guidance)
    for folder in sorted(out.glob(f"{ROUND_PREFIX}*")):
        if not (folder / io.CONFIG_FILE).is_file():
            continue
        d = io.read_run_config(folder).distill
        if (d.teacher, d.teacher_steps, d.guidance) != same:
            raise UserError(f"{out} holds a different distillation ({d.teacher} from {d.teacher_steps} steps, "
                            f"guidance {d.guidance:g}): choose another --out")
        if not resume and io.latest_checkpoint(folder) is not None:
            raise UserError(f"{out} already holds this distillation: pass --resume to continue it, "
                            "or choose another --out")


def distill(run: str | Path, steps: int, *, out: str | Path | None = None, teacher_steps: int = 64,
            minutes: float = 10.0, round_minutes: float | None = None, max_steps: int | None = None,
            overrides: Sequence[str] = (), resume: bool = False, progress: bool = True) -> Path:
    """Distill the run ``run`` into a student of ``steps`` DDIM steps; returns the student's run folder.

    Args:
        run: the first teacher, a trained image run (its EMA weights; unconditional, class-conditional
            or text-to-image).
        steps: network evaluations of the final student; ``teacher_steps`` halved one or more times.
        out: folder of the rounds, ``OUT/steps-N/`` (default ``RUN/distill``).
        teacher_steps: DDIM steps of the first teacher.
        minutes: wall-clock budget of all rounds together, split evenly.
        round_minutes: budget of each round instead. max_steps: optimizer steps of each round at most.
        overrides: ``a.b=value`` for every student's config (e.g. ``train.lr=1e-4``, ``distill.guidance=2``).
        resume: continue an interrupted distillation: finished rounds are skipped.
        progress: the training loop's progress bar.
    """
    run = Path(run).resolve()
    out = Path(out) if out is not None else run / "distill"
    teacher_cfg = read_teacher(run)
    plan = plan_rounds(teacher_steps, steps, teacher_cfg.diffusion.timesteps)
    conditional = teacher_cfg.model.num_classes > 0 or is_text_to_image(teacher_cfg)
    first = DistillConfig(teacher=str(run), teacher_steps=teacher_steps,
                          guidance=teacher_cfg.sample.guidance if conditional else 1.0)
    budget = [f"train.max_minutes={round_minutes or minutes / len(plan)}"]
    budget += [f"train.max_steps={max_steps}"] if max_steps is not None else []
    configs = {n: student_config(teacher_cfg, replace(first, steps=n), [*overrides, *budget]) for n in plan}
    _check_out(out, configs[steps].distill, resume)
    teacher: Path = run
    for k, n in enumerate(plan, 1):
        folder = out / f"{ROUND_PREFIX}{n}"
        head = f"round {k}/{len(plan)}: {2 * n} -> {n} steps"
        if resume and io.is_finished(folder):
            print(f"{head}: finished before, skipped ({folder})")
        else:
            cfg = configs[n]
            if resume and io.latest_checkpoint(folder) is not None:  # exact resume: the round's own config
                cfg = apply_overrides(io.read_run_config(folder), [*overrides, *budget])
            task = DistillTask(cfg, teacher, guidance=cfg.distill.guidance if teacher == run else 1.0)
            state = io.load_state(train(task, folder, resume=resume, progress=progress))
            rows = io.read_metrics(folder)
            loss = f", loss {rows[-1]['loss']:.4g}" if rows else ""
            print(f"{head}: {state['step']} optimizer steps in {state['elapsed_s'] / 60:.1f} min{loss} ({folder})")
        teacher = folder
    return teacher
