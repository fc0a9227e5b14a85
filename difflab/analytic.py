"""Exact results for Gaussian data x_0 ~ N(mean, cov): the ground truth that tests check against.

Notation (as :mod:`difflab.schedules`; the lecture):

=============  ===========================================================================
symbol         meaning
=============  ===========================================================================
``mean``       m, the data mean (D,)
``cov``        Sigma_0, the data covariance (D, D), symmetric positive semi-definite;
               Sigma_0 = U diag(s^2) U^T (eigen-decomposition, s^2 the variances along U)
``alpha_bar``  q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I) (variance preserving)
``sigma``      sqrt((1 - alpha_bar) / alpha_bar); x_ve = x_t / sqrt(alpha_bar) = x_0 + sigma eps
``x0_hat``     E[x_0 | x_t], the optimal denoiser (minimum mean squared error)
=============  ===========================================================================

Because x_0 and x_t are jointly Gaussian, E[x_0 | x_t] is the linear regression
m + Cov(x_0, x_t) Var(x_t)^{-1} (x_t - E[x_t]), and the probability-flow ODE is linear and
decouples along the eigenvectors U of Sigma_0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.schedules import Schedule, append_dims


def _eigh(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues s^2 (D,) and eigenvectors U (D, D) of a covariance, in float64 (negatives clipped)."""
    variances, U = torch.linalg.eigh(cov.detach().to(torch.float64))
    return variances.clamp(min=0), U


def gaussian_marginal(mean: Tensor, cov: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of q(x_t) for x_0 ~ N(mean, cov): x_t ~ N(sqrt(ab) m, ab Sigma_0 + (1 - ab) I).

    Args:
        mean: (D,). cov: (D, D). alpha_bar: a scalar (float or 0-dim tensor).

    Returns:
        (mean_t (D,), cov_t (D, D)) in the dtype of ``cov``.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=cov.dtype, device=cov.device)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return alpha_bar.sqrt() * mean.to(cov.dtype), alpha_bar * cov + (1 - alpha_bar) * eye


def gaussian_denoiser(mean: Tensor, cov: Tensor, schedule: Schedule) -> Denoiser:
    """The exact denoiser E[x_0 | x_t] for data x_0 ~ N(mean, cov), in the denoiser contract.

    x0_hat = m + Sigma_0 sqrt(ab) (ab Sigma_0 + (1 - ab) I)^{-1} (x_t - sqrt(ab) m),
    computed in the eigenbasis of Sigma_0 (gain sqrt(ab) s^2 / (ab s^2 + 1 - ab) per direction),
    so a singular covariance is fine.

    Args:
        mean: (D,). cov: (D, D), symmetric positive semi-definite.
        schedule: gives alpha_bar_t for the (fractional) times t.

    Returns:
        ``denoiser(x_t, t, cond=None) -> x0_hat`` for x_t (B, ...) with D elements per sample
        (flattened), t (B,); ``cond`` is ignored. Computes in the dtype of x_t.
    """
    variances, U = _eigh(cov)
    mean64 = mean.detach().to(torch.float64)

    def denoiser(x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        x = x_t.reshape(len(x_t), -1)  # (B, D)
        m, s2, u = (v.to(x.device, x.dtype) for v in (mean64, variances, U))
        shared = bool((t == t[0]).all())  # samplers call with one time for the whole batch
        alpha_bar = append_dims(schedule.alpha_bar_at(t[:1] if shared else t).to(x.device), x)  # (B or 1, 1)
        gain = alpha_bar.sqrt() * s2 / (alpha_bar * s2 + 1 - alpha_bar)  # (B or 1, D)
        if shared:  # one matrix M = sqrt(ab) Sigma_0 (ab Sigma_0 + (1 - ab) I)^{-1}, one fused matmul
            M = (u * gain) @ u.T  # (D, D)
            x0_hat = torch.addmm(m - alpha_bar[0].sqrt() * m @ M, x, M)  # (B, D)
        else:
            x0_hat = m + ((x - alpha_bar.sqrt() * m) @ u * gain) @ u.T  # (B, D)
        return x0_hat.reshape(x_t.shape)

    return denoiser


def gaussian_ode_solution(x_ve: Tensor, sigma_from: float, sigma_to: float, mean: Tensor, cov: Tensor) -> Tensor:
    """Exact solution of the probability-flow ODE for Gaussian data, in the VE form.

    The ODE dx_ve/dsigma = (x_ve - x0_hat)/sigma (Karras et al. 2022, eq. 1 with sigma(t) = t) with
    the exact VE denoiser m + Sigma_0 (Sigma_0 + sigma^2 I)^{-1} (x_ve - m) reads, along each
    eigenvector of Sigma_0 with variance s^2, dy/dsigma = sigma y / (s^2 + sigma^2), so

        y(sigma_to) = y(sigma_from) sqrt(s^2 + sigma_to^2) / sqrt(s^2 + sigma_from^2),  y = U^T (x_ve - m).

    For a diagonal covariance this is per dimension.

    Args:
        x_ve: (B, D) states at ``sigma_from`` (VE form: x_t / sqrt(alpha_bar_t)).
        sigma_from, sigma_to: noise levels (>= 0; 0 is clean data).
        mean: (D,). cov: (D, D).

    Returns:
        (B, D) states at ``sigma_to``, VE form, in the dtype of ``x_ve``.
    """
    variances, U = _eigh(cov)
    ratio = ((variances + sigma_to ** 2) / (variances + sigma_from ** 2)).sqrt()  # (D,)
    m, u, ratio = (v.to(x_ve.device, x_ve.dtype) for v in (mean.detach().to(torch.float64), U, ratio))
    return m + ((x_ve - m) @ u * ratio) @ u.T
