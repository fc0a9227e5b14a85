"""Samplers: exact on Gaussian data, their orders of convergence, parity with diffusers, the API.

Gaussian data x_0 ~ N(m, Sigma_0) has an exact denoiser (:mod:`difflab.analytic`), so a
correct sampler's samples must have mean m and covariance Sigma_0 up to Monte-Carlo error
and its own discretisation error, and the deterministic samplers must converge to the
exact solution of the probability-flow ODE at their order. Parity tests run difflab and
diffusers' schedulers on identical inputs (the same fake eps-network, grid and noise).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # diffusers must not touch the network

from difflab.analytic import gaussian_denoiser, gaussian_marginal, gaussian_ode_solution  # noqa: E402
from difflab.denoisers import NetworkDenoiser  # noqa: E402
from difflab.errors import UserError  # noqa: E402
from difflab.samplers import DEFAULT_GRID, SAMPLERS, default_grid, sample  # noqa: E402
from difflab.schedules import Schedule, append_dims, make_schedule, step_grid  # noqa: E402

# diffusers' DPM-Solver calls np.array(tensor, copy=False) under numpy 2: noise, not a finding here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SCHEDULE = make_schedule("linear", 1000)
F64 = torch.float64


def _correlated_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    """D = 4 data with a non-diagonal covariance, eigenvalues about 0.10 .. 1.31."""
    mean = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=F64)
    A = torch.tensor([[1.0, 0.3, 0.0, 0.2], [0.0, 0.8, -0.4, 0.0], [0.1, 0.0, 0.6, 0.3], [0.0, 0.2, 0.0, 0.5]],
                     dtype=F64)
    return mean, A @ A.T


# -- the analytic module itself -------------------------------------------------------------
def test_gaussian_denoiser_is_the_regression_formula_and_tweedie():
    mean, cov = _correlated_gaussian()
    denoise = gaussian_denoiser(mean, cov, SCHEDULE)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 4, generator=g, dtype=F64)
    t = torch.tensor([0.0, 3.5, 100.0, 499.25, 998.0, 999.0], dtype=F64)  # per-sample times
    x0_hat = denoise(x_t, t)
    for i in range(len(t)):
        ab = float(SCHEDULE.alpha_bar_at(t[i:i + 1]))
        mean_t, cov_t = gaussian_marginal(mean, cov, ab)
        # E[x0 | x_t] = m + Cov(x0, x_t) Var(x_t)^{-1} (x_t - E x_t), by a linear solve
        regression = mean + math.sqrt(ab) * cov @ torch.linalg.solve(cov_t, x_t[i] - mean_t)
        # Tweedie: x0_hat = (x_t + (1 - ab) grad log q(x_t)) / sqrt(ab), with the Gaussian score
        score = -torch.linalg.solve(cov_t, x_t[i] - mean_t)
        tweedie = (x_t[i] + (1 - ab) * score) / math.sqrt(ab)
        torch.testing.assert_close(x0_hat[i], regression, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(x0_hat[i], tweedie, rtol=1e-9, atol=1e-9)
    # one shared time (the fast path samplers take) agrees with per-sample times
    shared = denoise(x_t, torch.full((6,), 499.25, dtype=F64))
    torch.testing.assert_close(shared[3], x0_hat[3], rtol=1e-12, atol=1e-12)


def test_gaussian_marginal_matches_q_sample():
    mean, cov = _correlated_gaussian()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = mean + torch.randn(n, 4, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    t = torch.full((n,), 300.0, dtype=F64)
    x_t = SCHEDULE.q_sample(x0, t, torch.randn(n, 4, generator=g, dtype=F64))
    mean_t, cov_t = gaussian_marginal(mean, cov, SCHEDULE.alpha_bar[300])
    assert (x_t.mean(0) - mean_t).abs().max() < 5 * math.sqrt(1.5 / n)
    assert (torch.cov(x_t.T) - cov_t).abs().max() < 5 * 1.5 * math.sqrt(2 / n)


def test_gaussian_ode_solution_solves_the_ode():
    """d x_ve / d sigma = (x_ve - x0_hat) / sigma, checked by central differences; and a flow."""
    mean, cov = _correlated_gaussian()
    denoise = gaussian_denoiser(mean, cov, SCHEDULE)
    x_ve = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 3
    for sigma in (0.05, 0.7, 4.0, 60.0):
        h = 1e-5 * sigma
        forward, backward = (gaussian_ode_solution(x_ve, 2 * sigma, s, mean, cov) for s in (sigma + h, sigma - h))
        x = gaussian_ode_solution(x_ve, 2 * sigma, sigma, mean, cov)
        t = SCHEDULE.t_from_sigma(torch.full((5,), sigma, dtype=F64))
        d = (x - denoise(x / math.sqrt(1 + sigma ** 2), t)) / sigma
        torch.testing.assert_close((forward - backward) / (2 * h), d, rtol=1e-6, atol=1e-7)
    composed = gaussian_ode_solution(gaussian_ode_solution(x_ve, 9.0, 2.0, mean, cov), 2.0, 0.0, mean, cov)
    torch.testing.assert_close(composed, gaussian_ode_solution(x_ve, 9.0, 0.0, mean, cov))


# -- every sampler reaches the data distribution -------------------------------------------
# Steps are chosen so each sampler's own bias on this data is at most BIAS (computed exactly
# for these settings: the worst whitened covariance entry is off by 2.4% for ddpm/beta_tilde
# and ddim/eta=1 at 1000 steps, 2.3% for ddpm/beta at 250, 2.1% for dpmpp-2m at 50, 1.4% for
# heun at 50, 2.1% for ddim at 400 and 1.7% for euler at 400). The stochastic samplers draw
# 10k float32 samples (noise in float64 is slow on a CPU; rounding is far below the MC
# error), the deterministic ones 20k in float64.
BIAS = 0.03
GAUSSIAN_CASES = [
    ("ddpm", 1000, {"variance": "beta_tilde"}, 10_000, torch.float32),
    ("ddpm", 250, {"variance": "beta"}, 10_000, torch.float32),
    ("ddim", 1000, {"eta": 1.0}, 10_000, torch.float32),
    ("ddim", 400, {"eta": 0.0}, 20_000, F64),
    ("dpmpp-2m", 50, {}, 20_000, F64),
    ("dpmpp-3m", 50, {}, 20_000, F64),
    ("euler", 400, {}, 20_000, F64),
    ("heun", 50, {}, 20_000, F64),
]


@pytest.mark.parametrize("name, steps, options, n, dtype", GAUSSIAN_CASES, ids=lambda v: str(v))
def test_samples_of_gaussian_data_have_its_mean_and_covariance(name, steps, options, n, dtype):
    mean, cov = _correlated_gaussian()
    g = torch.Generator().manual_seed(GAUSSIAN_CASES.index((name, steps, options, n, dtype)))  # independent draws
    x = sample(name, gaussian_denoiser(mean, cov, SCHEDULE), (n, 4), SCHEDULE, steps=steps, generator=g,
               dtype=dtype, **options).double()
    W = torch.linalg.inv(torch.linalg.cholesky(cov))  # whitening: W Sigma_0 W^T = I
    mean_err = (W @ (x.mean(0) - mean)).abs().max()
    cov_err = (W @ torch.cov(x.T) @ W.T - torch.eye(4, dtype=F64)).abs().max()
    # 5 Monte-Carlo standard errors (1/sqrt(n) for the mean, sqrt(2/n) for a variance) plus the
    # bias; the mean also carries the prior mismatch x_T ~ N(0, I) vs q(x_T), about 0.006 here.
    assert mean_err < 5 / math.sqrt(n) + 0.01, f"whitened mean off by {mean_err:.4f}"
    assert cov_err < 5 * math.sqrt(2 / n) + BIAS, f"whitened covariance off by {cov_err:.4f}"


# -- orders of convergence on the probability-flow ODE -------------------------------------
ORDER_STEPS = [20, 40, 80, 160]


def _ode_error(name: str, steps: int) -> float:
    """Max error of a deterministic sampler on Gaussian data, Karras grid, vs the exact ODE solution."""
    mean = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=F64)
    cov = torch.diag(torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=F64))
    denoise = gaussian_denoiser(mean, cov, SCHEDULE)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    grid = step_grid(SCHEDULE, steps, "karras")
    sigma_T, sigma_last = SCHEDULE.sigma_at(grid[[0, -1]]).tolist()
    exact_ve = gaussian_ode_solution(x_T * math.sqrt(1 + sigma_T ** 2), sigma_T, sigma_last, mean, cov)
    reference = denoise(exact_ve / math.sqrt(1 + sigma_last ** 2), grid[-1:].expand(64))
    return float((SAMPLERS[name](denoise, x_T, SCHEDULE, grid) - reference).abs().max())


@pytest.mark.parametrize("name, low, high", [("ddim", 0.8, 1.3), ("euler", 0.8, 1.3),
                                             ("dpmpp-2m", 1.7, 2.6), ("heun", 1.7, 2.6),
                                             ("dpmpp-3m", 1.6, 3.6)])
def test_order_of_convergence(name, low, high):
    """Slope of log(error) against log(steps) on a Karras grid, vs the exact ODE solution.

    Every one of these samplers ends with the same step, from the last grid time to sigma = 0,
    which returns x0_hat (Euler / DDIM to clean data; dpmpp-2m's step there is 1st order, h is
    infinite). Its error depends on sigma_min, not on the number of steps, so the reference
    applies that same final step to the exact ODE solution at the last grid time: the error
    measures the solver over the grid. dpmpp-2m's 1st-order first step has local error O(h^2)
    and does not lower its global order 2; with 20..160 steps ``lower_order_final`` (steps < 15
    in diffusers) never applies. Measured: 0.99 (ddim, euler), 2.13 (dpmpp-2m), 2.09 (heun),
    1.74 (dpmpp-3m: its 1st-order warm-up step, local error O(h^2), bounds the global order at 2;
    the third order lowers the error constant instead, see the next test).
    """
    errors = [_ode_error(name, steps) for steps in ORDER_STEPS]
    order = -np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0]
    assert low <= order <= high, f"{name}: measured order {order:.2f}, errors {errors}"


def test_dpmpp_3m_is_more_accurate_than_2m_from_20_steps():
    """Same ODE problem as above: 3M's error is 4-9x below 2M's at 20-160 Karras steps (measured
    0.018 vs 0.156 at 20 steps). At 10 steps 3M is worse (1.3 vs 0.53): its 3rd-order
    extrapolation over the grid's large first jumps overshoots, which is why it is not the default."""
    for steps in ORDER_STEPS:
        err = {name: _ode_error(name, steps) for name in ("dpmpp-2m", "dpmpp-3m")}
        assert err["dpmpp-3m"] < err["dpmpp-2m"] / 3, (steps, err)


