"""Progressive distillation: the target x_tilde and the first teacher's DPM-Solver++(2S) steps against
exact denoisers and the exact ODE solution, the nested grids, one round that learns, student run folders
that sample on their own, text conditions, resume, the CLI options and the errors."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from difflab import io
from difflab.analytic import gaussian_denoiser, gaussian_ode_solution
from difflab.cli import main
from difflab.config import DistillConfig, apply_overrides, load_config
from difflab.denoisers import eps_from_x0
from difflab.distill import (GRID, TEACHER_SOLVERS, TRAJECTORY_GRID, DistillTask, distill, distillation_target,
                             plan_rounds, split_minutes, student_config, teacher_grid, trajectory_grid,
                             trajectory_teacher_steps)
from difflab.errors import UserError
from difflab.samplers import ddim, sample
from difflab.samplers.common import with_clean
from difflab.samplers.ddim import ddim_step
from difflab.samplers.dpm_solver import dpmpp_2m, dpmpp_2m_trajectory, dpmpp_2s_step
from difflab.schedules import CLEAN_T, append_dims, make_schedule, step_grid
from difflab.tasks import load_run
from difflab.tasks.image import ImageTask
from difflab.tasks.text_to_image import TOKENIZER_FILE, TextToImageTask
from difflab.train import train

from conftest import TINY

TEACHER = [*TINY, "train.max_steps=40", "train.lr=2e-3", "train.checkpoint_every=1000", "sample.guidance=2"]
QUICK = ["train.log_every=1", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):
    """A tiny class-conditional digits run (sample.guidance 2), trained for 40 steps."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(ImageTask(apply_overrides(load_config(None), TEACHER)), run, progress=False)
    return run.resolve()


def _times(t: float, n: int = 3) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.float64)


@pytest.mark.parametrize("t, t1, t2", [(999.0, 749.0, 499.0), (499.0, 249.0, CLEAN_T), (30.25, 14.625, CLEAN_T)])
def test_target_is_two_teacher_steps_in_one(t, t1, t2):
    """With the exact denoiser of Gaussian data as teacher, one DDIM step t -> t'' to x_tilde lands on the
    teacher's two steps t -> t' -> t'' (Salimans & Ho 2022, Algorithm 2); at clean t'' x_tilde is z_t''."""
    schedule = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    teacher = gaussian_denoiser(torch.randn(4, generator=g, dtype=torch.float64), A @ A.T / 4, schedule)
    z_t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    z_2 = ddim_step(teacher, ddim_step(teacher, z_t, _times(t), _times(t1), schedule), _times(t1), _times(t2), schedule)
    alpha_bar_t = schedule.alpha_bar_at(_times(t))
    x_tilde = distillation_target(z_t, z_2, alpha_bar_t, schedule.alpha_bar_at(_times(t2)))
    one_step = schedule.q_sample(x_tilde, _times(t2), eps_from_x0(z_t, x_tilde, append_dims(alpha_bar_t, z_t)))
    torch.testing.assert_close(one_step, z_2, rtol=1e-9, atol=1e-9)
    if t2 == CLEAN_T:
        torch.testing.assert_close(x_tilde, z_2, rtol=0, atol=0)
        # the last pair is what the ddim sampler does on the grid (t, t')
        torch.testing.assert_close(z_2, ddim(teacher, z_t, schedule, torch.tensor([t, t1])), rtol=1e-12, atol=1e-12)


