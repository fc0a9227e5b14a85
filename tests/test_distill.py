"""Progressive distillation: the target x_tilde against exact denoisers, the nested grids, one round
that learns, student run folders that sample on their own, text conditions, resume and the errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from difflab import io
from difflab.analytic import gaussian_denoiser
from difflab.cli import main
from difflab.config import DistillConfig, apply_overrides, load_config
from difflab.denoisers import eps_from_x0
from difflab.distill import GRID, DistillTask, ddim_step, distill, distillation_target, read_teacher, student_config
from difflab.samplers import ddim, sample
from difflab.schedules import CLEAN_T, _expand, make_schedule, step_grid
from difflab.tasks.image import ImageTask, generate, load_image_model
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
    one_step = schedule.q_sample(x_tilde, _times(t2), eps_from_x0(z_t, x_tilde, _expand(alpha_bar_t, z_t)))
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


def test_one_round_learns_and_the_student_samples_alone(teacher, tmp_path):
    student = distill(teacher, 1, teacher_steps=2, out=tmp_path / "out", max_steps=60, progress=False,
                      overrides=[*QUICK, "train.lr=1e-3"])
    assert student == tmp_path / "out" / "steps-1"
    cfg, model = load_image_model(student)
    s, d = cfg.sample, cfg.distill
    assert (s.sampler, s.steps, s.grid, s.eta, s.guidance) == ("ddim", 1, "trailing", 0.0, 1.0)
    assert (d.teacher, d.teacher_steps, d.steps, d.guidance) == (str(teacher), 2, 1, 2.0)

    task = DistillTask(cfg, teacher, guidance=2.0)
    _, init = load_image_model(teacher)
    with torch.no_grad():
        before, after = (float(task.loss(m, 256, torch.Generator().manual_seed(1))) for m in (init, model))
    assert after < 0.7 * before, (before, after)

    alone = tmp_path / "alone"
    shutil.copytree(student, alone)
    teacher.rename(teacher.with_name("gone"))
    try:
        cfg, model = load_image_model(alone)
        calls = []
        model.register_forward_hook(lambda *_: calls.append(1))
        images, labels = generate(cfg, model, 4, progress=False)
        assert images.shape == (4, 8, 8, 1) and labels.tolist() == [0, 1, 2, 3] and len(calls) == 1
        assert main(["sample", str(alone), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    finally:
        teacher.with_name("gone").rename(teacher)


def test_text_conditional(tmp_path):
    shapes = ["data.name=shapes", "data.size=64", "data.resolution=16", "model.text_encoder=scratch",
              "model.text_width=16", "model.text_layers=1", "model.text_heads=2", "model.patch_size=2",
              *TINY, "train.max_steps=2", "train.checkpoint_every=1000", "sample.guidance=3"]
    run = tmp_path / "run"
    train(TextToImageTask(apply_overrides(load_config(None), shapes)), run, progress=False)
    student = distill(run, 1, teacher_steps=2, max_steps=2, overrides=QUICK, progress=False)
    assert (student / TOKENIZER_FILE).read_text() == (run / TOKENIZER_FILE).read_text()
    cfg, model = load_image_model(student)
    assert cfg.distill.guidance == 3.0 and cfg.model.cond_drop_prob == 0.0
    images, _ = generate(cfg, model, 2, prompts=["a red circle", ""], progress=False)
    assert images.shape == (2, 16, 16, 3)


def test_resume_skips_finished_rounds(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    distill(teacher, 1, teacher_steps=4, out=out, max_steps=2, overrides=QUICK, progress=False)
    first = io.latest_checkpoint(out / "steps-2")
    last = io.latest_checkpoint(out / "steps-1")
    state = io.load_state(last)
    torch.save({**state, "finished": False}, last / io.STATE_FILE)  # as if killed after this checkpoint
    capsys.readouterr()
    distill(teacher, 1, teacher_steps=4, out=out, max_steps=3, overrides=QUICK, resume=True, progress=False)
    printed = capsys.readouterr().out
    assert "round 1/2: 4 -> 2 steps: finished before, skipped" in printed
    assert f"resuming {out / 'steps-1'} from step 2" in printed
    assert io.latest_checkpoint(out / "steps-2") == first and io.is_finished(out / "steps-1")
    assert io.load_state(io.latest_checkpoint(out / "steps-1"))["step"] == 3


def test_errors(teacher, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(["distill", *argv, "--no-progress"]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message
        return message

    mixture = tmp_path / "mixture"
    io.init_run(mixture, apply_overrides(load_config(None), ["data.name=mixture2d"]))
    assert "not an image diffusion run" in error(str(mixture), "--steps", "4")
    assert "not a run folder" in error(str(tmp_path), "--steps", "4")
    assert "pass one of 32, 16, 8, 4, 2, 1" in error(str(teacher), "--steps", "3")
    assert "pass one of 32, 16" in error(str(teacher), "--steps", "64")
    out = str(tmp_path / "out")
    assert main(["distill", str(teacher), "--steps", "1", "--teacher-steps", "2", "--out", out, "--max-steps", "1",
                 "--no-progress"]) == 0
    assert "pass --resume" in error(str(teacher), "--steps", "1", "--teacher-steps", "2", "--out", out)
    assert "holds a different distillation" in error(str(teacher), "--steps", "1", "--teacher-steps", "4",
                                                     "--out", out, "--resume")
    assert "--set cannot change" in error(str(teacher), "--steps", "1", "--teacher-steps", "2", "--out", out,
                                          "--resume", "--set", "sample.steps=2")
    assert read_teacher(teacher).model.num_classes == 10