def test_ddim_is_euler_and_eta_one_is_ddpm():
    """DDIM(eta=0) is Euler in sigma (Song et al. 2021, eq. 14); DDIM(eta=1) is DDPM with beta_tilde."""
    mean, cov = _correlated_gaussian()
    denoise = gaussian_denoiser(mean, cov, SCHEDULE)
    grid = step_grid(SCHEDULE, 30, "trailing")
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    torch.testing.assert_close(SAMPLERS["ddim"](denoise, x_T, SCHEDULE, grid),
                               SAMPLERS["euler"](denoise, x_T, SCHEDULE, grid), rtol=1e-10, atol=1e-10)
    ddim = SAMPLERS["ddim"](denoise, x_T, SCHEDULE, grid, eta=1.0, generator=torch.Generator().manual_seed(6))
    ddpm = SAMPLERS["ddpm"](denoise, x_T, SCHEDULE, grid, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)


# -- parity with diffusers on identical inputs ----------------------------------------------
@functools.cache
def diffusers_schedule() -> Schedule:
    """difflab's linear schedule with diffusers' float32 alpha_bar, so both sides use identical
    alpha_bar. (diffusers' float32 cumprod is off by up to 3.6e-7 relative, which near t = 0 is a
    0.4% error in 1 - alpha_bar = 1e-4: with difflab's float64 schedule a 1000-step DDPM chain
    differs from diffusers' by about 2e-5, all of it diffusers' rounding.)"""
    from diffusers import DDPMScheduler

    alpha_bar = DDPMScheduler().alphas_cumprod.double()  # (T,), float32 values
    betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return Schedule("linear", betas)


