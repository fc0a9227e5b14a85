"""Noise schedules of discrete-time Gaussian diffusion, and sampling step grids.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; the lecture):

==============  =====================================================================
symbol          meaning
==============  =====================================================================
``beta``        per-step variance: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
``alpha``       1 - beta_t
``alpha_bar``   prod_{s <= t} alpha_s, so q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
``sigma``       sqrt((1 - alpha_bar) / alpha_bar), the noise-to-signal ratio of EDM / k-diffusion:
                x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps
``log_snr``     lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) = -2 log sigma_t
``beta_tilde``  posterior variance (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
==============  =====================================================================

The linear schedule runs beta evenly from ``beta_start`` to ``beta_end`` (config keys
``diffusion.beta_start`` / ``beta_end``, used as given: DiffWave's T = 50 from 1e-4 to 0.05);
without them from DDPM's 1e-4 to 0.02 scaled by 1000 / T (Nichol & Dhariwal 2021, Sec. 3.2),
which keeps alpha_bar_T near 0 for any T (4.0e-5 at T = 1000, 2.0e-5 at T = 100).

Time index convention: code uses t = 0 .. T-1 (the paper's t = 1 .. T). Samplers may
ask for fractional t (Karras grids); sigma is then interpolated linearly in log sigma
between the integer steps, as k-diffusion does. The special time ``CLEAN_T = -1`` means
"no noise": alpha_bar = 1, sigma = 0; every sampler ends there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from difflab.config import DDPM_BETA_END, DDPM_BETA_START, DiffusionConfig, default_linear_range
from difflab.errors import UserError

CLEAN_T = -1.0  # the time of clean data: alpha_bar = 1, sigma = 0
SCHEDULES = ("linear", "cosine")
GRIDS = ("trailing", "trailing-fractional", "leading", "linspace", "karras", "edm", "edm-open", "logsnr", "uniform",
         "diffwave")
# DiffWave's fast-sampling variance schedule, T_infer = 6 (Kong et al. 2021, Sec. 4 and Appendix B: trained with
# T = 50, beta linear from 1e-4 to 0.05): its betas, least noise first
DIFFWAVE_FAST_BETAS = (1e-4, 1e-3, 1e-2, 5e-2, 0.2, 0.5)
COSINE_S = 0.008  # Nichol & Dhariwal 2021, eq. 17 offset
COSINE_MAX_BETA = 0.999  # Nichol & Dhariwal 2021: betas clipped to avoid a singularity at t = T
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
EDM_SIGMA_MAX = 80.0  # Karras et al. 2022, Table 1: sigma_max of every sampler there, VP included


def linear_betas(T: int = 1000, beta_start: float = DDPM_BETA_START, beta_end: float = DDPM_BETA_END) -> Tensor:
    """The linear schedule of DDPM (Ho et al. 2020, Sec. 4): T betas evenly from beta_start to beta_end, (T,)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = COSINE_S, max_beta: float = COSINE_MAX_BETA) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def posterior_coefficients(alpha_bar_t: Tensor, alpha_bar_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of q(x_s | x_t, x_0) for any s < t (Ho et al. 2020, eqs. 6-7).

    With beta' = 1 - alpha_bar_t / alpha_bar_s (the variance of the jump s -> t),
    mean = c_x0 x_0 + c_xt x_t and variance = beta_tilde.

    Returns:
        (c_x0, c_xt, beta_tilde), broadcast like the inputs.
    """
    beta = 1 - alpha_bar_t / alpha_bar_s
    c_x0 = alpha_bar_s.sqrt() * beta / (1 - alpha_bar_t)
    c_xt = (1 - beta).sqrt() * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta
    return c_x0, c_xt, beta_tilde


def append_dims(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample values (B,) reshaped to broadcast over a batch ``like`` (B, ...) of any rank, in its dtype.

    k-diffusion's ``append_dims``: (B,) -> (B, 1, ..., 1) with ``like.dim()`` dimensions, so one line
    serves (B, D), (B, C, L) and (B, C, H, W) alike. The device is left as it is.

    Args:
        v: (B,) values (or one value, which broadcasts over the batch too).
        like: the batch (B, ...) whose rank and dtype the result takes.

    Returns:
        ``v`` in ``like.dtype``, shaped (B, 1, ..., 1).
    """
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete-time variance-preserving schedule, with closed forms used everywhere.

    Build with :func:`make_schedule`. All buffers are float64 on the CPU; methods move
    results to the device and dtype of their tensor arguments.
    """

    name: str
    betas: Tensor  # (T,)
    alpha_bar: Tensor = field(init=False)  # (T,)
    log_sigmas: Tensor = field(init=False)  # (T,), increasing

    def __post_init__(self) -> None:
        alpha_bar = torch.cumprod(1 - self.betas, dim=0)
        object.__setattr__(self, "alpha_bar", alpha_bar)
        object.__setattr__(self, "log_sigmas", 0.5 * torch.log((1 - alpha_bar) / alpha_bar))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    # -- time <-> sigma / alpha_bar / log-SNR, fractional t allowed --------------------
    def sigma_at(self, t: Tensor) -> Tensor:
        """sigma_t for float t in [0, T-1] (log-linear between steps); 0 where t < 0."""
        t64 = t.detach().to("cpu", torch.float64)
        tc = t64.clamp(0, self.T - 1)
        lo = tc.floor().long()
        hi = tc.ceil().long()
        w = tc - lo
        log_sigma = (1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]
        sigma = torch.where(t64 < 0, torch.zeros_like(log_sigma), log_sigma.exp())
        return sigma.to(t.device)

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha_bar_t = 1 / (1 + sigma_t^2) for float t; 1 where t < 0 (clean)."""
        return 1 / (1 + self.sigma_at(t) ** 2)

    def log_snr_at(self, t: Tensor) -> Tensor:
        """lambda_t = -2 log sigma_t (+inf for clean data)."""
        return -2 * torch.log(self.sigma_at(t))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_at` on [sigma_min, sigma_max] (clamped); float64, CPU."""
        log_sigma = sigma.detach().to("cpu", torch.float64).log().clamp(
            self.log_sigmas[0], self.log_sigmas[-1])
        hi = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return lo.double() + w

    # -- the forward process ----------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) in closed form: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

        Args:
            x0: clean data (B, ...). t: (B,) integer or float times. noise: eps like x0.
        """
        alpha_bar = append_dims(self.alpha_bar_at(t), x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I); t integer (B,)."""
        beta = append_dims(self.betas[t.long().cpu()].to(x_prev.device), x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) for integer t >= 1 (B,).

        Returns:
            mean (like x_t) and beta_tilde_t (B, 1, ...) broadcastable.
        """
        t_long = t.long().cpu()
        alpha_bar_t = self.alpha_bar[t_long]
        alpha_bar_s = torch.where(t_long > 0, self.alpha_bar[(t_long - 1).clamp(min=0)],
                                  torch.ones_like(alpha_bar_t))
        c_x0, c_xt, beta_tilde = posterior_coefficients(alpha_bar_t, alpha_bar_s)
        c_x0, c_xt = (append_dims(c.to(x_t.device), x_t) for c in (c_x0, c_xt))
        return c_x0 * x0 + c_xt * x_t, append_dims(beta_tilde.to(x_t.device), x_t)


def _linear_range(T: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
    """The linear schedule's (beta_1, beta_T): as given, or DDPM's range scaled by 1000 / T when both are None."""
    if beta_start is None and beta_end is None:
        return default_linear_range(T)
    if beta_start is None or beta_end is None:
        raise UserError(f"only one of diffusion.beta_start ({beta_start}) and beta_end ({beta_end}) is set: "
                        f"set both, or neither for DDPM's range scaled to diffusion.timesteps")
    if not 0 < beta_start <= beta_end < 1:
        raise UserError(f"diffusion.beta_start={beta_start} and beta_end={beta_end} must satisfy "
                        f"0 < beta_start <= beta_end < 1: e.g. beta_start=1e-4 beta_end=0.02")
    return beta_start, beta_end


def make_schedule(name: str = "linear", T: int = 1000, beta_start: float | None = None,
                  beta_end: float | None = None) -> Schedule:
    """Build a named schedule: ``linear`` (DDPM) or ``cosine`` (improved DDPM).

    Args:
        name: ``linear`` or ``cosine``.
        T: number of diffusion steps (at least 2).
        beta_start, beta_end: the linear schedule's beta_1 and beta_T, used as given (DiffWave's
            T = 50 from 1e-4 to 0.05, say); None for both = DDPM's 1e-4 .. 0.02 scaled by 1000 / T.
            The cosine schedule takes neither.

    Returns:
        The :class:`Schedule`.
    """
    if T < 2:
        raise UserError(f"diffusion.timesteps must be at least 2, got {T}: set diffusion.timesteps=1000")
    if name == "linear":
        return Schedule(name, linear_betas(T, *_linear_range(T, beta_start, beta_end)))
    if name == "cosine":
        if beta_start is not None or beta_end is not None:
            raise UserError(f"diffusion.beta_start={beta_start} and beta_end={beta_end} apply to the linear schedule "
                            f"only: remove them, or set diffusion.schedule=linear")
        return Schedule(name, cosine_betas(T))
    raise UserError(f"unknown noise schedule {name!r}: use one of {', '.join(SCHEDULES)}")


def schedule_from_config(d: DiffusionConfig) -> Schedule:
    """The schedule a run's ``diffusion`` config section describes (:func:`make_schedule`)."""
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end)


# -- sampling step grids -----------------------------------------------------------------
def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = KARRAS_RHO) -> Tensor:
    """Karras et al. 2022, eq. 5: sigmas evenly spaced in sigma^(1/rho), descending, (steps,)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def logsnr_spaced(schedule: Schedule, sigma_from: float, sigma_to: float, n: int) -> Tensor:
    """n descending times (n,) float64 from sigma_from to sigma_to, evenly spaced in lambda = log-SNR
    (sigma = exp(-lambda / 2): evenly spaced lambda is evenly spaced log sigma)."""
    log_sigma = torch.linspace(math.log(sigma_from), math.log(sigma_to), n, dtype=torch.float64)
    return schedule.t_from_sigma(log_sigma.exp())


def fast_schedule_times(schedule: Schedule, betas: Tensor) -> Tensor:
    """The times of ``schedule`` (descending, fractional) whose alpha_bar equal those of a short variance
    schedule ``betas`` (S,), least noise first: DiffWave's alignment of a fast inference schedule with the
    training one (Kong et al. 2021, Appendix B). A sampler stepping between them takes exactly the short
    schedule's steps, since alpha_bar_s / alpha_bar_t = 1 - beta. Noise levels beyond the training
    schedule's are clamped to its ends."""
    alpha_bar = torch.cumprod(1 - betas.to(torch.float64), dim=0)  # (S,)
    times = schedule.t_from_sigma(torch.sqrt((1 - alpha_bar) / alpha_bar))  # (S,) increasing
    if len(times) > 1 and not bool((times.diff() > 0).all()):
        raise UserError(f"the fast schedule's {len(betas)} noise levels do not all fall within this model's "
                        f"schedule (its sigma runs {schedule.sigma_min:.3g} to {schedule.sigma_max:.3g}): "
                        "use fewer steps or another grid")
    return times.flip(0)


def step_grid(schedule: Schedule, steps: int, kind: str = "trailing") -> Tensor:
    """Descending times (steps,) float64 at which a sampler evaluates the denoiser.

    Every sampler steps from ``grid[i]`` to ``grid[i+1]`` and from the last entry to
    ``CLEAN_T``. Kinds (names as in diffusers' ``timestep_spacing``, Lin et al. 2023, Table 2):
    ``trailing`` (T (1 - i/steps) - 1, rounded: starts at T-1), ``trailing-fractional`` (the same
    without rounding, so the grids of N and 2N steps nest, as progressive distillation needs;
    equal to ``trailing`` when steps divides T), ``leading`` (k * T//steps), ``linspace``
    (round(linspace(0, T-1, steps+1)) without 0), ``karras`` (Karras et al. 2022, eq. 5,
    fractional t), ``edm`` (the same with sigma_max capped at EDM's 80: a cosine schedule's
    sigma_max of ~2e4 would spend most steps where x_t is pure noise), ``edm-open`` (the ``edm`` grid
    of steps + 1 without its last time, sigma_min, so that every step moves: from the last time the
    sampler jumps to clean data, which few-step distilled students need). Two more that, like
    ``karras``, run from T-1 down to 0 so the last jump to clean data starts from the least
    noise: ``uniform`` (evenly spaced in t) and ``logsnr`` (evenly spaced in lambda = log-SNR,
    Lu et al. 2022, DPM-Solver, section 3.3). ``diffwave``: DiffWave's fast schedule
    (:func:`fast_schedule_times`): for 6 steps its published betas, otherwise that many betas
    spaced geometrically between the same two ends.
    """
    T = schedule.T
    if steps < 1:
        raise UserError(f"number of sampling steps must be positive, got {steps}: pass --steps 1 or more")
    if steps > T:
        raise UserError(f"{steps} sampling steps exceed the model's {T} diffusion steps: pass --steps {T} or fewer")
    if kind == "trailing":
        return (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)[:steps]
    if kind == "trailing-fractional":
        return T - 1 - T * torch.arange(steps, dtype=torch.float64) / steps  # T * i exact: integers stay exact
    if kind == "leading":
        return (torch.arange(steps, dtype=torch.float64) * (T // steps)).round().flip(0)
    if kind == "linspace":
        return torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    if kind == "karras":
        sigmas = karras_sigmas(schedule.sigma_min, schedule.sigma_max, steps)
        return schedule.t_from_sigma(sigmas)
    if kind in ("edm", "edm-open"):
        open_end = kind == "edm-open"
        sigmas = karras_sigmas(schedule.sigma_min, min(schedule.sigma_max, EDM_SIGMA_MAX), steps + open_end)
        return schedule.t_from_sigma(sigmas[:steps])
    if kind == "uniform":
        return torch.linspace(T - 1, 0, steps, dtype=torch.float64)
    if kind == "logsnr":
        return logsnr_spaced(schedule, schedule.sigma_max, schedule.sigma_min, steps)
    if kind == "diffwave":
        betas = (torch.tensor(DIFFWAVE_FAST_BETAS, dtype=torch.float64) if steps == len(DIFFWAVE_FAST_BETAS) else
                 torch.logspace(math.log10(DIFFWAVE_FAST_BETAS[0]), math.log10(DIFFWAVE_FAST_BETAS[-1]), steps,
                                dtype=torch.float64))
        return fast_schedule_times(schedule, betas)
    raise UserError(f"unknown step grid {kind!r}: use one of {', '.join(GRIDS)}")
