"""DPM-Solver++(2M), (3M) and the (2S) step (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", arXiv 2211.01095).

Notation (VP form, as in the paper): alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t),
lambda_t = log(alpha_t / sigma_t) (half the log-SNR), h_i = lambda_{t_i} - lambda_{t_{i-1}}.
The data-prediction ODE, its linear part solved exactly (variation of constants):

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

with D_i = x0_hat (1st order) or the multistep estimate
D_i = (1 + 1/(2 r_i)) x0_hat_{i-1} - 1/(2 r_i) x0_hat_{i-2}, r_i = h_{i-1} / h_i (Algorithm 2).
The 3rd-order step adds the first and second divided differences of x0_hat over lambda
(D1, D2) with the exact integrals of their Taylor terms: alpha_t ((e^{-h} - 1)/h + 1) D1
and -alpha_t ((e^{-h} - 1 + h)/h^2 - 1/2) D2. The 1st-order step (D = x0_hat) is DDIM (Song et al.
2021, eq. 12 with eta = 0), which :func:`dpmpp_2s_step` uses twice.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.samplers.common import check_timesteps, steps_bar, take_options, time_batch, with_clean
from difflab.samplers.ddim import ddim_update
from difflab.schedules import Schedule


def dpmpp_2m(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
             cond: Cond | None = None, generator: torch.Generator | None = None,
             progress: bool = False, **options: Any) -> Tensor:
    """DPM-Solver++(2M): Lu et al. 2022, Algorithm 2 (multistep, 2nd order, data prediction).

    The first step is 1st order (no history yet). The last step, to clean data
    (sigma = 0, lambda = +inf, h = +inf), is 1st order too and returns x0_hat: the 2nd-order
    correction is undefined there (r = 0). This is diffusers' ``DPMSolverMultistepScheduler``
    with ``final_sigmas_type="zero"``, where ``lower_order_final`` has no further effect at
    order 2. Deterministic: ``generator`` is unused. No options.

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    take_options("dpmpp-2m", options)
    return _multistep(denoiser, x_T, schedule, timesteps, cond, progress, order=2, name="dpmpp-2m")


def dpmpp_3m(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
             cond: Cond | None = None, generator: torch.Generator | None = None,
             progress: bool = False, **options: Any) -> Tensor:
    """DPM-Solver++(3M): Lu et al. 2022, the 3rd-order multistep data-prediction solver (sec. 4-5,
    App. B: the multistep form of DPM-Solver-3 with two previous x0_hat).

    Warm-up as in diffusers' ``DPMSolverMultistepScheduler(solver_order=3)``: steps 1 and 2 are
    1st and 2nd order; the last step (to clean data) is 1st order; with fewer than
    ``LOWER_ORDER_FINAL_BELOW`` steps the one before it is 2nd order (``lower_order_final``, which
    stabilises few-step sampling). Deterministic: ``generator`` is unused. No options.

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    take_options("dpmpp-3m", options)
    return _multistep(denoiser, x_T, schedule, timesteps, cond, progress, order=3, name="dpmpp-3m")


def dpmpp_2m_trajectory(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
                        cond: Cond | None = None) -> Tensor:
    """The states of :func:`dpmpp_2m` at every time of ``timesteps`` and at clean data: (N + 1, B, ...),
    ``[0]`` = ``x_T``, ``[-1]`` = what :func:`dpmpp_2m` returns (the teacher of trajectory distillation,
    :mod:`difflab.distill`)."""
    states = [x_T]
    _multistep(denoiser, x_T, schedule, timesteps, cond, False, order=2, name="dpmpp-2m", states=states)
    return torch.stack(states)


LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final threshold on the number of steps


def _step_order(i: int, n: int, order: int) -> int:
    """Order of step i of n: limited by the history (i previous x0_hat) and lowered at the end."""
    if i == n - 1:
        return 1
    if i == n - 2 and n < LOWER_ORDER_FINAL_BELOW:
        order = min(order, 2)
    return min(order, i + 1)


def _multistep(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, cond: Cond | None,
               progress: bool, order: int, name: str, states: list[Tensor] | None = None) -> Tensor:
    """DPM-Solver++ multistep of the given order (2 or 3); see :func:`dpmpp_2m` for the update. Appends
    the state after every step to ``states`` when given."""
    times = with_clean(check_timesteps(schedule, timesteps))
    alpha_bar = schedule.alpha_bar_at(times)  # (N + 1,) float64, last = 1
    alpha, sigma = alpha_bar.sqrt().tolist(), (1 - alpha_bar).sqrt().tolist()
    lam = (0.5 * schedule.log_snr_at(times)).tolist()  # lambda_t, +inf at the end
    t = times.tolist()
    n = len(t) - 1
    x, history = x_T, []  # history: previous x0_hat, newest last
    for i in steps_bar(n, name, progress):
        x0_hat = denoiser(x, time_batch(t[i], x), cond)
        h = lam[i + 1] - lam[i]
        k = _step_order(i, n, order)
        phi_1 = math.expm1(-h)  # e^{-h} - 1
        x = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * phi_1) * x0_hat
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            D1_0 = (x0_hat - history[-1]) / r0
            if k == 2:
                x = x - (0.5 * alpha[i + 1] * phi_1) * D1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                D1_1 = (history[-1] - history[-2]) / r1
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
                x = x + (alpha[i + 1] * (phi_1 / h + 1)) * D1 - (alpha[i + 1] * ((phi_1 + h) / h ** 2 - 0.5)) * D2
        history = (history + [x0_hat])[-2:]
        if states is not None:
            states.append(x)
    return x


def dpmpp_2s_step(denoiser: Denoiser, x_t: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
                  cond: Cond | None = None) -> Tensor:
    """One DPM-Solver++(2S) step from t to s < t at per-sample times: Lu et al. 2022, Algorithm 1 with
    r = 1/2 (singlestep, 2nd order, data prediction; two denoiser calls).

    With lambda_m = (lambda_t + lambda_s) / 2 (sigma_m the geometric mean of sigma_t and sigma_s):
    u = the DDIM step t -> m with x0_hat(x_t, t), then the DDIM step t -> s with D = x0_hat(u, m)
    (the algorithm's D_i = (1 - 1/(2r)) x0_hat(x_t) + 1/(2r) x0_hat(u) at r = 1/2). Where s is
    ``CLEAN_T`` (lambda = +inf, no midpoint) the midpoint is t itself (u = x_t), so the step is the
    1st-order one and returns x0_hat(x_t, t).

    Args:
        x_t: (B, ...). t, s: (B,) times, s < t; s may be ``CLEAN_T``.
    """
    x0_hat = denoiser(x_t, t, cond)
    if bool((s < 0).all()):
        return ddim_update(x_t, x0_hat, t, s, schedule)
    sigma_m = (schedule.sigma_at(t) * schedule.sigma_at(s)).sqrt()  # (B,): lambda_m halfway
    m = torch.where(s.cpu() < 0, t.cpu().double(), schedule.t_from_sigma(sigma_m)).to(t)  # (B,); t where s is clean
    u = ddim_update(x_t, x0_hat, t, m, schedule)
    return ddim_update(x_t, denoiser(u, m, cond), t, s, schedule)