FAKE_DATA_VAR = 0.25


def fake_eps_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed stand-in for a trained eps-network (no weights), integer t only.

    The exact eps_hat of data N(0, 0.25 I), sqrt(1 - ab) x / (0.25 ab + 1 - ab), plus a term
    nonlinear in x and t, 0.1 sqrt(ab) tanh(x / 2) cos(t / 300), which moves x0_hat by at most
    0.1: samples stay of order 1, so float32 rounding stays far below the 1e-5 tolerance.
    """
    t = append_dims(torch.as_tensor(t, device=x.device), x)  # (B or 1, 1, 1, 1), in x's dtype: integers stay exact
    alpha_bar = diffusers_schedule().alpha_bar.to(x.device, x.dtype)[t.long()]
    exact = (1 - alpha_bar).sqrt() * x / (FAKE_DATA_VAR * alpha_bar + 1 - alpha_bar)
    return exact + 0.1 * alpha_bar.sqrt() * torch.tanh(0.5 * x) * torch.cos(t.to(x.dtype) / 300)


PARITY_SHAPE = (2, 3, 8, 8)
PARITY_ATOL = 1e-5


def _diffusers_loop(scheduler, x_T: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """The sampling loop of a diffusers pipeline, with the fake network."""
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(fake_eps_model(x, t), t, x, **step_kwargs).prev_sample
    return x


def _parity(name: str, scheduler, steps: int, spacing: str, options: dict, seed: int | None,
            **step_kwargs) -> float:
    """Max |difflab - diffusers| from the same x_T, grid and (when seeded) the same noise stream."""
    scheduler.set_timesteps(steps)
    schedule = diffusers_schedule()
    grid = step_grid(schedule, steps, spacing)
    assert torch.equal(grid.long(), scheduler.timesteps), "the grids differ"
    x_T = torch.randn(PARITY_SHAPE, generator=torch.Generator().manual_seed(7))
    denoiser = NetworkDenoiser(fake_eps_model, schedule, prediction="eps")
    kwargs = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    ours = SAMPLERS[name](denoiser, x_T, schedule, grid, **kwargs, **options)
    kwargs = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    theirs = _diffusers_loop(scheduler, x_T, **kwargs, **step_kwargs)
    assert ours.dtype == theirs.dtype == torch.float32
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize("variance, diffusers_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_matches_diffusers(variance, diffusers_type, steps):
    """DDPMScheduler draws one randn(shape, generator) per step with t > 0, as ddpm does per
    non-final step; with its default "leading" spacing the last step is t = 0, so the streams agree.

    diffusers' alpha_bar table is upcast to float64 (the same values) so that, like difflab, it
    computes the per-step scalars in float64 and only the tensor arithmetic in float32. In pure
    float32 its beta = 1 - ab_t / ab_{t-1} is off by up to 6e-4 relative near t = 0, which puts
    its 1000-step chains 1.3e-5 from a float64 computation (difflab: 1.2e-6 from it).
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(variance_type=diffusers_type, clip_sample=False, timestep_spacing="leading")
    scheduler.alphas_cumprod, scheduler.one = scheduler.alphas_cumprod.double(), scheduler.one.double()
    err = _parity("ddpm", scheduler, steps, "leading", {"variance": variance}, 8)
    assert err < PARITY_ATOL, err


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(eta, spacing):
    """DDIMScheduler with eta > 0 draws one randn per step like ddim (plus one unused on its last step)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    err = _parity("ddim", scheduler, 50, spacing, {"eta": eta}, 9 if eta > 0 else None, eta=eta)
    assert err < PARITY_ATOL, err


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_dpmpp_2m_matches_diffusers(steps, spacing):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="zero", timestep_spacing=spacing)
    err = _parity("dpmpp-2m", scheduler, steps, spacing, {}, None)
    assert err < PARITY_ATOL, err


@pytest.mark.parametrize("steps", [8, 14, 20])
def test_dpmpp_3m_matches_diffusers(steps):
    """Order 3, with diffusers' warm-up and lower_order_final (below 15 steps) on the last two steps."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3,
                                            final_sigmas_type="zero", timestep_spacing="trailing")
    err = _parity("dpmpp-3m", scheduler, steps, "trailing", {}, None)
    assert err < PARITY_ATOL, err


