"""A 2-D Gaussian mixture whose density is known exactly: the ground truth of the likelihood check.

Notation (as :mod:`difflab.schedules` and :mod:`difflab.analytic`):

=============  ===========================================================================
symbol         meaning
=============  ===========================================================================
``w_k``        weight of component k (sum 1)
``mu_k``       its mean (D,)
``s_k``        its standard deviation (isotropic: covariance s_k^2 I)
``p(x)``       sum_k w_k N(x; mu_k, s_k^2 I), the data density
``H``          -E_p[log p(x)], the differential entropy in nats: no model can have a smaller
               expected negative log-likelihood, so every variational bound must lie above it
``alpha_bar``  q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I)
=============  ===========================================================================

Under the forward process each component stays Gaussian: q(x_t | k) = N(sqrt(ab) mu_k,
(ab s_k^2 + 1 - ab) I), so E[x_0 | x_t] (the optimal denoiser) is closed form too
(:func:`mixture_denoiser`).

H has no closed form for a mixture; :meth:`GaussianMixture.entropy` integrates -p log p on a
grid. The integrand is smooth and vanishes (to e^{-TAIL_STDS^2/2}) at the box edge, so the
plain Riemann sum converges faster than any power of the step (the trapezoid rule on a
rapidly decaying function); at ``ENTROPY_GRID_STEP`` halving the step changes H by < 1e-9 nats
(tests/test_known_density.py checks the change < 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.denoisers import Cond, Denoiser
from difflab.errors import UserError
from difflab.schedules import Schedule

TAIL_STDS = 10.0  # the integration box reaches this many component stds beyond every mean
ENTROPY_GRID_STEP = 0.02  # grid spacing of the entropy integral (in data units)

# The shipped mixture "mixture2d": five modes on a ring plus a wider one at the centre, unequal
# weights; per-dimension variance 0.6, about that of images scaled to [-1, 1].
RING_MODES = 5
RING_RADIUS = 1.2
RING_STD = 0.2
RING_WEIGHT = 0.16  # each; the centre gets the rest (0.2)
CENTRE_STD = 0.3


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """An isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I) in D dimensions (float64 buffers).

    Args:
        weights: w (K,), positive, summing to 1.
        means: mu (K, D).
        stds: s (K,), positive.
    """

    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    stds: Tensor  # (K,)

    @property
    def dim(self) -> int:
        """D, the data dimension."""
        return self.means.shape[1]

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for x (B, D), in float64 on x's device: (B,)."""
        return _mixture_log_prob(x, self.weights, self.means, self.stds)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
        """n samples (n, D) float32 on ``device``, drawn with ``generator`` (on that device)."""
        w, mu, s = (v.to(device) for v in (self.weights, self.means, self.stds))
        k = torch.multinomial(w, n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.dim, device=device, dtype=torch.float64, generator=generator)
        return (mu[k] + s[k, None] * noise).float()

    def variance(self) -> Tensor:
        """Per-dimension variance of the data (D,): E[s_k^2] + Var_k(mu_k)."""
        mean = self.weights @ self.means  # (D,)
        return self.weights @ (self.stds[:, None] ** 2 + (self.means - mean) ** 2)

    def grid(self, step: float = ENTROPY_GRID_STEP) -> tuple[Tensor, float]:
        """A square grid covering all the mass (D = 2): points (N, 2) float64 and the cell area."""
        if self.dim != 2:
            raise UserError(f"grid integration is for 2-D mixtures, this one has D={self.dim}: use a 2-D mixture")
        reach = TAIL_STDS * float(self.stds.max())
        lo = self.means.min(0).values - reach
        hi = self.means.max(0).values + reach
        axes = [torch.arange(float(a), float(b) + step, step, dtype=torch.float64) for a, b in zip(lo, hi)]
        gx, gy = torch.meshgrid(*axes, indexing="ij")  # (Nx, Ny) each
        return torch.stack([gx.flatten(), gy.flatten()], dim=1), step ** 2  # (Nx*Ny, 2)

    def entropy(self, step: float = ENTROPY_GRID_STEP) -> float:
        """H = -integral p log p, in nats, by a Riemann sum on :meth:`grid` (error < 1e-6 nats)."""
        points, area = self.grid(step)
        log_p = self.log_prob(points)
        return float(-(log_p.exp() * log_p).sum() * area)


