"""The variational bound on the negative log-likelihood (ELBO), in nats and bits per dimension.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", eq. 5) and Nichol & Dhariwal 2021
("Improved Denoising Diffusion Probabilistic Models", sections 2-3) bound, in the paper's
indexing t = 1 .. T::

    -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                              (prior)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))      (one term per step)
    L_0     = -log p_theta(x_0 | x_1)                                  (decoder)

==============  ===========================================================================
symbol          meaning
==============  ===========================================================================
``t``           difflab's index 0 .. T-1 of x_t (the paper's t = index + 1); the step term at
                index t (1 .. T-1) is the KL of x_{t-1} given x_t, the paper's L_{t}
``x0_hat``      denoiser(x_t, t, cond), the one denoiser contract (:mod:`difflab.denoisers`)
``mu_tilde``    mean of q(x_{t-1} | x_t, x_0) (eq. 7); p_theta uses it with x0_hat for x_0
``beta_tilde``  variance of q(x_{t-1} | x_t, x_0): (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
``sigma^2``     variance of p_theta(x_{t-1} | x_t): beta_tilde_t or beta_t (Ho et al., sec. 3.2)
``bpd``         bits per dimension: nats / (D ln 2), D the number of elements of one x_0
==============  ===========================================================================

The decoder p_theta(x_0 | x_1) is N(x0_hat, sigma_1^2) - discretised into the 256 bins of
8-bit pixels for images (Ho et al., eq. 13), a plain density for continuous data. As in the
reference code of both papers, sigma_1^2 = beta_tilde at index 1 ("clipped": beta_tilde at
index 0 is 0) for either variance choice.

Cost: the exact sum evaluates the denoiser T times per sample. :func:`stratified_timesteps`
gives an unbiased estimate of the sum from k evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difflab.config import Config
from difflab.data.images import to_model_range
from difflab.denoisers import Cond, Denoiser, NetworkDenoiser
from difflab.errors import UserError
from difflab.samplers.common import randn_like
from difflab.samplers.ddpm import VARIANCES
from difflab.schedules import Schedule, append_dims, posterior_coefficients, schedule_from_config

DECODERS = ("discretized", "gaussian")  # 8-bit images | continuous data
PIXEL_LEVELS = 256  # values of an 8-bit pixel
BIN_HALF_WIDTH = 1.0 / (PIXEL_LEVELS - 1)  # half the width 2/255 of one pixel bin on [-1, 1]
GRID_TOL = 1e-3  # largest distance (in pixel levels) of data from the 8-bit grid
NLL_BATCH = 128  # images per batch of image_nll
NLL_EXACT_HEAD = 20  # with strata: the first steps, which carry most of the bits, summed exactly
LOG_2PI = math.log(2 * math.pi)


# -- Gaussian helpers, per element, in nats ----------------------------------------------------
def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) per element, in nats.

    Args:
        mean1, log_var1, mean2, log_var2: broadcastable tensors (log-variances, as in iDDPM).

    Returns:
        0.5 (log_var2 - log_var1 + exp(log_var1 - log_var2) + (mean1 - mean2)^2 exp(-log_var2) - 1).
    """
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, exp(log_var)) per element, in nats (a density: continuous data)."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _log_normal_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for standardised edges a < b, stable in both tails."""
    upper_tail = a > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): evaluate in the lower tail
    lo, hi = torch.where(upper_tail, -b, a), torch.where(upper_tail, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    ratio = -torch.expm1(torch.special.log_ndtr(lo) - log_hi)  # 1 - Phi(lo) / Phi(hi)
    return log_hi + torch.log(ratio.clamp(min=torch.finfo(ratio.dtype).tiny))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log P(x) per element for 8-bit data under N(mean, exp(log_var)) cut into pixel bins.

    Ho et al. 2020, eq. 13 (iDDPM's ``discretized_gaussian_log_likelihood``): ``x`` holds pixel
    values k / 127.5 - 1 (k = 0..255); the bin of x is [x - 1/255, x + 1/255], the edge bins
    extended to -inf and +inf, so the 256 probabilities sum to 1. Exact normal CDFs
    (``log_ndtr``), not iDDPM's tanh approximation.

    Returns:
        log-probabilities in nats, broadcast like the inputs.
    """
    inv_std = torch.exp(-0.5 * log_var)
    lower = (x - mean - BIN_HALF_WIDTH) * inv_std  # standardised bin edges
    upper = (x - mean + BIN_HALF_WIDTH) * inv_std
    first, last = x < -1 + BIN_HALF_WIDTH, x > 1 - BIN_HALF_WIDTH
    log_mass = _log_normal_mass(lower, upper)
    log_mass = torch.where(first, torch.special.log_ndtr(upper), log_mass)
    return torch.where(last, torch.special.log_ndtr(-lower), log_mass)


# -- the bound -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ElboTerms:
    """The terms of the bound per sample, in nats, each summed over all non-batch dimensions."""

    prior: Tensor  # (B,) L_T
    kl: Tensor  # (B, K) the step terms at ``timesteps``
    timesteps: Tensor  # (K,) or (B, K) int64: the evaluated indices t in 1..T-1
    weights: Tensor  # like timesteps: (kl * weights).sum(-1) estimates the sum over all steps
    decoder: Tensor  # (B,) L_0 = -log p(x_0 | x_1)
    dims: int  # D, elements of one sample

    def total(self) -> Tensor:
        """The bound -log p(x_0) <= prior + weighted step terms + decoder, (B,) nats."""
        return self.prior + (self.kl * self.weights).sum(-1) + self.decoder

    def bits_per_dim(self) -> Tensor:
        """:meth:`total` in bits per dimension, (B,)."""
        return self.total() / (self.dims * math.log(2))


def _check_names(variance: str, decoder: str) -> None:
    if variance not in VARIANCES:
        raise UserError(f"unknown reverse-process variance {variance!r}: use one of {', '.join(VARIANCES)}")
    if decoder not in DECODERS:
        raise UserError(f"unknown decoder {decoder!r}: use one of {', '.join(DECODERS)}")


def _check_on_pixel_grid(x0: Tensor) -> None:
    """The discretised decoder needs 8-bit data: values k / 127.5 - 1."""
    levels = (x0.detach().double() + 1) * (PIXEL_LEVELS - 1) / 2
    if levels.min() < -GRID_TOL or levels.max() > PIXEL_LEVELS - 1 + GRID_TOL or \
            (levels - levels.round()).abs().max() > GRID_TOL:
        raise UserError("decoder='discretized' needs 8-bit data in [-1, 1] (uint8 / 127.5 - 1): "
                        "pass decoder='gaussian' for continuous data")


def _check_timesteps(timesteps: Tensor | None, weights: Tensor | None, T: int,
                     batch: int) -> tuple[Tensor, Tensor]:
    """Timesteps (K,) or (B, K) as int64 and weights alike (default: all of 1..T-1, weight 1)."""
    if timesteps is None:
        timesteps = torch.arange(1, T)
    steps = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
    if steps.dim() not in (1, 2) or steps.numel() == 0 or (steps.dim() == 2 and len(steps) != batch) \
            or (steps != steps.round()).any() or steps.min() < 1 or steps.max() > T - 1:
        raise UserError(f"timesteps must be integers in 1..{T - 1}, shaped (K,) or ({batch}, K): "
                        f"use None for all steps or difflab.evaluate.likelihood.stratified_timesteps")
    w = torch.ones(steps.shape, dtype=torch.float64) if weights is None else \
        torch.as_tensor(weights).detach().to("cpu", torch.float64)
    if w.shape != steps.shape:
        raise UserError(f"weights {tuple(w.shape)} must be shaped like timesteps {tuple(steps.shape)}: "
                        f"pass the weights stratified_timesteps returned with them")
    return steps.long(), w


def _step_log_variance(schedule: Schedule, t: Tensor, variance: str, like: Tensor) -> Tensor:
    """log sigma_t^2 of p(x_{t-1} | x_t) at integer indices t (B,) >= 1, broadcastable to ``like``."""
    t = t.cpu()
    if variance == "beta":
        return append_dims(schedule.betas[t].log().to(like.device), like)
    beta_tilde = posterior_coefficients(schedule.alpha_bar[t], schedule.alpha_bar[t - 1])[2]
    return append_dims(beta_tilde.log().to(like.device), like)


def _noisy(x0: Tensor, t: Tensor, schedule: Schedule, generator: torch.Generator | None) -> Tensor:
    """x_t ~ q(x_t | x_0) at integer indices t (B,), in x0's dtype, noise from ``generator``."""
    return schedule.q_sample(x0, t.to(x0.device), randn_like(x0, generator))


def _denoise(denoiser: Denoiser, x_t: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
    """x0_hat in float64, t passed as float (float32 unless x_t is float64)."""
    t_float = t.to(x_t.device, torch.float64 if x_t.dtype == torch.float64 else torch.float32)
    return denoiser(x_t, t_float, cond).double()


def _step_kl(denoiser: Denoiser, x0: Tensor, t: Tensor, schedule: Schedule, variance: str,
             cond: Cond | None, generator: torch.Generator | None) -> Tensor:
    """KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) at indices t (B,), summed per sample: (B,)."""
    x_t = _noisy(x0, t, schedule, generator)
    x0_hat = _denoise(denoiser, x_t, t, cond)
    x0_64, x_t64 = x0.double(), x_t.double()
    mean_q, beta_tilde = schedule.q_posterior(x0_64, x_t64, t)
    mean_p, _ = schedule.q_posterior(x0_hat, x_t64, t)
    log_var_p = _step_log_variance(schedule, t, variance, x_t64)
    return normal_kl(mean_q, beta_tilde.log(), mean_p, log_var_p).flatten(1).sum(1)


def _prior_kl(x0: Tensor, schedule: Schedule) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) per sample, (B,)."""
    alpha_bar = schedule.alpha_bar[-1].item()
    mean = math.sqrt(alpha_bar) * x0.double()
    log_var = torch.full_like(mean, math.log(1 - alpha_bar))
    return normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean)).flatten(1).sum(1)


def _decoder_nll(denoiser: Denoiser, x0: Tensor, schedule: Schedule, decoder: str, cond: Cond | None,
                 generator: torch.Generator | None) -> Tensor:
    """-log p(x_0 | x_1) per sample, (B,): mean x0_hat (the posterior mean at index 0).

    Its variance: for 8-bit data (``discretized``) iDDPM's clipped beta_tilde of index 1, as in
    Ho et al.'s and Nichol & Dhariwal's code (the bins, not the variance, dominate there); for
    continuous data (``gaussian``) beta_1, the noise of the first forward step: q(x_0 | x_1) of a
    smooth density has variance beta_1 / (1 - beta_1) ~ beta_1, and beta_tilde_2 (about twice
    as large) would cost ~0.12 nats per dimension even with the exact denoiser.
    """
    t = torch.zeros(len(x0), dtype=torch.long)
    x0_hat = _denoise(denoiser, _noisy(x0, t, schedule, generator), t, cond)
    if decoder == "discretized":
        sigma2_1 = posterior_coefficients(schedule.alpha_bar[1], schedule.alpha_bar[0])[2]  # beta_tilde, index 1
    else:
        sigma2_1 = schedule.betas[0]
    log_var = torch.full_like(x0_hat, float(sigma2_1.log()))
    log_likelihood = discretized_gaussian_log_likelihood if decoder == "discretized" else gaussian_log_likelihood
    return -log_likelihood(x0.double(), x0_hat, log_var).flatten(1).sum(1)


def elbo_terms(denoiser: Denoiser, x0: Tensor, schedule: Schedule, *, variance: str = "beta_tilde",
               decoder: str = "discretized", cond: Cond | None = None, timesteps: Tensor | None = None,
               weights: Tensor | None = None, generator: torch.Generator | None = None) -> ElboTerms:
    """The terms of the variational bound (Ho et al. 2020, eq. 5) for a batch of data.

    Each term draws its own x_t ~ q(x_t | x_0) (noise from ``generator``: one draw like x0 per
    evaluated step, in the order of the columns of ``timesteps``, then one for the decoder);
    the terms are computed in float64 whatever the dtype of x0 and the denoiser.

    Args:
        denoiser: ``denoiser(x_t, t, cond) -> x0_hat`` (:class:`difflab.denoisers.NetworkDenoiser`
            turns an eps / x0 / v network into one).
        x0: clean data (B, ...); in [-1, 1] on the 8-bit grid for ``decoder="discretized"``.
        schedule: the schedule the denoiser was trained with.
        variance: sigma_t^2 of p(x_{t-1} | x_t): ``"beta_tilde"`` or ``"beta"``.
        decoder: ``"discretized"`` (8-bit images) or ``"gaussian"`` (a density, continuous data).
        cond: conditioning passed to the denoiser.
        timesteps: indices t in 1..T-1 whose step terms to evaluate, (K,) shared by the batch or
            (B, K) per sample; None = all T-1 of them (the exact sum).
        weights: like ``timesteps``, so that (kl * weights).sum(-1) estimates the sum over all
            steps (as :func:`stratified_timesteps` returns); None = 1 each, i.e. the sum over
            the given steps only.
        generator: source of the noise, on x0's device (None = the global generator).

    Returns:
        :class:`ElboTerms` of per-sample nats; ``total()`` is the bound, ``bits_per_dim()`` in bits/dim.
    """
    _check_names(variance, decoder)
    if decoder == "discretized":
        _check_on_pixel_grid(x0)
    B = len(x0)
    steps, w = _check_timesteps(timesteps, weights, schedule.T, B)
    columns = steps.expand(B, -1) if steps.dim() == 1 else steps  # (B, K)
    kl = torch.stack([_step_kl(denoiser, x0, columns[:, k], schedule, variance, cond, generator)
                      for k in range(columns.shape[1])], dim=1)  # (B, K)
    return ElboTerms(prior=_prior_kl(x0, schedule), kl=kl, timesteps=steps, weights=w.to(kl.device),
                     decoder=_decoder_nll(denoiser, x0, schedule, decoder, cond, generator),
                     dims=x0[0].numel())


# -- a cheap unbiased estimate for large T ---------------------------------------------------------
def strata_edges(T: int, k: int) -> Tensor:
    """Edges (k + 1,) int64 splitting 1..T-1 into k contiguous strata [edges[j], edges[j+1]).

    Stratum sizes differ by at most one.
    """
    if not 1 <= k <= T - 1:
        raise UserError(f"the number of strata must lie in 1..{T - 1} (the step terms), got {k}: "
                        f"pass a value in that range, or None for the exact sum")
    return 1 + torch.arange(k + 1) * (T - 1) // k


def stratified_timesteps(T: int, k: int, generator: torch.Generator | None = None, *,
                         batch: int | None = None) -> tuple[Tensor, Tensor]:
    """One uniformly drawn index per stratum of 1..T-1, weighted by the stratum's size.

    Split 1..T-1 into k contiguous strata S_j (:func:`strata_edges`), draw t_j uniformly from
    S_j and weight it by |S_j|. The estimate sum_j |S_j| L_{t_j} is unbiased for the full sum:
    E[|S_j| L_{t_j}] = |S_j| * (1 / |S_j|) sum_{t in S_j} L_t, the sum over S_j, and the strata
    partition 1..T-1. With k = T-1 it is the exact sum.

    Args:
        T: number of diffusion steps. k: number of strata (1..T-1).
        generator: source of the draws (any device; results are on the CPU).
        batch: draw independently for this many samples: results (batch, k) instead of (k,).

    Returns:
        (timesteps int64, weights float64), both (k,) or (batch, k).
    """
    edges = strata_edges(T, k)
    sizes = edges[1:] - edges[:-1]  # (k,)
    shape = (k,) if batch is None else (batch, k)
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64).cpu()
    offsets = (u * sizes).long().clamp(max=sizes - 1)  # uniform in 0..|S_j|-1
    return edges[:-1] + offsets, sizes.double().expand(shape).clone()


# -- trained image models --------------------------------------------------------------------------
def _check_images(cfg: Config, images_uint8: Tensor | np.ndarray) -> Tensor:
    """uint8 images (N, C, H, W) matching the run's channels and resolution."""
    images = torch.as_tensor(images_uint8)
    C, H = cfg.data.channels, cfg.data.resolution
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0 or \
            (C is not None and images.shape[1] != C) or (H is not None and tuple(images.shape[2:]) != (H, H)):
        raise UserError(f"the likelihood needs uint8 images (N, {C}, {H}, {H}) like the run's data, got "
                        f"{images.dtype} {tuple(images.shape)}: pass dataset.images of the run's dataset")
    return images


def _check_labels(cfg: Config, labels: Tensor | None, n: int) -> Tensor | None:
    K = cfg.model.num_classes
    if labels is None:
        return None
    if K == 0:
        raise UserError("this run is unconditional, so labels cannot be used: pass labels=None")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= K:
        raise UserError(f"labels must be {n} class ids in 0..{K - 1}, got shape {tuple(labels.shape)}: "
                        f"pass one label per image")
    return labels


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    n = len(values)
    stderr = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), stderr


@torch.inference_mode()
def head_and_strata(T: int, exact_steps: int, k: int, generator: torch.Generator | None,
                    batch: int) -> tuple[Tensor, Tensor]:
    """Timesteps and weights (batch, exact_steps + k): 1..exact_steps exactly, then k strata of the rest.

    The step terms fall like 1/t at small t, so uniform strata over all of 1..T-1 would weight one
    draw from 1..T/k by T/k and be very noisy; the head is summed exactly instead, and
    :func:`stratified_timesteps` estimates the tail (unbiased).
    """
    if not 0 <= exact_steps < T - k:
        raise UserError(f"{exact_steps} exact steps leave fewer than {k} steps for the strata of 1..{T - 1}: "
                        f"pass fewer exact steps or strata")
    tail, tail_weights = stratified_timesteps(T - exact_steps, k, generator, batch=batch)  # in 1..T-1-head
    head = torch.arange(1, exact_steps + 1).expand(batch, -1)  # (B, exact_steps)
    return (torch.cat([head, tail + exact_steps], dim=1),
            torch.cat([torch.ones(batch, exact_steps, dtype=torch.float64), tail_weights], dim=1))


def image_nll(cfg: Config, model: nn.Module, images_uint8: Tensor | np.ndarray, *, labels: Tensor | None = None,
              variance: str | None = None, strata: int | None = None, exact_head: int = NLL_EXACT_HEAD,
              batch_size: int = NLL_BATCH, seed: int = 0, progress: bool = True) -> dict:
    """The variational bound of a trained image model on 8-bit images, in bits per dimension.

    The denoiser is built as :func:`difflab.tasks.image.generate` builds it, without clipping
    x0_hat (the bound is that of the unclipped reverse process). For a class-conditional run,
    ``labels`` gives -log p(x | y); without them the model's learned null condition (trained by
    condition dropout) gives the unconditional -log p(x), comparable with unconditional runs.

    Args:
        cfg, model: a loaded image run's config and network (``ImageRun.config``, ``ImageRun.model``).
        images_uint8: uint8 (N, C, H, W) at the run's channels and resolution.
        labels: (N,) class ids for a class-conditional run, or None (null condition).
        variance: sigma_t^2 of the reverse process, ``beta_tilde`` | ``beta``; None = the run's
            ``sample.variance`` (the DDPM sampler's choice).
        strata: None = the exact sum over all T-1 step terms (T network evaluations per image);
            k = the first ``exact_head`` step terms exactly plus a stratified estimate of the
            rest (:func:`head_and_strata`, exact_head + k + 1 evaluations per image, drawn
            independently per image, so ``bpd_stderr`` includes its variance).
        exact_head: with ``strata``, how many of the first steps (which carry most of the
            bits and vary most) are summed exactly.
        batch_size: images per batch. seed: seeds the noise and the strata draws.
        progress: a tqdm bar with images/s.

    Returns:
        {"bpd": mean bound in bits/dim, "bpd_stderr": its standard error over images, "n",
        "prior_bpd" and "decoder_bpd" (means), "t": per column of the step terms, the index
        (exact) or the mean index of the stratum, "kl_bpd": the mean per-step term there in
        bits/dim (for strata, an unbiased estimate of the stratum's average step term),
        "variance", "strata"}.
    """
    images = _check_images(cfg, images_uint8)
    labels = _check_labels(cfg, labels, len(images))
    variance = cfg.sample.variance if variance is None else variance
    _check_names(variance, "discretized")
    schedule = schedule_from_config(cfg.diffusion)
    head = 0 if strata is None else exact_head
    edges = strata_edges(schedule.T - head, schedule.T - 1 if strata is None else strata) + head
    device = next(model.parameters()).device
    denoiser = NetworkDenoiser(model, schedule, cfg.diffusion.prediction, clip_x0=False)
    generator = torch.Generator(device=device).manual_seed(seed)
    scale = 1 / (images[0].numel() * math.log(2))  # nats -> bits per dimension
    bpd, prior, decoder, kl_sum = [], [], [], torch.zeros(head + len(edges) - 1, dtype=torch.float64)
    bar = tqdm(total=len(images), desc="likelihood", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(images), batch_size):
        x0 = to_model_range(images[start:start + batch_size].to(device))  # (B, C, H, W)
        cond = None if labels is None else {"labels": labels[start:start + batch_size].to(device)}
        steps, weights = (None, None) if strata is None else \
            head_and_strata(schedule.T, head, strata, generator, batch=len(x0))
        terms = elbo_terms(denoiser, x0, schedule, variance=variance, decoder="discretized", cond=cond,
                           timesteps=steps, weights=weights, generator=generator)
        bpd.append(terms.bits_per_dim().cpu())
        prior.append(terms.prior.cpu() * scale)
        decoder.append(terms.decoder.cpu() * scale)
        kl_sum += terms.kl.sum(0).cpu() * scale
        bar.update(len(x0))
    bar.close()
    bpd_mean, bpd_stderr = _mean_and_stderr(torch.cat(bpd))
    # (K,) the exact head's indices, then the middle of each stratum (the index itself when exact)
    t = torch.cat([torch.arange(1, head + 1, dtype=torch.float64), (edges[:-1] + edges[1:] - 1).double() / 2])
    return {"bpd": bpd_mean, "bpd_stderr": bpd_stderr, "n": len(images),
            "prior_bpd": float(torch.cat(prior).mean()), "decoder_bpd": float(torch.cat(decoder).mean()),
            "t": [int(v) if strata is None else float(v) for v in t.tolist()],
            "kl_bpd": (kl_sum / len(images)).tolist(), "variance": variance, "strata": strata,
            "exact_head": head}