# -- the API --------------------------------------------------------------------------------
def _tiny_denoiser():
    mean, cov = _correlated_gaussian()
    return gaussian_denoiser(mean, cov, SCHEDULE)


def test_registry_and_default_grids():
    assert list(SAMPLERS) == ["ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "euler", "heun"]
    # dpmpp-2m on karras, edm (Karras, sigma_max 80) at <= 10 steps: measured on Fashion-MNIST (BENCHMARKS.md)
    assert DEFAULT_GRID == {"ddpm": "trailing", "ddim": "trailing", "dpmpp-2m": "karras", "dpmpp-3m": "karras",
                            "euler": "karras", "heun": "karras"}
    assert [default_grid("dpmpp-2m", n) for n in (4, 10, 11, 20)] == ["edm", "edm", "karras", "karras"]
    assert default_grid("ddim", 4) == "trailing"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_unknown_option_is_a_user_error(name):
    grid = step_grid(SCHEDULE, 3)
    with pytest.raises(UserError, match=f"sampler '{name}' has no option 'etaa'"):
        SAMPLERS[name](_tiny_denoiser(), torch.randn(2, 4), SCHEDULE, grid, etaa=0.5)


@pytest.mark.parametrize("name, options, words", [("ddpm", {"variance": "large"}, "unknown ddpm variance"),
                                                  ("ddim", {"eta": -1.0}, "eta must be a number >= 0")])
def test_bad_option_values_are_user_errors(name, options, words):
    with pytest.raises(UserError, match=words):
        SAMPLERS[name](_tiny_denoiser(), torch.randn(2, 4), SCHEDULE, step_grid(SCHEDULE, 3), **options)


def test_unknown_sampler_is_a_user_error():
    with pytest.raises(UserError, match="unknown sampler 'plms': use one of ddpm, ddim, dpmpp-2m, dpmpp-3m, euler, heun"):
        sample("plms", _tiny_denoiser(), (2, 4), SCHEDULE, steps=5)


@pytest.mark.parametrize("bad", [torch.tensor([5.0, 7.0]), torch.tensor([5.0, 5.0]), torch.tensor([1000.0]),
                                 torch.tensor([]), torch.tensor([[3.0]])])
def test_bad_grids_are_user_errors(bad):
    with pytest.raises(UserError, match="timesteps must"):
        SAMPLERS["euler"](_tiny_denoiser(), torch.randn(2, 4), SCHEDULE, bad)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_samples_and_dtype_kept(name):
    denoise = _tiny_denoiser()
    a, b, c = (sample(name, denoise, (3, 4), SCHEDULE, steps=6, generator=torch.Generator().manual_seed(s),
                      progress=True, **({"eta": 0.5} if name == "ddim" else {})) for s in (11, 11, 12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == (3, 4) and torch.isfinite(a).all()


def test_denoiser_gets_one_time_per_sample_and_the_condition():
    seen = []

    def denoiser(x_t, t, cond):
        seen.append((t.shape, t.dtype, t.device, cond))
        return torch.zeros_like(x_t)

    cond = {"labels": torch.tensor([1, 2])}
    for name in SAMPLERS:
        sample(name, denoiser, (2, 4), SCHEDULE, steps=3, cond=cond)
    assert seen and all(s == (torch.Size([2]), torch.float32, torch.device("cpu"), cond) for s in seen)
