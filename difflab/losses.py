"""Training losses of Gaussian diffusion.

Algorithm 1 of Ho et al. 2020 (the "simple" loss): draw t ~ U{0..T-1}, eps ~ N(0, I),
form x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps and regress the network's
prediction on its target (eps, x0 or v, :mod:`difflab.denoisers`) with mean squared error.

Optional weighting: Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via
Min-SNR Weighting Strategy", eq. 8-9), which caps the weight of low-noise steps. With
snr = alpha_bar / (1 - alpha_bar), the weight on the x0-error is min(snr, gamma); divided by
the factor each target already carries (snr for eps, snr + 1 for v, 1 for x0).
Progressive distillation (Salimans & Ho 2022) weights it max(snr, 1) instead ("truncated SNR").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from difflab.denoisers import Prediction, check_prediction, prediction_target
from difflab.errors import UserError
from difflab.schedules import Schedule, append_dims

WEIGHTINGS = ("simple", "min-snr")


def min_snr_weight(snr: Tensor, gamma: float, prediction: Prediction) -> Tensor:
    """Per-sample weight of the Min-SNR-gamma strategy for a target (Hang et al. 2023)."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def truncated_snr_weight(snr: Tensor, prediction: Prediction) -> Tensor:
    """Per-sample weight on a target's squared error for progressive distillation (Salimans & Ho 2022, Sec. 4).

    The x0-error is weighted max(snr, 1) ("truncated SNR") for eps and x0 targets, divided, as in
    :func:`min_snr_weight`, by the factor the target already carries (snr for eps, 1 for x0); a v target
    keeps its plain squared error, which is the x0-error weighted snr + 1 (the paper's "SNR+1").
    """
    if prediction == "v":
        return torch.ones_like(snr)
    truncated = snr.clamp(min=1)
    return truncated / snr if prediction == "eps" else truncated


def per_sample_mse(out: Tensor, target: Tensor) -> Tensor:
    """(B,) mean squared error of each sample of a batch (B, ...), in float32."""
    return (out.float() - target.float()).pow(2).flatten(1).mean(1)


def diffusion_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    schedule: Schedule,
    *,
    prediction: Prediction = "eps",
    weighting: str = "simple",
    min_snr_gamma: float = 5.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Algorithm 1 (Ho et al. 2020) for any parameterisation, optionally Min-SNR weighted.

    Args:
        net: ``net(x_t, t) -> prediction`` (conditioning already bound by the caller).
        x0: clean data (B, ...).
        schedule: the noise schedule.
        generator: draws t and eps (on x0's device), for exactly reproducible steps.

    Returns:
        The scalar loss, mean over batch and dimensions.
    """
    check_prediction(prediction)
    if weighting not in WEIGHTINGS:
        raise UserError(f"unknown loss weighting {weighting!r}: use one of {', '.join(WEIGHTINGS)}")
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha_bar_t = schedule.alpha_bar.to(x0.device)[t]  # (B,) float64
    alpha_bar = append_dims(alpha_bar_t, x0)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    target = prediction_target(prediction, x0, eps, alpha_bar)
    out = net(x_t, t.float())
    per_sample = per_sample_mse(out, target)  # (B,)
    if weighting == "min-snr":
        snr = (alpha_bar_t / (1 - alpha_bar_t)).float()
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction)
    return per_sample.mean()