def test_target_of_point_mass_is_the_point():
    """Data x = c: the exact denoiser returns c, DDIM is exact, and x_tilde must be c at every time."""
    schedule = make_schedule("linear", 1000)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    teacher = gaussian_denoiser(c, torch.zeros(3, 3, dtype=torch.float64), schedule)
    times = torch.tensor([999.0, 600.5, 20.0], dtype=torch.float64)  # (B,) different per sample
    z_t = schedule.q_sample(c.expand(3, 3), times, torch.randn(3, 3, dtype=torch.float64))
    t1, t2 = times / 2, times / 4
    z_2 = ddim_step(teacher, ddim_step(teacher, z_t, times, t1, schedule), t1, t2, schedule)
    x_tilde = distillation_target(z_t, z_2, schedule.alpha_bar_at(times), schedule.alpha_bar_at(t2))
    torch.testing.assert_close(x_tilde, c.expand(3, 3), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("N", [1, 2, 4, 8, 64])
def test_ddim_evaluates_the_student_grid(N):
    """ddim on the student's grid evaluates at exactly t_i = T (1 - i/N) - 1; the teacher's grid nests it."""
    schedule = make_schedule("cosine", 1000)
    cfg = student_config(apply_overrides(load_config(None), ["diffusion.schedule=cosine"]),
                         DistillConfig(teacher="t", teacher_steps=2 * N, steps=N))
    assert cfg.sample.grid == ("trailing" if N <= 8 else GRID)
    seen = []
    sample("ddim", lambda x, t, cond: seen.append(float(t[0])) or torch.zeros_like(x), (1, 2), schedule,
           steps=N, grid=cfg.sample.grid)
    expected = [1000 * (1 - i / N) - 1 for i in range(N)]
    assert seen == pytest.approx(expected, abs=1e-9) and step_grid(schedule, N, GRID).tolist() == seen
    assert torch.equal(step_grid(schedule, 2 * N, GRID)[::2], step_grid(schedule, N, GRID))


def _gaussian(schedule):
    """Correlated D = 4 Gaussian data (variances about 0.01 .. 0.13, so x0_hat bends near clean data)."""
    mean = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.3, 0.0, 0.2], [0.0, 0.8, -0.4, 0.0], [0.1, 0.0, 0.6, 0.3], [0.0, 0.2, 0.0, 0.5]],
                     dtype=torch.float64)
    cov = 0.1 * A @ A.T
    return mean, cov, gaussian_denoiser(mean, cov, schedule)


def _exact(schedule, mean, cov, z_t, t, s):
    """The probability-flow ODE solved exactly from z_t at t to s, per sample (VP form in and out)."""
    sigma_t, sigma_s = schedule.sigma_at(t).tolist(), schedule.sigma_at(s).tolist()
    return torch.cat([gaussian_ode_solution(z[None] * math.sqrt(1 + a ** 2), a, b, mean, cov) / math.sqrt(1 + b ** 2)
                      for z, a, b in zip(z_t, sigma_t, sigma_s)])


def _first_teacher(denoiser, schedule, z_t, grid, solver):
    """The first teacher's end points: K steps of ``solver`` along each sample's row of ``grid`` (B, K + 1)."""
    for k in range(grid.shape[1] - 1):
        z_t = TEACHER_SOLVERS[solver](denoiser, z_t, grid[:, k], grid[:, k + 1], schedule)
    return z_t


def test_dpmpp_2s_teacher_is_second_order_and_beats_ddim():
    """On Gaussian data, the first teacher's K DPM-Solver++(2S) steps along :func:`teacher_grid` (2K calls)
    against the exact ODE solution: 2nd order (error / 4 per doubling of K, DDIM's / 2) in every student step
    of a 4-step student (one per sample), and 3 to 20 times more accurate than 2K DDIM steps."""
    schedule = make_schedule("cosine", 1000)
    mean, cov, denoiser = _gaussian(schedule)
    z_t = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (B, D), B = N
    errors = {}
    for solver, per_k in (("dpmpp-2s", 1), ("ddim", 2)):  # the same denoiser calls
        for K in (4, 8):
            grid = teacher_grid(schedule, 4, solver, per_k * K)  # (N, per_k K + 1)
            exact = _exact(schedule, mean, cov, z_t, grid[:, 0], grid[:, -1])
            errors[solver, K] = (_first_teacher(denoiser, schedule, z_t, grid, solver) - exact).abs().amax(1)  # (B,)
    assert (errors["dpmpp-2s", 8] / errors["dpmpp-2s", 4] < 0.3).all(), errors
    assert (errors["ddim", 8] / errors["ddim", 4] > 0.45).all(), errors
    assert (errors["dpmpp-2s", 8] < errors["ddim", 8] / 2.5).all(), errors
    assert (errors["dpmpp-2s", 8][1:3] < errors["ddim", 8][1:3] / 10).all(), errors
    assert float(errors["dpmpp-2s", 8].max()) < 6e-3


def test_dpmpp_2s_step_to_clean_data_is_x0_hat():
    """No midpoint at clean data: the step is the 1st-order one there, in a batch that mixes both."""
    schedule = make_schedule("cosine", 1000)
    _, _, denoiser = _gaussian(schedule)
    z_t = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, s = torch.tensor([0.0, 100.0, 500.0], dtype=torch.float64), torch.tensor([CLEAN_T, CLEAN_T, 250.0])
    out = dpmpp_2s_step(denoiser, z_t, t, s.double(), schedule)
    torch.testing.assert_close(out[:2], denoiser(z_t, t)[:2], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[2:], dpmpp_2s_step(denoiser, z_t[2:], t[2:], s[2:].double(), schedule))


