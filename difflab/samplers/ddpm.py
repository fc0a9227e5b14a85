"""Ancestral sampling of DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Each step from t to the next grid time s < t draws x_s from the posterior
q(x_s | x_t, x_0 = x0_hat) (eqs. 6-7), with the jump variance beta' = 1 - alpha_bar_t / alpha_bar_s
in place of beta_t, so that a grid coarser than the T training steps works (as diffusers'
``DDPMScheduler`` does for fewer steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.errors import UserError
from difflab.samplers.common import check_timesteps, randn_like, steps_bar, take_options, time_batch, with_clean
from difflab.schedules import Schedule, posterior_coefficients

VARIANCES = ("beta_tilde", "beta")  # Ho et al. 2020, Sec. 3.2: the two choices of sigma_t^2


def ddpm(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
         cond: Cond | None = None, generator: torch.Generator | None = None,
         progress: bool = False, **options: Any) -> Tensor:
    """DDPM ancestral sampling: Ho et al. 2020, Algorithm 2, on any descending grid.

    x_s = c_x0 x0_hat + c_xt x_t + sigma_t z with the posterior coefficients of
    :func:`difflab.schedules.posterior_coefficients`; no noise on the last step (to clean data).

    Options:
        variance: ``"beta_tilde"`` (default; sigma_t^2 = beta_tilde_t, diffusers' "fixed_small")
            or ``"beta"`` (sigma_t^2 = beta'_t, diffusers' "fixed_large").

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    variance = take_options("ddpm", options, variance="beta_tilde")["variance"]
    if variance not in VARIANCES:
        raise UserError(f"unknown ddpm variance {variance!r}: use one of {', '.join(VARIANCES)}")
    times = with_clean(check_timesteps(schedule, timesteps))
    alpha_bar = schedule.alpha_bar_at(times)  # (N + 1,) float64, last = 1
    alpha_bar_t, alpha_bar_s = alpha_bar[:-1], alpha_bar[1:]
    c_x0, c_xt, beta_tilde = posterior_coefficients(alpha_bar_t, alpha_bar_s)
    sigma = (beta_tilde if variance == "beta_tilde" else 1 - alpha_bar_t / alpha_bar_s).sqrt()
    t, c_x0, c_xt, sigma = times.tolist(), c_x0.tolist(), c_xt.tolist(), sigma.tolist()
    n = len(t) - 1
    x = x_T
    for i in steps_bar(n, "ddpm", progress):
        x0_hat = denoiser(x, time_batch(t[i], x), cond)
        x = c_x0[i] * x0_hat + c_xt[i] * x
        if i < n - 1:
            x = x + sigma[i] * randn_like(x, generator)
    return x
