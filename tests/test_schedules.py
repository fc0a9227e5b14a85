"""Schedules: the forward process, its posterior, the parameterisations, step grids.

Each closed form is checked against an independent computation: iterating the one-step
process, Bayes' rule on Gaussian densities, the cosine formula, diffusers' grids.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # diffusers must not touch the network

from difflab.config import DiffusionConfig, load_config  # noqa: E402
from difflab.denoisers import PREDICTIONS, eps_from_x0, prediction_target, x0_from_prediction  # noqa: E402
from difflab.errors import UserError  # noqa: E402
from difflab.schedules import (COSINE_S, CLEAN_T, karras_sigmas, make_schedule, posterior_coefficients,  # noqa: E402
                               schedule_from_config, step_grid)

# diffusers' DPM-Solver calls np.array(tensor, copy=False) under numpy 2: noise, not a finding here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
F64 = torch.float64
SCHEDULES = [make_schedule("linear", 1000), make_schedule("cosine", 1000), make_schedule("linear", 50)]
IDS = ["linear-1000", "cosine-1000", "linear-50"]


def _normal_logpdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


# -- the forward process ----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_closed_form_equals_iterated_steps(schedule):
    """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I) equals t + 1 applications of q_step.

    Exact, by linearity: x_t = a_t x_0 + sum_k c_k eps_k, so q_step acting on the coefficient
    row (a, c_0, .., c_{T-1}) with eps_t the t-th unit vector propagates them; the mean is
    a_t x_0 and the variance sum_k c_k^2.
    """
    T = schedule.T
    coeffs = torch.zeros(1, T + 1, dtype=F64)  # (1, 1 + T): x_0, then eps_0 .. eps_{T-1}
    coeffs[0, 0] = 1.0
    means, variances = [], []
    for t in range(T):
        unit = torch.zeros_like(coeffs)
        unit[0, 1 + t] = 1.0
        coeffs = schedule.q_step(coeffs, torch.tensor([t]), unit)
        means.append(coeffs[0, 0])
        variances.append((coeffs[0, 1:] ** 2).sum())
    torch.testing.assert_close(torch.stack(means), schedule.alpha_bar.sqrt(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(torch.stack(variances), 1 - schedule.alpha_bar, rtol=1e-12, atol=1e-15)
    # and q_sample is that closed form, at integer and fractional t
    t = torch.tensor([0.0, 7.0, T - 1.0, 3.5])
    ab = schedule.alpha_bar_at(t)
    torch.testing.assert_close(schedule.alpha_bar_at(t[:3]), schedule.alpha_bar[[0, 7, T - 1]], rtol=1e-12, atol=0)
    x0, eps = torch.full((4, 2), 2.0, dtype=F64), torch.full((4, 2), -1.0, dtype=F64)
    torch.testing.assert_close(schedule.q_sample(x0, t, eps), (2 * ab.sqrt() - (1 - ab).sqrt())[:, None].expand(4, 2))


def test_iterated_steps_by_monte_carlo():
    """The same, by sampling: 20k chains of q_step reach the moments of q_sample."""
    schedule = make_schedule("linear", 200)
    g = torch.Generator().manual_seed(0)
    n, x0 = 20_000, 1.5
    x = torch.full((n, 1), x0, dtype=F64)
    for t in range(schedule.T):
        x = schedule.q_step(x, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=F64))
    ab = float(schedule.alpha_bar[-1])
    assert abs(float(x.mean()) - math.sqrt(ab) * x0) < 5 * math.sqrt(1 / n)
    assert abs(float(x.var()) - (1 - ab)) < 5 * math.sqrt(2 / n)


# -- the posterior ----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_posterior_is_bayes_rule(schedule):
    """log q(x_{t-1} | x_t, x_0) = log q(x_{t-1} | x_0) + log q(x_t | x_{t-1}) - log q(x_t | x_0).

    Densities of scalar Gaussians at random points, for every t >= 1: the right side uses only
    alpha_bar and beta, never posterior_coefficients.
    """
    g = torch.Generator().manual_seed(1)
    t = torch.arange(1, schedule.T)
    x0, x_t, x_prev = (torch.randn(len(t), generator=g, dtype=F64) * 2 for _ in range(3))
    ab_t, ab_prev, beta = schedule.alpha_bar[t], schedule.alpha_bar[t - 1], schedule.betas[t]
    bayes = (_normal_logpdf(x_prev, ab_prev.sqrt() * x0, 1 - ab_prev)
             + _normal_logpdf(x_t, (1 - beta).sqrt() * x_prev, beta)
             - _normal_logpdf(x_t, ab_t.sqrt() * x0, 1 - ab_t))
    mean, var = schedule.q_posterior(x0[:, None], x_t[:, None], t)
    torch.testing.assert_close(_normal_logpdf(x_prev, mean[:, 0], var[:, 0]), bayes, rtol=1e-8, atol=1e-8)
    # t = 0: x_{-1} is x_0 itself, a point mass
    mean0, var0 = schedule.q_posterior(x0[:1, None], x_t[:1, None], torch.tensor([0]))
    assert float(var0) == 0 and torch.allclose(mean0[0, 0], x0[0])


def test_posterior_of_any_jump_is_bayes_rule():
    """posterior_coefficients(ab_t, ab_s) for s < t far apart.

    Bayes' rule with the jump q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, 1 - ab_t / ab_s).
    """
    schedule = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([0, 3, 100, 480, 900])
    t = torch.tensor([5, 40, 700, 481, 999])
    ab_s, ab_t = schedule.alpha_bar[s], schedule.alpha_bar[t]
    x0, x_t, x_s = (torch.randn(len(t), generator=g, dtype=F64) for _ in range(3))
    bayes = (_normal_logpdf(x_s, ab_s.sqrt() * x0, 1 - ab_s)
             + _normal_logpdf(x_t, (ab_t / ab_s).sqrt() * x_s, 1 - ab_t / ab_s)
             - _normal_logpdf(x_t, ab_t.sqrt() * x0, 1 - ab_t))
    c_x0, c_xt, var = posterior_coefficients(ab_t, ab_s)
    torch.testing.assert_close(_normal_logpdf(x_s, c_x0 * x0 + c_xt * x_t, var), bayes, rtol=1e-8, atol=1e-8)


# -- parameterisations ------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_round_trip(prediction):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    alpha_bar = make_schedule("cosine").alpha_bar[torch.tensor([0, 10, 500, 900, 999])][:, None]  # (5, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    target = prediction_target(prediction, x0, eps, alpha_bar)
    torch.testing.assert_close(x0_from_prediction(prediction, target, x_t, alpha_bar), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_x0(x_t, x0, alpha_bar), eps, rtol=1e-9, atol=1e-9)
    if prediction == "v":  # Salimans & Ho 2022: v = alpha eps - sigma x0 with alpha^2 + sigma^2 = 1
        torch.testing.assert_close(target, alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0)


def test_unknown_prediction_is_a_user_error():
    with pytest.raises(UserError, match="unknown prediction 'score'"):
        prediction_target("score", torch.zeros(1), torch.zeros(1), torch.ones(1))


# -- schedules --------------------------------------------------------------------------------
def test_cosine_alpha_bar_is_its_formula():
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2).

    Code index t is the paper's t + 1. Only the last beta is clipped to 0.999 (f(T) = 0).
    """
    T = 1000
    schedule = make_schedule("cosine", T)
    f = [math.cos((k / T + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2 for k in range(T + 1)]
    formula = torch.tensor([f[k + 1] / f[0] for k in range(T)], dtype=F64)
    torch.testing.assert_close(schedule.alpha_bar[:-1], formula[:-1], rtol=1e-10, atol=1e-14)
    assert float(schedule.betas[-1]) == 0.999 and float(schedule.betas[:-1].max()) < 0.999


def test_linear_schedule_is_ddpm_and_scales_with_T():
    torch.testing.assert_close(make_schedule("linear", 1000).betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    torch.testing.assert_close(make_schedule("linear", 100).betas, torch.linspace(1e-3, 0.2, 100, dtype=F64))
    for T in (1000, 100):  # a config without beta_start / beta_end: the numbers of before those keys
        scale = 1000 / T
        before = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=F64)
        assert torch.equal(schedule_from_config(DiffusionConfig(timesteps=T)).betas, before)


def test_linear_schedule_takes_its_beta_range_from_the_config():
    """DiffWave's 50 steps from 1e-4 to 0.05 (its params.py: np.linspace(1e-4, 0.05, 50)), as config keys: as given."""
    cfg = load_config(None, ["diffusion.timesteps=50", "diffusion.beta_start=1e-4", "diffusion.beta_end=0.05"])
    assert (cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1e-4, 0.05)
    schedule = schedule_from_config(cfg.diffusion)
    assert schedule.T == 50 and torch.equal(schedule.betas, torch.linspace(1e-4, 0.05, 50, dtype=F64))
    assert torch.equal(make_schedule("linear", 1000, 1e-4, 0.02).betas, make_schedule("linear", 1000).betas)


@pytest.mark.parametrize("name, beta_start, beta_end, words", [
    ("cosine", 1e-4, 0.02, "linear schedule only"), ("cosine", None, 0.02, "linear schedule only"),
    ("linear", 1e-4, None, "set both"), ("linear", None, 0.05, "set both"),
    ("linear", 0.0, 0.02, "0 < beta_start <= beta_end < 1"), ("linear", -1e-4, 0.02, "0 < beta_start"),
    ("linear", 0.05, 1e-4, "0 < beta_start"), ("linear", 1e-4, 1.0, "0 < beta_start"),
    ("linear", float("nan"), 0.02, "0 < beta_start")])
def test_bad_beta_ranges_are_one_line_user_errors(name, beta_start, beta_end, words):
    with pytest.raises(UserError, match=words) as err:
        schedule_from_config(DiffusionConfig(schedule=name, timesteps=50, beta_start=beta_start, beta_end=beta_end))
    message = str(err.value)
    assert "\n" not in message and ": " in message, message


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_t_from_sigma_inverts_sigma_at(schedule):
    t = torch.cat([torch.rand(200, generator=torch.Generator().manual_seed(4), dtype=F64) * (schedule.T - 1),
                   torch.tensor([0.0, schedule.T - 1.0, 1.0, 2.5], dtype=F64)])
    torch.testing.assert_close(schedule.t_from_sigma(schedule.sigma_at(t)), t, rtol=0, atol=1e-9)
    sigma = torch.logspace(math.log10(schedule.sigma_min), math.log10(schedule.sigma_max), 50, dtype=F64)
    torch.testing.assert_close(schedule.sigma_at(schedule.t_from_sigma(sigma)), sigma, rtol=1e-10, atol=0)


def test_clean_time_and_log_snr():
    schedule = make_schedule("linear")
    t = torch.tensor([CLEAN_T, 0.0, 999.0], dtype=F64)
    assert schedule.sigma_at(t)[0] == 0 and schedule.alpha_bar_at(t)[0] == 1 and schedule.log_snr_at(t)[0] == math.inf
    ab = schedule.alpha_bar[[0, 999]]
    torch.testing.assert_close(schedule.log_snr_at(t[1:]), torch.log(ab / (1 - ab)))


# -- step grids --------------------------------------------------------------------------------
GRID_STEPS = [1, 7, 10, 25, 50, 100, 333, 999]


@pytest.mark.parametrize("steps", GRID_STEPS)
def test_step_grids_match_diffusers(steps):
    """leading and trailing as DDIMScheduler and DDPMScheduler; trailing and linspace as
    DPMSolverMultistepScheduler. (diffusers itself disagrees on the other two: its DDIM/DDPM
    "linspace" is round(linspace(0, T-1, N)), which ends at 0 and starts at T-1, and its
    DPM-Solver "leading" uses (T // (N + 1)) * (N .. 1).)"""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    schedule = make_schedule("linear", 1000)
    cases = [(DDIMScheduler, "leading"), (DDIMScheduler, "trailing"), (DDPMScheduler, "leading"),
             (DDPMScheduler, "trailing"), (DPMSolverMultistepScheduler, "trailing"),
             (DPMSolverMultistepScheduler, "linspace")]
    for cls, spacing in cases:
        scheduler = cls(timestep_spacing=spacing)
        scheduler.set_timesteps(steps)
        ours = step_grid(schedule, steps, spacing)
        assert ours.dtype == F64 and len(ours) == steps
        assert torch.equal(ours, scheduler.timesteps.double()), f"{cls.__name__} {spacing} {steps}"


@pytest.mark.parametrize("steps", [5, 20, 50])
def test_karras_grid_matches_diffusers_sigmas(steps):
    """Karras et al. 2022, eq. 5 (rho = 7) between the schedule's sigma_min and sigma_max.

    diffusers takes sigma_min from its float32 alpha_bar, where 1 - 0.9999 keeps only about four
    digits: its sigmas differ from difflab's float64 ones by up to 8.3e-5 relative.
    """
    from diffusers import DPMSolverMultistepScheduler

    schedule = make_schedule("linear", 1000)
    scheduler = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    grid = step_grid(schedule, steps, "karras")
    assert abs(grid[0] - (schedule.T - 1)) < 1e-9 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
    torch.testing.assert_close(schedule.sigma_at(grid), scheduler.sigmas[:-1].double(), rtol=2e-4, atol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("kind", ["logsnr", "uniform"])
def test_logsnr_and_uniform_grids_span_T_to_0_evenly(name, kind):
    """``logsnr``: evenly spaced in lambda (DPM-Solver's choice); ``uniform``: evenly spaced in t."""
    schedule = make_schedule(name, 1000)
    grid = step_grid(schedule, 10, kind)
    assert grid.dtype == F64 and len(grid) == 10
    torch.testing.assert_close(grid[[0, -1]], torch.tensor([999.0, 0.0], dtype=F64), atol=1e-6, rtol=0)
    spaced = schedule.log_snr_at(grid) if kind == "logsnr" else grid
    gaps = spaced.diff()
    torch.testing.assert_close(gaps, gaps.mean().expand_as(gaps), rtol=1e-6, atol=0)


def test_edm_grid_caps_sigma_max_at_80():
    """``edm``: Karras' grid between sigma_min and min(sigma_max, 80) (Karras et al. 2022, Table 1)."""
    cosine = make_schedule("cosine", 1000)
    assert cosine.sigma_max > 1e3
    grid = step_grid(cosine, 10, "edm")
    torch.testing.assert_close(cosine.sigma_at(grid), karras_sigmas(cosine.sigma_min, 80.0, 10), rtol=1e-9, atol=0)
    linear = make_schedule("linear", 1000)  # sigma_max ~ 157: capped too, same sigma_min
    edm = linear.sigma_at(step_grid(linear, 10, "edm"))
    torch.testing.assert_close(edm, karras_sigmas(linear.sigma_min, 80.0, 10), rtol=1e-9, atol=0)


def test_bad_names_and_step_counts_are_user_errors():
    with pytest.raises(UserError, match="unknown noise schedule 'cosin'"):
        make_schedule("cosin")
    with pytest.raises(UserError, match="at least 2"):
        make_schedule("linear", 1)
    schedule = make_schedule("linear", 100)
    with pytest.raises(UserError, match="unknown step grid 'unifrom'"):
        step_grid(schedule, 10, "unifrom")
    for steps in (0, -3):
        with pytest.raises(UserError, match="must be positive"):
            step_grid(schedule, steps)
    with pytest.raises(UserError, match="exceed"):
        step_grid(schedule, 101)
