"""Few-step students: a student learns to take in one deterministic DDIM step what its teacher takes
in several. Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling
of Diffusion Models", Algorithm 2) halves the steps round after round (e.g. 4 -> 2 -> 1); trajectory
distillation (the default, below) learns the best few-step sampler's trajectories in one round.

Notation (VP form, as the paper and :mod:`difflab.samplers.dpm_solver`):

=================  ==============================================================================
symbol             meaning
=================  ==============================================================================
``z_t``            a noisy sample alpha_t x + sigma_t eps of q(z_t | x) (the lecture's x_t)
``alpha_t``        sqrt(alpha_bar_t)
``sigma_t``        sqrt(1 - alpha_bar_t) (not the noise-to-signal sigma of :mod:`difflab.schedules`)
``t, t', t''``     a student step t -> t'' is the teacher's two steps t -> t' -> t'' (later rounds)
``K``              teacher steps per student step: 2 in later rounds, ``teacher_substeps`` in the first
``x_tilde``        the student's x0 target: one DDIM step t -> t'' with it lands on the teacher's z_t''
=================  ==============================================================================

The first round may start from a stronger teacher than the paper's 2N-step DDIM: the run itself
integrating each student step t_i -> t_{i+1} with K steps of DPM-Solver++(2S) (Lu et al. 2022,
Algorithm 1; :func:`difflab.samplers.dpm_solver.dpmpp_2s_step`), so that a 4-step student learns
from an accurate solution of the probability-flow ODE in one round instead of after many halvings
(``teacher_solver``, ``teacher_substeps``; :func:`teacher_grid` places the substeps). The target
x_tilde only needs z_t and the teacher's end point, so it is the same for every teacher. Later
rounds are Algorithm 2: two DDIM steps of the previous student.

**Trajectory distillation** (``teacher_solver: dpmpp-2m``, the default) takes the teacher to be the
run's best few-step sampler instead: DPM-Solver++(2M) on the ``edm`` grid of M steps (Lu et al. 2022,
Algorithm 2; :func:`difflab.samplers.dpm_solver.dpmpp_2m_trajectory`), run from pure noise, which on
Fashion-MNIST samples better (FID) than an accurate solution of the ODE. The student of N steps
evaluates at the ``edm-open`` grid (the ``edm`` grid of N + 1 steps without its last time,
sigma_min, where a step would hardly move), every time of which is a time of the teacher's grid
(M = K N + 1): each of its steps is the teacher's K steps between two of its times
(``teacher_substeps``; the last student step also takes the teacher's final one, from sigma_min to
clean data), with the same target x_tilde. Its inputs z_t are the teacher's own states, so the
student is trained where it samples (as in knowledge distillation, Luhman & Luhman 2021, but at
every step), and M teacher calls give N training pairs. One round: no halving.

A progressive student of N steps evaluates at t_i = T (1 - i/N) - 1 (the ``trailing-fractional``
grid, equal to ``trailing`` when N divides T) and steps from the last one to clean data (``CLEAN_T``); its
teacher's grid nests it. Each round is trained by the one training loop
(:func:`difflab.train.train`) into ``OUT/steps-N/``, an ordinary run folder (config.yaml with
``sample.sampler: ddim``, ``sample.steps: N`` and a ``distill`` section; checkpoints) that
``difflab sample`` and ``difflab eval`` read without the teacher. Conditional teachers are
distilled with their classifier-free guidance built in (``sample.guidance`` of the run, as in
stage one of Meng et al. 2023, "On Distillation of Guided Diffusion Models"); students sample with
guidance 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from difflab import files, io
from difflab.config import Config, DistillConfig, apply_overrides
from difflab.denoisers import Cond, eps_from_x0, prediction_target
from difflab.errors import UserError
from difflab.losses import per_sample_mse, truncated_snr_weight
from difflab.samplers.common import with_clean
from difflab.samplers.ddim import ddim_step
from difflab.samplers.dpm_solver import dpmpp_2m_trajectory, dpmpp_2s_step
from difflab.schedules import CLEAN_T, Schedule, append_dims, logsnr_spaced, step_grid
from difflab.tasks import gaussian_run, gaussian_task
from difflab.train import train

GRID = "trailing-fractional"  # the nested time grids of students and teachers
ROUND_PREFIX = "steps-"  # OUT/steps-N/ holds the student of N steps
DEFAULT_LR = 3e-4  # beat 1e-3 on Fashion-MNIST at 1.5 CPU-minutes a round (BENCHMARKS.md, "FID against NFE")
# one step (denoiser, z_t, t, s, schedule, cond) -> z_s at per-sample times, from difflab.samplers
TEACHER_SOLVERS: dict[str, Callable[..., Tensor]] = {"ddim": ddim_step, "dpmpp-2s": dpmpp_2s_step}
DEFAULT_SUBSTEPS = {"ddim": 2, "dpmpp-2s": 4}  # first-teacher steps per first-student step (ddim: Algorithm 2)
TRAJECTORY = "dpmpp-2m"  # the teacher solver of trajectory distillation (a whole sampler, not a step)
TEACHER_GRID = "edm"  # the teacher's grid: the best few-step grid of dpmpp-2m
TRAJECTORY_GRID = "edm-open"  # the student's: the edm grid of N + 1 steps without sigma_min, nested in the teacher's
TRAJECTORY_TEACHER_STEPS = 8  # best M on the 5- and 30-min Fashion-MNIST models (BENCHMARKS.md, "Few-step students")
TRAJECTORY_LR = 1e-3  # beat 3e-4 and 2e-3 on the 5- and 30-min models (BENCHMARKS.md, "Few-step students")
SOLVERS = (TRAJECTORY, *TEACHER_SOLVERS)
DEFAULT_SOLVER = TRAJECTORY
FIRST_STEPS = 4  # default steps of the first student (or --steps, if more)
FIRST_ROUND_SHARE = 0.5  # of --minutes, to the first round; the rest split evenly
STUDENT_EMA_DECAY = 0.99  # EMA horizon of ~100 of a round's few hundred optimizer steps
LATER_ROUNDS = ("ddim", 2)  # Algorithm 2: the previous student's two DDIM steps


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
    return (z_s - append_dims(ratio, z_t) * z_t) / append_dims(denominator, z_t)


def teacher_grid(schedule: Schedule, steps: int, solver: str = "ddim", substeps: int = 2) -> Tensor:
    """The teacher's times within each student step: (N, K + 1), row i from t_i to t_{i+1} in K steps.

    The substeps are those of the nested grid of N K steps (evenly spaced in t; Algorithm 2 for K = 2),
    except that a ``dpmpp-2s`` teacher spaces them evenly in log-SNR in the last student step: its
    2nd-order step has no midpoint at clean data, so it takes K - 1 steps down to t = 0 and the 1st-order
    one from there (on Fashion-MNIST this made the end point 2-4x more accurate at K = 4 to 8; in the
    first student step, which starts at sigma ~ 2e4 under the cosine schedule, even spacing in t is the
    more accurate one).

    Args:
        steps: N, the student's steps. solver: a name in ``TEACHER_SOLVERS``. substeps: K.
    """
    grid = with_clean(step_grid(schedule, steps * substeps, GRID)).unfold(0, substeps + 1, substeps)  # (N, K + 1)
    if solver == "dpmpp-2s" and substeps > 1:
        ends = torch.tensor([float(grid[-1, 0]), 0.0], dtype=torch.float64)
        last = logsnr_spaced(schedule, *schedule.sigma_at(ends).tolist(), substeps)  # (K,)
        last[0], last[-1] = ends
        grid = torch.cat([grid[:-1], torch.cat([last, last.new_tensor([CLEAN_T])])[None]])
    return grid


def trajectory_substeps(steps: int, teacher_steps: int) -> int:
    """K, the teacher steps per student step of trajectory distillation (the last student step takes
    one more: the teacher's from sigma_min to clean data)."""
    return (teacher_steps - 1) // steps


def trajectory_teacher_steps(steps: int, substeps: int | None = None) -> int:
    """M for a student of N steps: ``substeps`` per student step, or by default the M nearest
    ``TRAJECTORY_TEACHER_STEPS`` (the fewer on a tie; 2 per student step at least) whose ``edm`` grid
    holds the student's."""
    if substeps is None:
        below = (TRAJECTORY_TEACHER_STEPS - 1) // steps  # substeps of the nesting M at or below the best
        substeps = max(2, min((below, below + 1), key=lambda k: abs(k * steps + 1 - TRAJECTORY_TEACHER_STEPS)))
    return substeps * steps + 1


def check_trajectory_steps(steps: int, teacher_steps: int, timesteps: int) -> None:
    """One-line errors where the ``edm`` grid of M teacher steps does not hold the student's N."""
    if not steps < teacher_steps <= timesteps or (teacher_steps - 1) % steps:
        raise UserError(f"--teacher-steps {teacher_steps} does not hold the {steps} steps of the student in its grid "
                        f"(at most {timesteps}, and teacher steps - 1 a multiple of student steps): pass e.g. "
                        f"--teacher-steps {trajectory_teacher_steps(steps)}")


def trajectory_grid(schedule: Schedule, steps: int, teacher_steps: int) -> tuple[Tensor, list[int]]:
    """The teacher's times (M,) float64, the ``edm`` grid of M = K N + 1 steps with the student's
    ``edm-open`` grid of N steps put in exactly (every K-th time), and the N + 1 positions of the
    student's times and of clean data among the M + 1 states of
    :func:`difflab.samplers.dpm_solver.dpmpp_2m_trajectory`."""
    check_trajectory_steps(steps, teacher_steps, schedule.T)
    K = trajectory_substeps(steps, teacher_steps)
    index = [i * K for i in range(steps)] + [teacher_steps]
    times = step_grid(schedule, teacher_steps, TEACHER_GRID).clone()
    times[index[:-1]] = step_grid(schedule, steps, TRAJECTORY_GRID)
    return times, index


class DistillTask:
    """One round as a task of :func:`difflab.train.train`: the student of ``config.distill.steps`` steps,
    initialised with the weights of ``teacher`` (a run folder, its EMA weights, frozen).

    Args:
        config: the student's config (:func:`student_config`).
        teacher: run folder of the teacher.
        first_round: the teacher is the trained run, taking ``config.distill.teacher_substeps`` steps of
            ``teacher_solver`` per student step with guidance ``config.distill.guidance`` (for ``dpmpp-2m``
            along its trajectories from noise); otherwise it is the previous student, taking two DDIM steps
            with guidance 1 (``LATER_ROUNDS``).
    """

    def __init__(self, config: Config, teacher: str | Path, first_round: bool = True) -> None:
        self.base = gaussian_task(config)  # batches and the network of the run's own kind
        self.config: Config = self.base.config
        self.schedule: Schedule = self.base.schedule
        self.steps = self.config.distill.steps
        d = self.config.distill
        solver, substeps = (d.teacher_solver, d.teacher_substeps) if first_round else LATER_ROUNDS
        check_teacher_solver(solver, substeps)
        teacher_run = gaussian_run(teacher)
        self.teacher_net = teacher_run.model
        self.teacher = teacher_run.denoiser(d.guidance if first_round else 1.0)
        self.trajectory = solver == TRAJECTORY
        if self.trajectory:  # teacher's times (M,), positions of the student's among its states (N + 1)
            self.times, self.index = trajectory_grid(self.schedule, self.steps, d.teacher_steps)
            self.student_times = with_clean(self.times)[self.index]  # (N + 1,) the student's times, then clean
        else:
            self.teacher_step = TEACHER_SOLVERS[solver]
            self.grid = teacher_grid(self.schedule, self.steps, solver, substeps)  # (N, K + 1)
        _check_run_files(self.run_files(), Path(teacher))

    def to(self, device: torch.device) -> None:
        self.base.to(device)
        self.teacher_net.to(device)
        if self.trajectory:
            self.student_times = self.student_times.to(device)
        else:
            self.grid = self.grid.to(device)

    def run_files(self) -> dict[str, str]:
        """The base task's files (a scratch encoder's vocabulary), so the student loads on its own."""
        return self.base.run_files()

    def preview(self, model: nn.Module) -> np.ndarray | None:
        """The base task's preview of the student."""
        return self.base.preview(model)

    def build_model(self) -> nn.Module:
        """The student, initialised with the teacher's weights."""
        model = self.base.build_model()
        model.load_state_dict(self.teacher_net.state_dict())
        return model

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 2 on a random batch: z_t at a student time t drawn uniformly per sample, the teacher's
        K steps t -> ... -> t'', and the squared error of the student's prediction against the target
        x_tilde in its own parameterisation, weighted by :func:`difflab.losses.truncated_snr_weight`.
        Trajectory distillation instead takes ceil(``batch_size`` / N) trajectories of the teacher from
        noise, each giving its N steps."""
        if self.trajectory:
            return self._trajectory_loss(model, batch_size, generator)
        x0, cond = self.base.batch(batch_size, generator)  # drop only for empty captions: cond_drop_prob 0
        i = torch.randint(0, self.steps, (len(x0),), device=x0.device, generator=generator)  # (B,)
        times = self.grid[i]  # (B, K + 1) float64: t = times[:, 0] -> ... -> t'' = times[:, -1]
        t, t2 = times[:, 0], times[:, -1]  # (B,) each
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        z_t = self.schedule.q_sample(x0, t, eps)
        alpha_bar_t = self.schedule.alpha_bar_at(t)  # (B,) float64
        with torch.no_grad():
            z = z_t
            for k in range(times.shape[1] - 1):
                z = self.teacher_step(self.teacher, z, times[:, k], times[:, k + 1], self.schedule, cond)
            x_tilde = distillation_target(z_t, z, alpha_bar_t, self.schedule.alpha_bar_at(t2))
        return self._student_loss(model, z_t, t, alpha_bar_t, x_tilde, cond)

    def _trajectory_loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Trajectory distillation: the student's step from each of its times to the next, against the
        teacher's trajectories from noise (conditions drawn with the data, as the base task draws them)."""
        b = -(-batch_size // self.steps)  # trajectories
        x0, cond = self.base.batch(b, generator)
        z_T = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        with torch.no_grad():
            states = dpmpp_2m_trajectory(self.teacher, z_T, self.schedule, self.times, cond=cond)  # (M + 1, b, ...)
        z_t = states[self.index[:-1]].flatten(0, 1)  # (N b, ...): step-major, b trajectories per step
        z_s = states[self.index[1:]].flatten(0, 1)  # (N b, ...): where the teacher is at the next time
        alpha_bar = self.schedule.alpha_bar_at(self.student_times).repeat_interleave(b)  # (N b + b,)
        alpha_bar_t, alpha_bar_s = alpha_bar[:-b], alpha_bar[b:]  # (N b,) each: at t and at the next time
        x_tilde = distillation_target(z_t, z_s, alpha_bar_t, alpha_bar_s)
        t = self.student_times[:-1].repeat_interleave(b)  # (N b,)
        cond = {k: v.repeat(self.steps, *[1] * (v.dim() - 1)) for k, v in cond.items()}  # (N b, ...) as z_t
        return self._student_loss(model, z_t, t, alpha_bar_t, x_tilde, cond)

    def _student_loss(self, model: nn.Module, z_t: Tensor, t: Tensor, alpha_bar_t: Tensor, x_tilde: Tensor,
                      cond: Cond) -> Tensor:
        """The student's squared error against the target x_tilde in its own parameterisation, weighted
        by :func:`difflab.losses.truncated_snr_weight`. z_t: (B, ...); t, alpha_bar_t: (B,) float64."""
        prediction = self.config.diffusion.prediction
        alpha_bar = append_dims(alpha_bar_t, z_t)
        target = prediction_target(prediction, x_tilde, eps_from_x0(z_t, x_tilde, alpha_bar), alpha_bar)
        out = model(z_t, t.float(), **cond)
        per_sample = per_sample_mse(out, target)  # (B,)
        snr = (alpha_bar_t / (1 - alpha_bar_t)).float()
        return (per_sample * truncated_snr_weight(snr, prediction)).mean()


def _check_run_files(files: dict[str, str], teacher: Path) -> None:
    """The files a task built from the data (a scratch vocabulary) must be the teacher's."""
    for name, text in files.items():
        if (teacher / name).is_file() and (teacher / name).read_text(encoding="utf-8") != text:
            raise UserError(f"{teacher / name} differs from the one built from the run's data: the data changed "
                            "since the teacher was trained; distill on the data it was trained on")


# -- rounds ------------------------------------------------------------------------------------
def check_teacher_solver(solver: str, substeps: int | None) -> None:
    """One-line errors for an unknown first-teacher solver or fewer than one substep (None: the default)."""
    if solver not in SOLVERS:
        raise UserError(f"unknown --teacher-solver {solver!r}: use one of {', '.join(SOLVERS)}")
    if substeps is not None and substeps < 1:
        raise UserError(f"--teacher-substeps must be at least 1, got {substeps}: pass e.g. "
                        f"--teacher-substeps {DEFAULT_SUBSTEPS.get(solver, 2)}")


def plan_rounds(teacher_steps: int, steps: int, timesteps: int, substeps: int = 2) -> list[int]:
    """Student steps of each round: the first student's ``teacher_steps / substeps``, halved down to
    ``steps`` (64 DDIM steps by 2, 4 -> [32, 16, 8, 4]; 16 DPM-Solver steps by 4, 1 -> [4, 2, 1])."""
    if not 2 <= teacher_steps <= timesteps:
        raise UserError(f"--teacher-steps must be between 2 and the run's {timesteps} diffusion steps, "
                        f"got {teacher_steps}: pass e.g. --teacher-steps {substeps * max(steps, FIRST_STEPS)}")
    if teacher_steps % substeps:
        raise UserError(f"--teacher-steps {teacher_steps} is not a multiple of --teacher-substeps {substeps}: "
                        f"pass e.g. --teacher-steps {substeps * max(steps, FIRST_STEPS)}")
    first = teacher_steps // substeps
    halvings = [first >> k for k in range(first.bit_length()) if first % (1 << k) == 0]
    if steps not in halvings:
        raise UserError(f"--steps {steps} is not the first student's {first} steps (--teacher-steps {teacher_steps} "
                        f"/ --teacher-substeps {substeps}) halved zero or more times: "
                        f"pass one of {', '.join(map(str, halvings))}")
    return halvings[:halvings.index(steps) + 1]


def _trajectory_steps(steps: int, teacher_steps: int | None, substeps: int | None, timesteps: int) -> tuple[int, int]:
    """M and the teacher steps per student step of trajectory distillation, from either or neither."""
    M = teacher_steps or trajectory_teacher_steps(steps, substeps)
    check_trajectory_steps(steps, M, timesteps)
    K = trajectory_substeps(steps, M)
    if substeps is not None and substeps != K:
        raise UserError(f"--teacher-steps {M} takes {K} teacher steps per student step, not --teacher-substeps "
                        f"{substeps}: pass only one of them")
    return M, K


def split_minutes(plan: Sequence[int], minutes: float) -> list[float]:
    """``minutes`` split over the rounds of ``plan``: FIRST_ROUND_SHARE to the first, the rest evenly."""
    if len(plan) == 1:
        return [minutes]
    rest = minutes * (1 - FIRST_ROUND_SHARE) / (len(plan) - 1)
    return [minutes * FIRST_ROUND_SHARE] + [rest] * (len(plan) - 1)


def student_config(teacher_cfg: Config, distill: DistillConfig, overrides: Sequence[str] = ()) -> Config:
    """The config of the student of ``distill.steps`` steps: the teacher's, sampled with deterministic
    DDIM on the student's grid (``edm-open`` for trajectory distillation) and guidance 1, trained at
    ``TRAJECTORY_LR`` (trajectory distillation) or ``DEFAULT_LR`` without warm-up or condition
    dropout, its learning rate decayed (cosine) to the end of the round, EMA decay ``STUDENT_EMA_DECAY``,
    then ``overrides`` (``a.b=value``)."""
    N, T = distill.steps, teacher_cfg.diffusion.timesteps
    trajectory = distill.teacher_solver == TRAJECTORY
    grid = TRAJECTORY_GRID if trajectory else "trailing" if T % N == 0 else GRID
    cfg = replace(teacher_cfg, model=replace(teacher_cfg.model, cond_drop_prob=0.0),
                  train=replace(teacher_cfg.train, lr=TRAJECTORY_LR if trajectory else DEFAULT_LR, warmup_steps=0,
                                lr_decay="cosine", ema_decay=STUDENT_EMA_DECAY),
                  sample=replace(teacher_cfg.sample, sampler="ddim", eta=0.0, steps=N, guidance=1.0, grid=grid),
                  distill=distill)
    cfg = apply_overrides(cfg, list(overrides))
    if replace(cfg.distill, guidance=distill.guidance) != distill or cfg.sample.steps != N:
        raise UserError("--set cannot change distill.teacher, distill.teacher_steps, distill.teacher_solver, "
                        "distill.teacher_substeps, distill.steps or sample.steps: pass RUN, --teacher-steps, "
                        "--teacher-solver, --teacher-substeps and --steps instead")
    return cfg


def _check_out(out: Path, distill: DistillConfig, resume: bool) -> None:
    """One-line errors when ``out`` holds another distillation, or this one without --resume."""
    for folder in sorted(out.glob(f"{ROUND_PREFIX}*")):
        if not (folder / io.CONFIG_FILE).is_file():
            continue
        d = io.read_run_config(folder).distill
        if replace(d, steps=distill.steps) != distill:
            raise UserError(f"{out} holds a different distillation ({d.teacher} from {d.teacher_steps} "
                            f"{d.teacher_solver} steps, {d.teacher_substeps} per student step, guidance "
                            f"{d.guidance:g}): choose another --out")
        if not resume and io.latest_checkpoint(folder) is not None:
            raise UserError(f"{out} already holds this distillation: pass --resume to continue it, "
                            "or choose another --out")


def distill(run: str | Path, steps: int, *, out: str | Path | None = None, teacher_steps: int | None = None,
            teacher_solver: str | None = None, teacher_substeps: int | None = None, minutes: float = 10.0,
            round_minutes: float | None = None, max_steps: int | None = None, overrides: Sequence[str] = (),
            resume: bool = False, progress: bool = True) -> Path:
    """Distill the run ``run`` into a student of ``steps`` DDIM steps; returns the student's run folder.

    Args:
        run: the first teacher, a trained image run (its EMA weights; unconditional, class-conditional
            or text-to-image).
        steps: network evaluations of the final student (progressive: the first student's halved zero or
            more times).
        out: folder of the rounds, ``OUT/steps-N/`` (default ``RUN/distill``).
        teacher_steps: steps of the first teacher. Trajectory distillation: M = K N + 1 (default
            :func:`trajectory_teacher_steps`); progressive: the first student takes ``teacher_substeps`` of
            them in one (default: a first student of max(``steps``, ``FIRST_STEPS``) steps).
        teacher_solver: the first teacher's solver: ``dpmpp-2m`` (trajectory distillation, one round,
            default), ``dpmpp-2s`` (DPM-Solver++(2S)) or ``ddim`` (Algorithm 2); later rounds use ddim.
        teacher_substeps: first-teacher steps per first-student step (default ``DEFAULT_SUBSTEPS[solver]``;
            for ``dpmpp-2m`` K, which sets M when ``teacher_steps`` is not given).
        minutes: wall-clock budget of all rounds together (:func:`split_minutes`).
        round_minutes: budget of each round instead. max_steps: optimizer steps of each round at most.
        overrides: ``a.b=value`` for every student's config (e.g. ``train.lr=1e-4``, ``distill.guidance=2``).
        resume: continue an interrupted distillation: finished rounds are skipped.
        progress: the training loop's progress bar.
    """
    run = Path(run).resolve()
    out = files.check_output(Path(out) if out is not None else run / "distill", "distillation folder", folder=True)
    teacher = gaussian_run(run)
    teacher_cfg = teacher.config
    teacher_solver = teacher_solver or DEFAULT_SOLVER
    check_teacher_solver(teacher_solver, teacher_substeps)
    if teacher_solver == TRAJECTORY:  # one round
        teacher_steps, substeps = _trajectory_steps(steps, teacher_steps, teacher_substeps,
                                                    teacher_cfg.diffusion.timesteps)
        plan = [steps]
    else:
        substeps = teacher_substeps or DEFAULT_SUBSTEPS[teacher_solver]
        teacher_steps = substeps * max(steps, FIRST_STEPS) if teacher_steps is None else teacher_steps
        plan = plan_rounds(teacher_steps, steps, teacher_cfg.diffusion.timesteps, substeps)
    conditional = teacher.conditional
    del teacher  # each round loads its own teacher
    first = DistillConfig(teacher=str(run), teacher_steps=teacher_steps, teacher_solver=teacher_solver,
                          teacher_substeps=substeps, guidance=teacher_cfg.sample.guidance if conditional else 1.0)
    budgets = [round_minutes] * len(plan) if round_minutes else split_minutes(plan, minutes)
    limits = {n: [f"train.max_minutes={m}"] + ([f"train.max_steps={max_steps}"] if max_steps is not None else [])
              for n, m in zip(plan, budgets)}
    configs = {n: student_config(teacher_cfg, replace(first, steps=n), [*overrides, *limits[n]]) for n in plan}
    _check_out(out, configs[steps].distill, resume)
    teacher: Path = run
    for k, n in enumerate(plan, 1):
        folder = out / f"{ROUND_PREFIX}{n}"
        source = f"{teacher_steps} {teacher_solver}" if k == 1 else f"{2 * n} {LATER_ROUNDS[0]}"
        head = f"round {k}/{len(plan)}: {source} steps -> {n}"
        if resume and io.is_finished(folder):
            print(f"{head}: finished before, skipped ({folder})")
        else:
            cfg = configs[n]
            if resume and io.latest_checkpoint(folder) is not None:  # exact resume: the round's own config
                cfg = apply_overrides(io.read_run_config(folder), [*overrides, *limits[n]])
            task = DistillTask(cfg, teacher, first_round=k == 1)
            state = io.load_state(train(task, folder, resume=resume, progress=progress))
            rows = io.read_metrics(folder)
            loss = f", loss {rows[-1]['loss']:.4g}" if rows else ""
            print(f"{head}: {state['step']} optimizer steps in {state['elapsed_s'] / 60:.1f} min{loss} ({folder})")
        teacher = folder
    return teacher
