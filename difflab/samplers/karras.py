"""Euler and Heun on the probability-flow ODE in sigma (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models").

The VP state x_t is carried in the variance-exploding form x_ve = x_t / sqrt(alpha_bar_t)
= x_t sqrt(1 + sigma^2) = x_0 + sigma eps, where the probability-flow ODE is (eq. 1 with sigma(t) = t)

    dx_ve / dsigma = d(x_ve, sigma) = (x_ve - x0_hat) / sigma.

At sigma = 0 the two forms agree, so the result is clean data in either.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.samplers.common import check_timesteps, steps_bar, take_options, time_batch, with_clean
from difflab.schedules import Schedule


def _ode_direction(denoiser: Denoiser, x_ve: Tensor, t: float, sigma: float, cond: Cond | None) -> Tensor:
    """d = (x_ve - x0_hat) / sigma, the denoiser called on the VP form x_ve / sqrt(1 + sigma^2)."""
    x0_hat = denoiser(x_ve / math.sqrt(1 + sigma ** 2), time_batch(t, x_ve), cond)
    return (x_ve - x0_hat) / sigma


def _sigmas(schedule: Schedule, timesteps: Tensor) -> tuple[list[float], list[float]]:
    """Grid times followed by CLEAN_T, and their sigmas (last = 0), as Python floats."""
    times = with_clean(check_timesteps(schedule, timesteps))
    return times.tolist(), schedule.sigma_at(times).tolist()


def euler(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
          cond: Cond | None = None, generator: torch.Generator | None = None,
          progress: bool = False, **options: Any) -> Tensor:
    """Euler's method on the ODE in sigma: Karras et al. 2022, Algorithm 1 without the 2nd-order step.

    x_ve <- x_ve + (sigma_{i+1} - sigma_i) d_i. Deterministic; no options. On the same grid
    this equals DDIM with eta = 0 (Song et al. 2021, eq. 14).

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    take_options("euler", options)
    t, sigma = _sigmas(schedule, timesteps)
    x = x_T * math.sqrt(1 + sigma[0] ** 2)  # VP -> VE
    for i in steps_bar(len(t) - 1, "euler", progress):
        x = x + (sigma[i + 1] - sigma[i]) * _ode_direction(denoiser, x, t[i], sigma[i], cond)
    return x


def heun(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
         cond: Cond | None = None, generator: torch.Generator | None = None,
         progress: bool = False, **options: Any) -> Tensor:
    """Heun's 2nd-order method: Karras et al. 2022, Algorithm 1 (deterministic sampler).

    An Euler step, then the trapezoidal correction with the slope at its end; the last step,
    to sigma = 0, stays an Euler step. N grid times cost 2N - 1 denoiser calls. No options.

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    take_options("heun", options)
    t, sigma = _sigmas(schedule, timesteps)
    x = x_T * math.sqrt(1 + sigma[0] ** 2)  # VP -> VE
    for i in steps_bar(len(t) - 1, "heun", progress):
        dt = sigma[i + 1] - sigma[i]
        d = _ode_direction(denoiser, x, t[i], sigma[i], cond)
        x_next = x + dt * d
        if sigma[i + 1] > 0:
            d_next = _ode_direction(denoiser, x_next, t[i + 1], sigma[i + 1], cond)
            x_next = x + dt * 0.5 * (d + d_next)
        x = x_next
    return x
