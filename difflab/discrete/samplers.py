"""Ancestral samplers of discrete diffusion: MDLM's unmasking sampler and D3PM's uniform-transition sampler.

Notation as in :mod:`difflab.discrete.masked` and :mod:`difflab.discrete.uniform`: x_t (B, L) tokens, MASK = V,
alpha(t) the clean-token probability, alpha_bar_k = alpha(k / T). Both samplers call the network through the
family's contract ``model(tokens, t, cond) -> logits`` and return (B, L) tokens in 0 .. V-1.

``fixed`` (both samplers, and Mask-Predict): an optional pair (mask (B, L) bool, tokens (B, L)) of given
positions (infilling: a prefix, a suffix, any pattern), returned exactly as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.discrete.forward import TokenModel, rand, randint
from difflab.discrete.masked import subs_log_probs
from difflab.discrete.schedules import TokenSchedule
from difflab.discrete.uniform import check_uniform_logits, uniform_alpha_bar, uniform_jump_posterior
from difflab.errors import UserError
from difflab.samplers.common import steps_bar

F64 = torch.float64
Fixed = tuple[Tensor, Tensor]  # (mask (B, L) bool, tokens (B, L)): the given positions and their tokens


@dataclass
class SampleStats:
    """What a sampler reports beside its samples; pass one in and read it after the call."""

    model_calls: int = 0  # network evaluations (the NFE)


def categorical(log_p: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = F64) -> Tensor:
    """Draws from Cat(softmax(log_p)) over the last axis, by the Gumbel-max trick in ``dtype``.

    In float64 on purpose: MDLM's sampler drew its Gumbel noise in float32, which truncates the noise's tail,
    acts as a lowered temperature and lowered the diversity of its samples (Zheng et al. 2024, "Masked
    Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling").

    Args:
        log_p: (..., V') unnormalised log-probabilities; -inf entries are never drawn.
        generator: the random source.
        dtype: the precision of the draw.

    Returns:
        (...,) int64 indices.
    """
    log_p = log_p.to(dtype)
    u = rand(log_p.shape, generator, log_p.device, dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))
    return (log_p + gumbel).argmax(-1)


def check_draw(temperature: float, top_p: float) -> None:
    """One line unless ``temperature`` > 0 and ``top_p`` in (0, 1] (the arguments of :func:`tempered`)."""
    if not temperature > 0:
        raise UserError(f"sampling temperature = {temperature} must be > 0: use 1 for the model's distribution")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p = {top_p} must be in (0, 1]: use 1 for no nucleus cut")


def tempered(log_p: Tensor, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """log_p (..., V') reshaped for drawing: divided by ``temperature``, then cut to its nucleus (Holtzman et
    al. 2020, "The Curious Case of Neural Text Degeneration", Sec. 3.1): the fewest most likely tokens whose
    probability reaches ``top_p`` keep their log-probabilities, the rest get -inf. 1 and 1 return ``log_p``.

    Both trade diversity for likelihood under a judge: report the samples' entropy beside their score.
    """
    check_draw(temperature, top_p)
    if temperature != 1:
        log_p = log_p / temperature
    if top_p < 1:
        p_sorted, order = log_p.to(F64).softmax(-1).sort(-1, descending=True)  # (..., V')
        before = p_sorted.cumsum(-1) - p_sorted  # (..., V'): probability of the more likely tokens
        cut = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)  # (..., V') unsorted
        log_p = log_p.masked_fill(cut, float("-inf"))
    return log_p


def resolve_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    """``device``, else the generator's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def check_fixed(fixed: Fixed | None, shape: tuple[int, int], V: int, device: torch.device) -> Fixed | None:
    """``fixed`` on ``device``, after checking its shapes and that its given tokens lie in 0 .. V-1."""
    if fixed is None:
        return None
    mask, tokens = fixed
    if tuple(mask.shape) != tuple(shape) or tuple(tokens.shape) != tuple(shape):
        raise UserError(f"fixed tokens of shapes {tuple(mask.shape)} and {tuple(tokens.shape)} do not match the "
                        f"samples' {tuple(shape)}: give a (B, L) bool mask and (B, L) tokens")
    mask, tokens = mask.to(device=device, dtype=torch.bool), tokens.to(device=device, dtype=torch.long)
    given = tokens[mask]
    if given.numel() and (given.min() < 0 or given.max() >= V):
        raise UserError(f"fixed tokens must be data tokens in 0 .. {V - 1}, got {given.min()} .. {given.max()}: "
                        f"give tokens of the data vocabulary (no mask token)")
    return mask, tokens


def apply_fixed(x: Tensor, fixed: Fixed | None) -> Tensor:
    """``x`` with the given positions of ``fixed`` set to their tokens."""
    return x if fixed is None else torch.where(fixed[0], fixed[1], x)


def _time_batch(t: float, B: int, device: torch.device) -> Tensor:
    """(B,) copies of one time, in the default float dtype (what networks take)."""
    return torch.full((B,), t, device=device, dtype=torch.get_default_dtype())


def sample_masked(model: TokenModel, shape: tuple[int, int], schedule: TokenSchedule, steps: int, mask_id: int, *,
                  cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                  fixed: Fixed | None = None, dtype: torch.dtype = F64, cache: bool = True,
                  time_conditioned: bool = True, stats: SampleStats | None = None,
                  device: torch.device | str | None = None, progress: bool = False, temperature: float = 1.0,
                  top_p: float = 1.0) -> Tensor:
    """MDLM's ancestral unmasking sampler (Sahoo et al. 2024, Sec. 3.3; its ``_ddpm_caching_update``).

    Times t_j = 1 - j / steps from 1 to 0, starting fully masked. From t to s < t each still-masked position is
    unmasked with probability (alpha(s) - alpha(t)) / (1 - alpha(t)) (the posterior q(x_s | x_t, x0) with SUBS)
    to a token drawn from p_theta(x0 | x_t) (never MASK); at the last step every remaining mask is unmasked.
    Unmasked tokens never change, and the sampler stops once no mask is left. Each position is drawn on its own
    (the reverse step factorises over tokens).

    Caching: when no token changed during a step, x_t is the same and, for a network that ignores t, so are
    its logits: the previous ones are reused instead of calling the network. Allowed only with
    ``time_conditioned=False``; for a time-conditioned network the cache is never used. With steps > L most
    steps change nothing: for one sequence caching needs at most L + 1 calls, whatever the number of steps.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V + 1).
        shape: (B, L) of the samples.
        schedule: the clean-token probability alpha(t).
        steps: the number of steps (>= 1).
        mask_id: the MASK token (= V).
        cond: passed to the model unchanged.
        generator: the random source; draws are made on its device (the samples' unless ``device`` is given).
        fixed: given positions and tokens (infilling), never changed.
        dtype: the precision of the categorical draws.
        cache: reuse logits across steps that changed nothing (only with ``time_conditioned=False``).
        time_conditioned: whether the network uses t.
        stats: filled with the number of network calls.
        device: where the samples live.
        progress: show a progress bar.
        temperature, top_p: each token is drawn from :func:`tempered` p_theta (1, 1: the model's).

    Returns:
        (B, L) int64 tokens in 0 .. V-1.
    """
    check_draw(temperature, top_p)
    if steps < 1:
        raise UserError(f"masked sampling needs steps >= 1, got {steps}: pass a positive number of steps")
    device = resolve_device(device, generator)
    fixed = check_fixed(fixed, shape, mask_id, device)
    x = apply_fixed(torch.full(shape, mask_id, dtype=torch.long, device=device), fixed)  # (B, L)
    alpha = schedule.alpha(1 - torch.arange(steps + 1, dtype=F64) / steps)  # (steps + 1,) at t_0 = 1 .. t_steps = 0
    log_p = None
    for j in steps_bar(steps, "masked", progress):
        if not (x == mask_id).any():
            break  # every token is unmasked: later steps would change nothing
        if log_p is None:
            log_p = subs_log_probs(model(x, _time_batch(1 - j / steps, shape[0], device), cond), x, mask_id)
            if stats is not None:
                stats.model_calls += 1
        move = 1.0 if j == steps - 1 else float((alpha[j + 1] - alpha[j]) / (1 - alpha[j]))
        u = rand(shape, generator, device, dtype)  # (B, L)
        unmask = (x == mask_id) & (u < move)  # (B, L)
        x_next = x.clone()
        x_next[unmask] = categorical(tempered(log_p[unmask], temperature, top_p), generator, dtype)  # (N,)
        if not cache or time_conditioned or not torch.equal(x_next, x):
            log_p = None
        x = x_next
    return x


def uniform_grid(T: int, steps: int) -> list[int]:
    """``steps`` + 1 step indices from T down to 0, evenly spaced and rounded (half up), all distinct."""
    if not 1 <= steps <= T:
        raise UserError(f"uniform sampling needs 1 <= steps <= T = {T}, got {steps}: pass steps in that range")
    return [(2 * T * (steps - i) + steps) // (2 * steps) for i in range(steps + 1)]


def sample_uniform(model: TokenModel, shape: tuple[int, int], schedule: TokenSchedule, T: int, steps: int, V: int,
                   *, cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                   fixed: Fixed | None = None, dtype: torch.dtype = F64, stats: SampleStats | None = None,
                   device: torch.device | str | None = None, progress: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0) -> Tensor:
    """Ancestral sampling of uniform-transition D3PM (Austin et al. 2021, Sec. 3), on a grid of ``steps`` jumps.

    Starts from uniform tokens at step T and jumps k -> j < k along :func:`uniform_grid`, drawing x_j from
    p_theta(x_j | x_k) = sum_{x0} q(x_j | x_k, x0) p_theta(x0 | x_k) (:func:`uniform_jump_posterior`, the jump's
    keep probability alpha_bar_k / alpha_bar_j), per token. The last jump goes to step 0, where alpha_bar = 1:
    that posterior is p_theta(x0 | x_k) itself, so the samples end as a draw from the denoiser (not its
    argmax). ``fixed`` positions are reset after every jump (replacement: the network sees them clean, an
    approximation of conditioning, exact only for the returned tokens).

    Args:
        model: ``model(tokens, t = k / T, cond) -> logits`` (B, L, V).
        shape: (B, L) of the samples.
        schedule: alpha_bar_k = schedule.alpha(k / T).
        T: the number of training steps.
        steps: the number of jumps, 1 .. T (T: D3PM's full chain).
        V: vocabulary size.
        cond: passed to the model unchanged.
        generator: the random source; draws are made on its device (the samples' unless ``device`` is given).
        fixed: given positions and tokens (infilling), returned exactly.
        dtype: the precision of the categorical draws.
        stats: filled with the number of network calls.
        device: where the samples live.
        progress: show a progress bar.
        temperature, top_p: p_theta(x0 | x_k) is :func:`tempered` before each jump (1, 1: the model's).

    Returns:
        (B, L) int64 tokens in 0 .. V-1.
    """
    check_draw(temperature, top_p)
    grid = uniform_grid(T, steps)
    device = resolve_device(device, generator)
    fixed = check_fixed(fixed, shape, V, device)
    x = apply_fixed(randint(V, shape, generator, device), fixed)  # (B, L)
    for i in steps_bar(steps, "uniform", progress):
        k, j = grid[i], grid[i + 1]
        logits = model(x, _time_batch(k / T, shape[0], device), cond)  # (B, L, V)
        check_uniform_logits(logits, V)
        if stats is not None:
            stats.model_calls += 1
        p0 = tempered(logits.to(F64).log_softmax(-1), temperature, top_p).softmax(-1)  # (B, L, V)
        posterior = uniform_jump_posterior(x, p0, uniform_alpha_bar(k, schedule, T),
                                           uniform_alpha_bar(j, schedule, T), V)  # (B, L, V)
        x = apply_fixed(categorical(posterior.log(), generator, dtype), fixed)
    return x