@pytest.mark.parametrize("N, K", [(1, 2), (4, 2), (4, 8), (8, 4)])
def test_teacher_grid(N, K):
    """Rows run from t_i to t_{i+1} of the student's grid; ddim's rows are the nested grid of N K steps (for K = 2
    Algorithm 2's t, t', t''); dpmpp-2s spaces the last row evenly in log-SNR down to t = 0, then to clean."""
    schedule = make_schedule("cosine", 1000)
    student = with_clean(step_grid(schedule, N, GRID))
    nested = with_clean(step_grid(schedule, N * K, GRID))
    ddim_grid, dpm_grid = (teacher_grid(schedule, N, solver, K) for solver in ("ddim", "dpmpp-2s"))
    assert ddim_grid.shape == dpm_grid.shape == (N, K + 1)
    assert torch.equal(ddim_grid.flatten()[::K + 1], student[:-1]) and torch.equal(ddim_grid[:, -1], student[1:])
    assert torch.equal(ddim_grid[:, :-1].flatten(), nested[:-1])
    assert torch.equal(dpm_grid[:-1], ddim_grid[:-1]) and torch.equal(dpm_grid[-1, [0, -2, -1]],
                                                                      torch.tensor([student[-2], 0.0, CLEAN_T]))
    log_snr = schedule.log_snr_at(dpm_grid[-1, :-1])  # (K,)
    torch.testing.assert_close(log_snr.diff(), log_snr.diff()[:1].expand(K - 1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("N, M", [(1, 8), (2, 7), (3, 7), (4, 9), (4, 13), (5, 11)])
def test_trajectory_grid(N, M):
    """The teacher's grid is the edm grid of M = K N + 1 steps; every K-th time is the student's (its edm-open
    grid, the edm grid of N + 1 steps without sigma_min, put in exactly), so the student's last step spans the
    teacher's last K + 1, to clean data; the default M is the nesting one nearest 8."""
    schedule = make_schedule("cosine", 1000)
    times, index = trajectory_grid(schedule, N, M)
    student = step_grid(schedule, N, TRAJECTORY_GRID)
    K = (M - 1) // N
    assert times.shape == (M,) and index == [*range(0, N * K, K), M]
    assert torch.equal(times[index[:-1]], student) and (times.diff() < 0).all()
    torch.testing.assert_close(student, step_grid(schedule, N + 1, "edm")[:N], rtol=0, atol=0)
    torch.testing.assert_close(times, step_grid(schedule, M, "edm"), rtol=0, atol=1e-9)
    assert float(times[-1]) == 0.0 and float(student[-1]) > 0  # the teacher ends at sigma_min, the student above
    assert trajectory_teacher_steps(N) == (9 if (N, M) == (4, 13) else M)
    with pytest.raises(UserError, match=f"does not hold the {N} steps of the student.*--teacher-steps "
                                        f"{trajectory_teacher_steps(N)}"):
        trajectory_grid(schedule, N, N)


def test_trajectory_states_are_the_samplers():
    """The teacher's states: x_T, then dpmpp_2m's state after each step; the last is what dpmpp_2m returns."""
    schedule = make_schedule("cosine", 1000)
    _, _, denoiser = _gaussian(schedule)
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times, _ = trajectory_grid(schedule, 4, 9)
    states = dpmpp_2m_trajectory(denoiser, x_T, schedule, times)
    assert states.shape == (10, 3, 4) and torch.equal(states[0], x_T)
    torch.testing.assert_close(states[-1], dpmpp_2m(denoiser, x_T, schedule, times), rtol=0, atol=0)
    for k in (1, 3, 6):  # the sampler on the first k + 1 times is at state k when its last step (to clean)
        calls = []  # sees the identity as x0_hat

        def stop(x, t, cond=None):
            calls.append(t)
            return x if len(calls) == k + 1 else denoiser(x, t, cond)

        torch.testing.assert_close(dpmpp_2m(stop, x_T, schedule, times[:k + 1]), states[k], rtol=1e-12, atol=1e-12)


def test_plan_and_budget():
    assert plan_rounds(64, 4, 1000) == [32, 16, 8, 4]  # Algorithm 2: a 64-step DDIM teacher
    assert plan_rounds(16, 1, 1000, substeps=4) == [4, 2, 1] and plan_rounds(16, 4, 1000, substeps=4) == [4]
    assert split_minutes([4, 2, 1], 10) == [5, 2.5, 2.5] and split_minutes([4], 10) == [10]
    with pytest.raises(UserError, match="--teacher-steps 30 is not a multiple of --teacher-substeps 4"):
        plan_rounds(30, 1, 1000, substeps=4)


def test_one_round_learns_and_the_student_samples_alone(teacher, tmp_path):
    """The first round from a DPM-Solver++(2S) teacher, here 4 of its steps in one."""
    student = distill(teacher, 1, teacher_steps=4, teacher_solver="dpmpp-2s", teacher_substeps=4,
                      out=tmp_path / "out", max_steps=60, progress=False, overrides=[*QUICK, "train.lr=1e-3"])
    assert student == tmp_path / "out" / "steps-1"
    loaded = load_run(student)
    cfg, model = loaded.config, loaded.model
    s, d = cfg.sample, cfg.distill
    assert (s.sampler, s.steps, s.grid, s.eta, s.guidance) == ("ddim", 1, "trailing", 0.0, 1.0)
    assert (d.teacher, d.teacher_steps, d.teacher_solver, d.teacher_substeps, d.steps, d.guidance) == \
        (str(teacher), 4, "dpmpp-2s", 4, 1, 2.0)
    assert (cfg.train.lr_decay, cfg.train.warmup_steps, cfg.model.cond_drop_prob) == ("cosine", 0, 0.0)

    task = DistillTask(cfg, teacher, first_round=True)
    init = load_run(teacher).model
    with torch.no_grad():
        before, after = (float(task.loss(m, 256, torch.Generator().manual_seed(1))) for m in (init, model))
    assert after < 0.7 * before, (before, after)

    alone = tmp_path / "alone"
    shutil.copytree(student, alone)
    teacher.rename(teacher.with_name("gone"))
    try:
        loaded = load_run(alone)
        cfg, model = loaded.config, loaded.model
        calls = []
        model.register_forward_hook(lambda *_: calls.append(1))
        out = loaded.sample(4, progress=False)
        images, labels = out.data, out.conditions["labels"]
        assert images.shape == (4, 8, 8, 1) and labels.tolist() == [0, 1, 2, 3] and len(calls) == 1
        assert main(["sample", str(alone), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    finally:
        teacher.with_name("gone").rename(teacher)


def test_trajectory_student_learns_and_samples_on_its_grid(teacher, tmp_path):
    """The default: trajectory distillation of the class-conditional run (guidance 2 built in) from 7 steps
    of dpmpp-2m on edm into a 2-step student that samples with ddim on the edm-open grid of 2 steps."""
    student = distill(teacher, 2, out=tmp_path / "out", max_steps=60, progress=False, overrides=QUICK)
    loaded = load_run(student)
    cfg, model = loaded.config, loaded.model
    s, d = cfg.sample, cfg.distill
    assert (s.sampler, s.steps, s.grid, s.eta, s.guidance) == ("ddim", 2, TRAJECTORY_GRID, 0.0, 1.0)
    assert (d.teacher_steps, d.teacher_solver, d.teacher_substeps, d.steps, d.guidance) == (7, "dpmpp-2m", 3, 2, 2.0)
    assert cfg.train.lr == 1e-3 and io.read_metrics(student)[-1]["step"] == 60

    task = DistillTask(cfg, teacher, first_round=True)
    init = load_run(teacher).model
    with torch.no_grad():
        before, after = (float(task.loss(m, 256, torch.Generator().manual_seed(1))) for m in (init, model))
    assert after < 0.7 * before, (before, after)

    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(float(args[1][0])))
    loaded.sample(2, progress=False)
    assert seen == pytest.approx(step_grid(task.schedule, 2, TRAJECTORY_GRID).tolist(), abs=1e-4)  # float32 t


def test_text_conditional(tmp_path):
    shapes = ["data.name=shapes", "data.size=64", "data.resolution=16", "model.text_encoder=scratch",
              "model.text_width=16", "model.text_layers=1", "model.text_heads=2", "model.patch_size=2",
              *TINY, "train.max_steps=2", "train.checkpoint_every=1000", "sample.guidance=3"]
    run = tmp_path / "run"
    train(TextToImageTask(apply_overrides(load_config(None), shapes)), run, progress=False)
    student = distill(run, 1, teacher_substeps=2, max_steps=2, overrides=QUICK, progress=False)  # 3 dpmpp-2m steps
    assert (student / TOKENIZER_FILE).read_text() == (run / TOKENIZER_FILE).read_text()
    loaded = load_run(student)
    cfg = loaded.config
    assert cfg.distill.guidance == 3.0 and cfg.model.cond_drop_prob == 0.0
    images = loaded.sample(2, cond=["a red circle", ""], progress=False).data
    assert images.shape == (2, 16, 16, 3)


def test_resume_skips_finished_rounds(teacher, tmp_path, capsys):
    """Algorithm 2 all the way (a 4-step DDIM teacher), interrupted in its second round."""
    out = tmp_path / "out"
    distill(teacher, 1, teacher_steps=4, teacher_solver="ddim", out=out, max_steps=2, overrides=QUICK, progress=False)
    first = io.latest_checkpoint(out / "steps-2")
    last = io.latest_checkpoint(out / "steps-1")
    state = io.load_state(last)
    torch.save({**state, "finished": False}, last / io.STATE_FILE)  # as if killed after this checkpoint
    capsys.readouterr()
    distill(teacher, 1, teacher_steps=4, teacher_solver="ddim", out=out, max_steps=3, overrides=QUICK, resume=True,
            progress=False)
    printed = capsys.readouterr().out
    assert "round 1/2: 4 ddim steps -> 2: finished before, skipped" in printed
    assert f"resuming {out / 'steps-1'} from step 2" in printed
    assert io.latest_checkpoint(out / "steps-2") == first and io.is_finished(out / "steps-1")
    assert io.load_state(io.latest_checkpoint(out / "steps-1"))["step"] == 3


def test_errors(teacher, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(["distill", *argv, "--no-progress"]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message
        return message

    clip = tmp_path / "clip"
    io.init_run(clip, apply_overrides(load_config(None), ["task=clip", "data.name=shapes"]))
    assert "is a clip run, not a run of Gaussian diffusion" in error(str(clip), "--steps", "4")
    assert "not a run folder" in error(str(tmp_path), "--steps", "4")
    assert "pass one of 32, 16, 8, 4, 2, 1" in error(str(teacher), "--steps", "3", "--teacher-steps", "64",
                                                   "--teacher-solver", "ddim")
    assert "pass one of 4, 2, 1" in error(str(teacher), "--steps", "3", "--teacher-solver", "dpmpp-2s")
    assert "does not hold the 4 steps of the student" in error(str(teacher), "--steps", "4", "--teacher-steps", "8")
    assert "takes 3 teacher steps per student step, not --teacher-substeps 2" in error(
        str(teacher), "--steps", "4", "--teacher-steps", "13", "--teacher-substeps", "2")
    assert "pass one of 32, 16" in error(str(teacher), "--steps", "64", "--teacher-steps", "64", "--teacher-solver",
                                         "ddim")
    assert "unknown --teacher-solver 'heun': use one of dpmpp-2m, ddim, dpmpp-2s" in error(str(teacher), "--steps", "1",
                                                                                 "--teacher-solver", "heun")
    assert "--teacher-substeps: must be positive" in error(str(teacher), "--steps", "1", "--teacher-substeps", "0")
    assert "not a multiple of --teacher-substeps 3" in error(str(teacher), "--steps", "1", "--teacher-substeps", "3",
                                                             "--teacher-steps", "8", "--teacher-solver", "dpmpp-2s")
    out = str(tmp_path / "out")
    assert main(["distill", str(teacher), "--steps", "1", "--teacher-steps", "2", "--teacher-solver", "ddim",
                 "--out", out, "--max-steps", "1", "--no-progress"]) == 0
    d = io.read_run_config(tmp_path / "out" / "steps-1").distill
    assert (d.teacher_steps, d.teacher_solver, d.teacher_substeps) == (2, "ddim", 2)
    same = ["--steps", "1", "--teacher-steps", "2", "--teacher-solver", "ddim", "--out", out]
    assert "pass --resume" in error(str(teacher), *same)
    assert "holds a different distillation" in error(str(teacher), "--steps", "1", "--teacher-steps", "4",
                                                     "--teacher-solver", "ddim", "--out", out, "--resume")
    assert "holds a different distillation" in error(str(teacher), "--steps", "1", "--teacher-steps", "2",
                                                     "--out", out, "--resume")  # dpmpp-2m, not ddim
    assert "--set cannot change" in error(str(teacher), *same, "--resume", "--set", "sample.steps=2")
    assert "--set cannot change" in error(str(teacher), *same, "--resume", "--set", "distill.teacher_substeps=4")
    with pytest.raises(UserError, match="--teacher-substeps must be at least 1, got 0"):
        distill(teacher, 1, teacher_substeps=0)
    assert load_run(teacher).config.model.num_classes == 10
