"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models").

The non-Markovian generative process of eq. 12: from t to the next grid time s < t,

    x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z,
    sigma(eta) = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)   (eq. 16)

eta = 0 is the deterministic DDIM (Euler on the probability-flow ODE in sigma, eq. 14);
eta = 1 is DDPM with sigma^2 = beta_tilde.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser, eps_from_x0
from difflab.errors import UserError
from difflab.samplers.common import check_timesteps, randn_like, steps_bar, take_options, time_batch, with_clean
from difflab.schedules import Schedule, append_dims


def ddim(denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
         cond: Cond | None = None, generator: torch.Generator | None = None,
         progress: bool = False, **options: Any) -> Tensor:
    """DDIM sampling: Song et al. 2021, eq. 12 with sigma(eta) of eq. 16.

    Options:
        eta: noise scale, default 0.0 (deterministic); 1.0 matches DDPM's beta_tilde.

    Returns:
        Samples of clean data, shaped like ``x_T``.
    """
    eta = take_options("ddim", options, eta=0.0)["eta"]
    if not isinstance(eta, (int, float)) or eta < 0:
        raise UserError(f"ddim eta must be a number >= 0, got {eta!r}: pass eta=0.0 (deterministic) to 1.0")
    times = with_clean(check_timesteps(schedule, timesteps))
    alpha_bar = schedule.alpha_bar_at(times)  # (N + 1,) float64, last = 1
    alpha_bar_t, alpha_bar_s = alpha_bar[:-1], alpha_bar[1:]
    sigma = eta * ((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)).sqrt()
    c_eps = (1 - alpha_bar_s - sigma ** 2).clamp(min=0).sqrt()
    c_x0 = alpha_bar_s.sqrt()
    t, c_x0, c_eps, sigma_list = times.tolist(), c_x0.tolist(), c_eps.tolist(), sigma.tolist()
    x = x_T
    for i in steps_bar(len(t) - 1, "ddim", progress):
        x0_hat = denoiser(x, time_batch(t[i], x), cond)
        eps_hat = eps_from_x0(x, x0_hat, alpha_bar_t[i])
        x = c_x0[i] * x0_hat + c_eps[i] * eps_hat
        if sigma_list[i] > 0:
            x = x + sigma_list[i] * randn_like(x, generator)
    return x


# -- one step at per-sample times (progressive distillation's teachers) --------------------------
def ddim_update(x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, schedule: Schedule) -> Tensor:
    """Eq. 12 with eta = 0 for a given x0_hat: x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps_hat,
    eps_hat the noise that x0_hat implies at (x_t, t): the forward process q(x_s | x0_hat) with that noise.

    Args:
        x_t: (B, ...). x0_hat: (B, ...) an estimate of x_0. t, s: (B,) times, s < t; s may be ``CLEAN_T``.
    """
    eps_hat = eps_from_x0(x_t, x0_hat, append_dims(schedule.alpha_bar_at(t), x_t))
    return schedule.q_sample(x0_hat, s, eps_hat)


def ddim_step(denoiser: Denoiser, x_t: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
              cond: Cond | None = None) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0) from t to s < t, at per-sample
    times: the step of :func:`ddim` (eta = 0). One denoiser call.

    Args:
        x_t: (B, ...). t, s: (B,) times; s may be ``CLEAN_T``.
    """
    return ddim_update(x_t, denoiser(x_t, t, cond), t, s, schedule)
