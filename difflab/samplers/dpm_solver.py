"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", arXiv 2211.01095).

Notation (VP form, as in the paper): alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t),
lambda_t = log(alpha_t / sigma_t) (half the log-SNR), h_i = lambda_{t_i} - lambda_{t_{i-1}}.
The data-prediction ODE, its linear part solved exactly (variation of constants):

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

with D_i = x0_hat (1st order) or the multistep estimate
D_i = (1 + 1/(2 r_i)) x0_hat_{i-1} - 1/(2 r_i) x0_hat_{i-2}, r_i = h_{i-1} / h_i (Algorithm 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.samplers.common import check_timesteps, steps_bar, take_options, time_batch, with_clean
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
    times = with_clean(check_timesteps(schedule, timesteps))
    alpha_bar = schedule.alpha_bar_at(times)  # (N + 1,) float64, last = 1
    alpha, sigma = alpha_bar.sqrt().tolist(), (1 - alpha_bar).sqrt().tolist()
    lam = (0.5 * schedule.log_snr_at(times)).tolist()  # lambda_t, +inf at the end
    t = times.tolist()
    n = len(t) - 1
    x, x0_prev = x_T, None
    for i in steps_bar(n, "dpmpp-2m", progress):
        x0_hat = denoiser(x, time_batch(t[i], x), cond)
        h = lam[i + 1] - lam[i]
        if x0_prev is None or i == n - 1:
            D = x0_hat
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * D
        x0_prev = x0_hat
    return x
