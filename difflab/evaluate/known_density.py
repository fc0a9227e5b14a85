"""The known-density check: a denoiser's variational bound on data of known density against its entropy.

The known-density check (issue 3): on data whose density p is known exactly, a model's
variational bound E_p[-ELBO(x)] (nats per sample, :func:`difflab.evaluate.likelihood.elbo_terms`
with the Gaussian decoder) can never fall below the entropy H = -E_p[log p(x)], and it should
approach H as training goes on. :func:`bound_vs_entropy` measures bound - H as

    floor  = E[-ELBO(exact)] - H     the exact denoiser E[x_0 | x_t] (:func:`mixture_denoiser`):
                                     what T steps and fixed reverse variances cost any model
    excess = E[-ELBO(model) + ELBO(exact)]   what the network's errors add (>= 0)

with three variance reductions: the control variate log p(x_i) (E[-log p] = H exactly), common
random numbers for the excess, and the first step terms (large, changing like 1/t) summed
exactly rather than sampled (:func:`difflab.evaluate.likelihood.head_and_strata`).

Reverse variance: for data that are smooth at the scale of the noise, the reverse step
q(x_{t-1} | x_t) has variance close to beta_t (Ho et al. 2020, sec. 3.2: beta is optimal for
x_0 ~ N(0, I), beta_tilde for a point mass); with beta_tilde the step terms at small t alone
cost ~0.45 nats per dimension (measured: the exact denoiser's bound lies 0.9 to 1.1 nats above H
in 2-D, linear schedule, T = 1000), so the check uses ``variance="beta"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.data.mixture import GaussianMixture, mixture_denoiser
from difflab.denoisers import Denoiser
from difflab.evaluate.likelihood import elbo_terms, head_and_strata
from difflab.schedules import Schedule

FLOOR_SAMPLES = 32768  # samples of the exact denoiser's bound (standard error about 1 / sqrt of this)
FLOOR_SEED = 1  # the floor's samples are independent of the model's (seed 0 by default)


@dataclass(frozen=True)
class ElboOptions:
    """How :func:`elbo_gaps` evaluates the bound."""

    variance: str = "beta"  # sigma_t^2 of the reverse process: beta | beta_tilde (see the module notes)
    timesteps: int | None = 50  # K stratified step terms per sample after the head; None = all T-1 exactly
    exact_steps: int = 50  # the head: the first (largest, fastest-changing) step terms, summed exactly
    batch_size: int = 4096  # samples per elbo_terms call


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo mean and its standard error, nats per sample."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Tensor) -> Estimate:
        """Mean and standard error of per-sample values (n,)."""
        return cls(float(values.mean()), float(values.std() / math.sqrt(len(values))), len(values))


@dataclass(frozen=True)
class BoundCheck:
    """A model's bound E[-ELBO] against the true entropy H, nats per sample (see :func:`bound_vs_entropy`)."""

    entropy: float  # H (grid integral, error < 1e-6)
    bound: float  # H + floor + excess: the estimate of E[-ELBO]
    gap: float  # bound - entropy = floor + excess
    gap_se: float  # its standard error
    floor: Estimate  # E[-ELBO] - H of the exact denoiser: the cost of T steps and fixed variances
    excess: Estimate  # E[-ELBO(model) + ELBO(exact)] on common random numbers: the cost of the model's errors
    direct: Estimate  # mean(-ELBO(x_i) + log p(x_i)) of the model alone (unbiased, noisier)
    prior: float  # the model's mean prior term KL(q(x_T | x_0) || N(0, I))
    kl: float  # its mean sum over t of the step terms
    decoder: float  # its mean -log p(x_0 | x_1)