def _mixture_log_prob(x: Tensor, weights: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """log sum_k w_k N(x; mu_k, s_k^2 I) for x (B, D), float64: (B,)."""
    x = x.to(torch.float64)
    w, mu, s = (v.to(x.device, torch.float64) for v in (weights, means, stds))
    D = x.shape[1]
    sq = (x[:, None, :] - mu[None]).pow(2).sum(-1)  # (B, K)
    log_normal = -0.5 * sq / s ** 2 - D * torch.log(s) - 0.5 * D * math.log(2 * math.pi)  # (B, K)
    return torch.logsumexp(w.log() + log_normal, dim=1)


def mixture_denoiser(mixture: GaussianMixture, schedule: Schedule) -> Denoiser:
    """The exact denoiser E[x_0 | x_t] of a Gaussian mixture, in the denoiser contract.

    With v_k = ab s_k^2 + 1 - ab (component k's variance at time t):
    r_k(x_t) proportional to w_k N(x_t; sqrt(ab) mu_k, v_k I) and
    x0_hat = sum_k r_k (mu_k + sqrt(ab) s_k^2 / v_k (x_t - sqrt(ab) mu_k)).

    Args:
        mixture: the data distribution.
        schedule: gives alpha_bar_t for the (fractional) times t.

    Returns:
        ``denoiser(x_t, t, cond=None) -> x0_hat`` for x_t (B, D), t (B,); ``cond`` is ignored.
    """

    def denoiser(x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        x = x_t.to(torch.float64)
        alpha_bar = schedule.alpha_bar_at(t).to(x.device, torch.float64)[:, None, None]  # (B, 1, 1)
        mu, s, w = (v.to(x.device, torch.float64) for v in (mixture.means, mixture.stds, mixture.weights))
        mu_t = alpha_bar.sqrt() * mu[None]  # (B, K, D)
        var_t = alpha_bar[..., 0] * s ** 2 + 1 - alpha_bar[..., 0]  # (B, K)
        sq = (x[:, None, :] - mu_t).pow(2).sum(-1)  # (B, K)
        logits = w.log() - 0.5 * sq / var_t - 0.5 * mixture.dim * var_t.log()  # (B, K)
        r = logits.softmax(dim=1)  # (B, K)
        gain = (alpha_bar[..., 0].sqrt() * s ** 2 / var_t)[..., None]  # (B, K, 1)
        x0_k = mu[None] + gain * (x[:, None, :] - mu_t)  # (B, K, D)
        return (r[..., None] * x0_k).sum(1).to(x_t.dtype)  # (B, D)

    return denoiser


def ring_mixture(modes: int = RING_MODES, radius: float = RING_RADIUS, ring_std: float = RING_STD,
                 ring_weight: float = RING_WEIGHT, centre_std: float = CENTRE_STD) -> GaussianMixture:
    """``modes`` equal components evenly on a circle plus one at the centre (the rest of the weight).

    Args:
        modes: components on the ring. radius: the ring's radius. ring_std: their s.
        ring_weight: the weight of each ring component (modes * ring_weight < 1).
        centre_std: s of the centre component.
    """
    if not 0 < modes * ring_weight < 1:
        raise UserError(f"{modes} ring modes of weight {ring_weight} leave no weight for the centre: "
                        "choose modes * ring_weight < 1")
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes  # (K-1,)
    ring = radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # (K-1, 2)
    means = torch.cat([ring, torch.zeros(1, 2, dtype=torch.float64)])  # (K, 2)
    weights = torch.tensor([ring_weight] * modes + [1 - modes * ring_weight], dtype=torch.float64)
    stds = torch.tensor([ring_std] * modes + [centre_std], dtype=torch.float64)
    return GaussianMixture(weights, means, stds)


MIXTURES = {"mixture2d": ring_mixture}


def load_mixture(name: str) -> GaussianMixture:
    """The named mixture (see :data:`MIXTURES`)."""
    if name not in MIXTURES:
        raise UserError(f"unknown mixture {name!r}: set data.name to one of {', '.join(MIXTURES)}")
    return MIXTURES[name]()
