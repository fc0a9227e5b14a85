"""Noise schedules of discrete diffusion: the clean-token probability alpha(t), and the time draw of the loss.

Notation (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models" (MDLM), Sec. 3; Austin et
al. 2021, "Structured Denoising Diffusion Models in Discrete State-Spaces" (D3PM)):

==================  =========================================================================================
symbol              meaning
==================  =========================================================================================
``t``               diffusion time in [0, 1]; 0 = clean data, 1 = fully noised
``alpha``           alpha(t), the probability that a token is still clean at time t (MDLM Sec. 3): decreasing,
                    alpha(0) = 1, alpha(1) = ``eps`` (about 0)
``alpha_prime``     d alpha / d t (<= 0)
``weight``          -alpha'(t) / (1 - alpha(t)), the weight of the masked cross-entropy in the continuous-time
                    negative ELBO (MDLM eq. 10); 1 / t exactly for the log-linear schedule
``eps``             alpha(1): the schedules stop just short of pure noise (MDLM's ``noise.eps`` = 1e-3)
==================  =========================================================================================

``log-linear``: alpha(t) = 1 - (1 - eps) t (MDLM's ``LogLinearNoise``: total noise sigma(t) = -log alpha(t)).
``cosine``: alpha(t) = eps + (1 - eps) cos(pi t / 2) (MDLM's ``CosineNoise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.discrete.forward import rand
from difflab.errors import UserError

TOKEN_SCHEDULES = ("log-linear", "cosine")
DEFAULT_EPS = 1e-3  # MDLM's noise.eps: alpha(1) = eps
DEFAULT_T_MIN = 1e-3  # MDLM's training.sampling_eps: times of the loss drawn in [t_min, 1]


@dataclass(frozen=True)
class TokenSchedule:
    """A clean-token probability alpha(t) on t in [0, 1] (MDLM Sec. 3.1), its derivative and the ELBO weight.

    Every method takes times t of any shape and returns values of the same shape and dtype.
    """

    name: str = "log-linear"
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        if self.name not in TOKEN_SCHEDULES:
            raise UserError(f"unknown token schedule {self.name!r}: use one of {', '.join(TOKEN_SCHEDULES)}")
        if not 0.0 <= self.eps < 1.0:
            raise UserError(f"token schedule eps = {self.eps} is outside [0, 1): use a small value such as 1e-3")

    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t): the probability that a token is still clean at time t; alpha(0) = 1, alpha(1) = eps."""
        if self.name == "log-linear":
            return 1 - (1 - self.eps) * t
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * t)

    def alpha_prime(self, t: Tensor) -> Tensor:
        """d alpha / d t at t (non-positive)."""
        if self.name == "log-linear":
            return torch.full_like(t, -(1 - self.eps))
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * t)

    def weight(self, t: Tensor) -> Tensor:
        """-alpha'(t) / (1 - alpha(t)), the weight of the masked loss (MDLM eq. 10); 1 / t for log-linear.

        Infinite at t = 0: draw times in [t_min, 1] (:func:`draw_times`).
        """
        if self.name == "log-linear":
            return 1 / t  # the closed form of (1 - eps) / ((1 - eps) t), without its rounding
        return -self.alpha_prime(t) / (1 - self.alpha(t))


def token_schedule(name: str = "log-linear", eps: float = DEFAULT_EPS) -> TokenSchedule:
    """The token schedule called ``name``.

    Args:
        name: ``"log-linear"`` (MDLM's default) or ``"cosine"``.
        eps: alpha(1), the clean probability left at t = 1.

    Returns:
        The :class:`TokenSchedule`; an unknown name raises :class:`~difflab.errors.UserError`.
    """
    return TokenSchedule(name, eps)


def draw_times(B: int, generator: torch.Generator | None = None, *, t_min: float = DEFAULT_T_MIN,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Low-discrepancy times of a batch (Kingma et al. 2021, VDM's low-discrepancy sampler; used by MDLM).

    t_i = (u + i / B) mod 1 with one u ~ U[0, 1), mapped to [t_min, 1]: each t_i is uniform, and the batch
    covers the interval evenly, which lowers the variance of the batch-mean loss.

    Args:
        B: batch size.
        generator: the random source (draws on its device; the times go to ``device``, else stay there).
        t_min: the smallest time; the loss weight diverges at t = 0.
        device: where the times live.
        dtype: their dtype.

    Returns:
        (B,) times in [t_min, 1).
    """
    if not 0.0 <= t_min < 1.0:
        raise UserError(f"t_min = {t_min} is outside [0, 1): use a small value such as {DEFAULT_T_MIN}")
    if device is None and generator is not None:
        device = generator.device
    u = rand((), generator, device)
    t = (u + torch.arange(B, device=u.device, dtype=torch.float64) / B) % 1  # (B,)
    return (t_min + (1 - t_min) * t).to(dtype)