@torch.inference_mode()
def elbo_gaps(denoiser: Denoiser, mixture: GaussianMixture, schedule: Schedule, *, n: int,
              options: ElboOptions = ElboOptions(), seed: int = 0) -> tuple[Tensor, dict[str, float]]:
    """Per-sample -ELBO(x_i) + log p(x_i) over x_i ~ p, whose mean estimates E[-ELBO] - H.

    Every random number (samples, timesteps, forward noise) comes from one generator seeded
    with ``seed``, so two denoisers evaluated with the same arguments see the same ones.

    Args:
        denoiser: the model, in the denoiser contract.
        mixture: the data distribution p (its samples and exact log-density).
        schedule: the schedule the denoiser was trained with.
        n: samples x_i ~ p.
        options: the reverse variance and which step terms to evaluate: the first
            ``exact_steps`` exactly and ``timesteps`` strata of the rest (:func:`head_and_strata`,
            drawn independently for every sample: an unbiased estimate of the sum over t), or
            all T-1 exactly when ``timesteps`` is None.

    Returns:
        (gaps (n,) float64, the mean ``prior``, ``kl`` (summed over t) and ``decoder`` terms).
    """
    o = options
    generator = torch.Generator().manual_seed(seed)
    gaps, prior, kl, decoder = [], [], [], []
    for start in range(0, n, o.batch_size):
        x0 = mixture.sample(min(o.batch_size, n - start), generator).double()  # (B, D)
        ts, ws = (head_and_strata(schedule.T, o.exact_steps, o.timesteps, generator, len(x0)) if o.timesteps
                  else (None, None))
        terms = elbo_terms(denoiser, x0, schedule, variance=o.variance, decoder="gaussian", timesteps=ts,
                           weights=ws, generator=generator)
        gaps.append(terms.total() + mixture.log_prob(x0))  # (B,)
        prior.append(terms.prior)
        kl.append((terms.kl * terms.weights).sum(-1))
        decoder.append(terms.decoder)
    means = {name: float(torch.cat(v).mean()) for name, v in (("prior", prior), ("kl", kl), ("decoder", decoder))}
    return torch.cat(gaps), means


def exact_floor(mixture: GaussianMixture, schedule: Schedule, *, n: int = FLOOR_SAMPLES,
                options: ElboOptions = ElboOptions(), seed: int = FLOOR_SEED) -> Estimate:
    """E[-ELBO] - H of the exact denoiser E[x_0 | x_t] (:func:`mixture_denoiser`), >= 0.

    The best any network can reach with this schedule, T and reverse variance; arguments as
    :func:`elbo_gaps`. Cheap (no network), so it affords many samples.
    """
    gaps, _ = elbo_gaps(mixture_denoiser(mixture, schedule), mixture, schedule, n=n, options=options, seed=seed)
    return Estimate.of(gaps)


def bound_vs_entropy(denoiser: Denoiser, mixture: GaussianMixture, schedule: Schedule, *, n: int = 4096,
                     options: ElboOptions = ElboOptions(), floor: Estimate | None = None,
                     seed: int = 0) -> BoundCheck:
    """Measure a denoiser's variational bound on mixture data against the mixture's entropy H.

    bound - H = floor + excess, estimated separately (both unbiased):

    * floor = E[-ELBO(exact)] - H: the bound of the exact denoiser, from many cheap samples
      (:func:`exact_floor`, or ``floor`` when given: compute it once for many checkpoints);
    * excess = E[-ELBO(model) + ELBO(exact)], from ``n`` samples on common random numbers:
      the same x_i, timesteps and noise for both, so the noise of the terms (the decoder's
      alone has a standard deviation of about 1 nat per sample) cancels in the difference.
      Each step term's expectation is smallest at the exact E[x_0 | x_t], so excess >= 0.

    Both use the control variate log p(x_i): E[-log p] = H exactly, and -ELBO(x) follows
    -log p(x) from sample to sample.

    Args:
        denoiser: the model, in the denoiser contract.
        mixture: the data distribution p.
        schedule: the schedule the denoiser was trained with.
        n: samples for the excess (network evaluations: n times the timesteps per sample).
        options: how to evaluate the bound (:class:`ElboOptions`).
        floor: a precomputed :func:`exact_floor` with the same ``options``; None computes it.
        seed: seeds the excess's samples.

    Returns:
        The :class:`BoundCheck`, nats per sample.
    """
    floor = floor or exact_floor(mixture, schedule, options=options)
    model, means = elbo_gaps(denoiser, mixture, schedule, n=n, options=options, seed=seed)
    exact, _ = elbo_gaps(mixture_denoiser(mixture, schedule), mixture, schedule, n=n, options=options, seed=seed)
    excess = Estimate.of(model - exact)
    entropy = mixture.entropy()
    gap = floor.mean + excess.mean
    return BoundCheck(entropy=entropy, bound=entropy + gap, gap=gap, gap_se=math.hypot(floor.se, excess.se),
                      floor=floor, excess=excess, direct=Estimate.of(model), **means)
