"""Parameterisations (eps, x0, v) and the one denoiser contract every Gaussian sampler uses.

The contract (STYLE.md, "one contract per family")::

    Denoiser = (x_t, t, cond) -> x0_hat

``x_t`` (B, ...) is a sample of q(x_t | x_0) in the variance-preserving form
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, ``t`` (B,) float times
(fractional allowed, see :mod:`difflab.schedules`), ``cond`` a mapping of keyword
arguments for the network (``labels``, ``context``, ``context_mask``, ``drop``).
A network predicts one of

=========  =========================================================  =========================
name       target                                                     paper
=========  =========================================================  =========================
``eps``    the noise eps                                              Ho et al. 2020 (Alg. 1)
``x0``     the clean data x_0
``v``      sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0              Salimans & Ho 2022, Sec. 4
=========  =========================================================  =========================

and every conversion between them lives here, nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from difflab.errors import UserError
from difflab.schedules import Schedule, append_dims

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")
Cond = Mapping[str, Tensor]
Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]


def check_prediction(prediction: str) -> None:
    """Raise a one-line UserError for an unknown parameterisation."""
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)}")


def prediction_target(prediction: Prediction, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """The training target of a parameterisation; ``alpha_bar`` broadcastable to x0."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    check_prediction(prediction)
    raise AssertionError  # unreachable


def x0_from_prediction(prediction: Prediction, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0_hat from a network output; ``alpha_bar`` broadcastable to x_t."""
    if prediction == "eps":
        return (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
    if prediction == "x0":
        return out
    if prediction == "v":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out
    check_prediction(prediction)
    raise AssertionError  # unreachable


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """eps_hat = (x_t - sqrt(alpha_bar) x0_hat) / sqrt(1 - alpha_bar)."""
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


class NetworkDenoiser:
    """Wrap a network that predicts eps / x0 / v into the denoiser contract.

    Args:
        net: called as ``net(x_t, t, **cond)``.
        schedule: the schedule the network was trained with.
        prediction: what the network outputs.
        clip_x0: clamp x0_hat to [-1, 1] (diffusers' ``clip_sample``); off by default.
    """

    def __init__(self, net: nn.Module | Callable[..., Tensor], schedule: Schedule,
                 prediction: Prediction = "eps", clip_x0: bool = False) -> None:
        check_prediction(prediction)
        self.net, self.schedule, self.prediction, self.clip_x0 = net, schedule, prediction, clip_x0

    def __call__(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        net_dtype = next(self.net.parameters()).dtype if isinstance(self.net, nn.Module) else x_t.dtype
        out = self.net(x_t.to(net_dtype), t.to(net_dtype), **(cond or {})).to(x_t.dtype)
        alpha_bar = append_dims(self.schedule.alpha_bar_at(t), x_t)
        x0_hat = x0_from_prediction(self.prediction, out, x_t, alpha_bar)
        return x0_hat.clamp(-1, 1) if self.clip_x0 else x0_hat


def _with_null(cond: Cond, batch: int, device: torch.device) -> dict[str, Tensor]:
    """Stack a conditional and an unconditional copy of ``cond``: (2B, ...), ``drop`` set on the second half."""
    drop = cond.get("drop", torch.zeros(batch, dtype=torch.bool, device=device))
    doubled = {k: torch.cat([v, v]) for k, v in cond.items() if k != "drop"}
    doubled["drop"] = torch.cat([drop, torch.ones_like(drop)])
    return doubled


def classifier_free_guidance(denoiser: Denoiser, guidance: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) around any denoiser.

    x0_guided = x0_uncond + w (x0_cond - x0_uncond); in x0 form this equals the
    eps-form of the paper, because eps_hat is affine in x0_hat at fixed (x_t, t).
    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one. The
    unconditional branch sets ``drop`` (the network's learned null condition); both
    branches run in one batched call.
    """
    if guidance == 1.0:
        return denoiser

    def guided(x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        if not cond:
            return denoiser(x_t, t, cond)
        both = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), _with_null(cond, len(x_t), x_t.device))
        x0_cond, x0_uncond = both.chunk(2)
        return x0_uncond + guidance * (x0_cond - x0_uncond)

    return guided


# -- dynamic thresholding (Imagen) ------------------------------------------------------------
QUANTILE_MAX_ELEMENTS = 2 ** 24  # the largest input torch.quantile accepts


def dynamic_threshold(x0_hat: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3 and Appendix E).

    s = the ``percentile``-th percentile of |x0_hat| over each sample, s <- max(s, 1), then
    x0_hat <- clip(x0_hat, -s, s) / s: saturated pixels are pushed inwards instead of clipped, so large
    guidance weights do not saturate the image. The result lies in [-1, 1]; a sample already inside
    [-1, 1] is left as it is (s = 1).

    Args:
        x0_hat: (B, ...) denoised estimates, any rank.
        percentile: p in (0, 100] (numpy's convention, linear interpolation); Imagen uses 99.5.

    Returns:
        (B, ...) like ``x0_hat``.
    """
    if not 0 < percentile <= 100:
        raise UserError(f"dynamic thresholding percentile must be in (0, 100], got {percentile}: e.g. 99.5")
    flat = x0_hat.detach().abs().flatten(1).float()  # (B, N)
    rows = max(1, QUANTILE_MAX_ELEMENTS // max(1, flat.shape[1]))  # torch.quantile takes at most 2^24 values
    s = torch.cat([torch.quantile(chunk, percentile / 100, dim=1) for chunk in flat.split(rows)])  # (B,)
    s = append_dims(s.clamp(min=1), x0_hat)  # (B, 1, ...)
    return torch.maximum(torch.minimum(x0_hat, s), -s) / s



def thresholded(denoiser: Denoiser, percentile: float | None) -> Denoiser:
    """``denoiser`` whose x0_hat goes through :func:`dynamic_threshold` (None = ``denoiser`` as it is).

    Wrap it around the guided denoiser (:func:`classifier_free_guidance`): Imagen thresholds the guided
    estimate, which is what large guidance weights push out of range.
    """
    if percentile is None:
        return denoiser

    def denoise(x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        return dynamic_threshold(denoiser(x_t, t, cond), percentile)

    return denoise
