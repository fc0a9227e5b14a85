"""Uniform-transition discrete diffusion in discrete time (D3PM, Austin et al. 2021, Sec. 3).

Notation:

================  ===========================================================================================
symbol            meaning
================  ===========================================================================================
``T``             the number of diffusion steps; step k = 1 .. T sits at time t = k / T
``alpha_bar``     alpha_bar_k = ``schedule.alpha(k / T)``, the clean probability after k steps; alpha_bar_0 = 1
``a_k``           alpha_bar_k / alpha_bar_{k-1}, one step's keep probability
``Q_k``           a_k I + (1 - a_k) / V 1 1^T, one step's transition matrix (rows: from, columns: to)
``x0_probs``      (B, L, V) a distribution over x0 per token: the network's softmax p_theta(x0 | x_k), or a
                  one-hot of the true x0
================  ===========================================================================================

The network contract: ``model(x_k, t = k / T, cond) -> logits`` (B, L, V); no mask token. The reverse step is
D3PM's x0-parameterisation (eq. 4): p_theta(x_{k-1} | x_k) = sum_{x0} q(x_{k-1} | x_k, x0) p_theta(x0 | x_k),
per token. Probabilities are computed in float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.discrete.forward import TokenModel, randint, uniform_forward, uniform_marginal
from difflab.discrete.schedules import TokenSchedule
from difflab.errors import UserError

F64 = torch.float64


def uniform_alpha_bar(k: Tensor | int, schedule: TokenSchedule, T: int) -> Tensor:
    """alpha_bar_k = schedule.alpha(k / T) in float64, with alpha_bar_0 = 1 exactly.

    Args:
        k: step indices in 0 .. T (any shape), or one int.
        schedule: the clean-token probability alpha(t).
        T: the number of steps.

    Returns:
        alpha_bar_k, shaped like ``k``.
    """
    k = torch.as_tensor(k, dtype=F64)
    return torch.where(k == 0, 1.0, schedule.alpha(k / T))


def uniform_jump_posterior(x_t: Tensor, x0_probs: Tensor, alpha_bar_t: Tensor, alpha_bar_s: Tensor,
                           V: int) -> Tensor:
    """p(x_s | x_t) = sum_{x0} q(x_s | x_t, x0) p(x0) for a jump from step t back to step s < t, in O(V) a token.

    Bayes (D3PM eq. 3): q(x_s = j | x_t, x0) = q(x_t | j) q(j | x0) / q(x_t | x0). With r(x0) = p(x0) / q(x_t | x0),
    sum_{x0} r(x0) q(j | x0) = alpha_bar_s r_j + (1 - alpha_bar_s) / V sum r, and q(x_t | j) = a 1{x_t = j} +
    (1 - a) / V with the jump's keep probability a = alpha_bar_t / alpha_bar_s. The rows sum to 1 when those
    of ``x0_probs`` do. With alpha_bar_s = 1 (a jump to clean data) the result is ``x0_probs`` itself.

    Args:
        x_t: (B, L) tokens at step t.
        x0_probs: (B, L, V) distributions over x0 (one-hot: the true posterior q(x_s | x_t, x0)).
        alpha_bar_t: (B,) or one value, the clean probability at t (< 1).
        alpha_bar_s: (B,) or one value, the clean probability at s (>= alpha_bar_t).
        V: vocabulary size.

    Returns:
        (B, L, V) float64 probabilities of x_s.
    """
    alpha_bar_t, alpha_bar_s = torch.as_tensor(alpha_bar_t, dtype=F64), torch.as_tensor(alpha_bar_s, dtype=F64)
    x0_probs = x0_probs.to(F64)
    # q(x_t | .) as a function of its source: Q is symmetric, so it is the marginal "from" x_t
    r = x0_probs / uniform_marginal(x_t, alpha_bar_t.to(x0_probs.device), V)  # (B, L, V)
    a_s = alpha_bar_s.to(x0_probs.device).reshape(-1, 1, 1)  # (B, 1, 1)
    from_x0 = a_s * r + (1 - a_s) / V * r.sum(-1, keepdim=True)  # (B, L, V)
    return uniform_marginal(x_t, (alpha_bar_t / alpha_bar_s).to(x0_probs.device), V) * from_x0


def uniform_posterior(x_t: Tensor, x0_probs: Tensor, k: Tensor | int, schedule: TokenSchedule, T: int,
                      V: int) -> Tensor:
    """p(x_{k-1} | x_k) = sum_{x0} q(x_{k-1} | x_k, x0) p(x0 | x_k), one D3PM step back (eqs. 3-4).

    Args:
        x_t: (B, L) tokens x_k.
        x0_probs: (B, L, V) distributions over x0 (one-hot: the true posterior).
        k: (B,) or one step index in 1 .. T.
        schedule: the clean-token probability alpha(t).
        T: the number of steps.
        V: vocabulary size.

    Returns:
        (B, L, V) float64 probabilities of x_{k-1}.
    """
    k = torch.as_tensor(k)
    alpha_bar_k, alpha_bar_prev = uniform_alpha_bar(k, schedule, T), uniform_alpha_bar(k - 1, schedule, T)
    return uniform_jump_posterior(x_t, x0_probs, alpha_bar_k, alpha_bar_prev, V)


def check_uniform_logits(logits: Tensor, V: int) -> None:
    """Raise a :class:`~difflab.errors.UserError` unless ``logits`` has V classes (the uniform process has no MASK)."""
    if logits.shape[-1] != V:
        raise UserError(f"uniform-diffusion logits have {logits.shape[-1]} classes, expected V = {V}: "
                        f"give the network V outputs (no mask token)")


def uniform_prior_kl(x0: Tensor, schedule: TokenSchedule, V: int) -> Tensor:
    """L_T = KL(q(x_T | x0) || uniform), summed over tokens, in closed form (D3PM eq. 1, first term).

    Args:
        x0: (B, L) clean tokens.
        schedule: alpha_bar_T = schedule.alpha(1).
        V: vocabulary size.

    Returns:
        (B,) float64 nats.
    """
    alpha_bar_T = schedule.alpha(torch.ones(x0.shape[0], dtype=F64, device=x0.device))  # (B,)
    q_T = uniform_marginal(x0, alpha_bar_T, V)  # (B, L, V)
    return torch.xlogy(q_T, q_T * V).sum((-2, -1))


def uniform_step_kl(model: TokenModel, x0: Tensor, x_k: Tensor, k: Tensor, schedule: TokenSchedule, T: int,
                    V: int, *, cond: dict[str, Any] | None = None) -> Tensor:
    """KL(q(x_{k-1} | x_k, x0) || p_theta(x_{k-1} | x_k)) summed over tokens: D3PM's L_{k-1} (eq. 1).

    At k = 1 the true posterior is the one-hot of x0 and p_theta(x_0 | x_1) the network's softmax, so the term
    is L_0 = -log p_theta(x0 | x_1): one formula covers every k.

    Args:
        model: ``model(x_k, t = k / T, cond) -> logits`` (B, L, V).
        x0: (B, L) clean tokens.
        x_k: (B, L) noised tokens at step k.
        k: (B,) step indices in 1 .. T.
        schedule: the clean-token probability alpha(t).
        T: the number of steps.
        V: vocabulary size.
        cond: passed to the model unchanged.

    Returns:
        (B,) float64 nats.
    """
    logits = model(x_k, k.to(torch.get_default_dtype()) / T, cond)  # (B, L, V)
    check_uniform_logits(logits, V)
    p_theta = uniform_posterior(x_k, logits.to(F64).softmax(-1), k, schedule, T, V)  # (B, L, V)
    q = uniform_posterior(x_k, F.one_hot(x0, V).to(F64), k, schedule, T, V)  # (B, L, V)
    return (torch.xlogy(q, q) - torch.xlogy(q, p_theta)).sum((-2, -1))


def uniform_nelbo(model: TokenModel, x0: Tensor, schedule: TokenSchedule, T: int, V: int, *,
                  cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                  k: Tensor | None = None) -> Tensor:
    """An unbiased one-sample estimate of D3PM's negative ELBO with uniform transitions (Austin et al. 2021, eq. 1).

    NELBO(x0) = L_T + sum_{k=2}^{T} E_{x_k} KL(q(x_{k-1} | x_k, x0) || p_theta(x_{k-1} | x_k)) + E_{x_1} L_1,
    with L_T = KL(q(x_T | x0) || uniform) exact and L_1 = -log p_theta(x0 | x_1). The sum of T terms is estimated
    by one step k ~ U{1 .. T} per sequence and one x_k ~ q(x_k | x0), weighted by T; p_theta(x0 | x_k) is the
    softmax of ``model(x_k, k / T, cond)``.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V).
        x0: (B, L) clean tokens in 0 .. V-1.
        schedule: alpha_bar_k = schedule.alpha(k / T).
        T: the number of steps.
        V: vocabulary size.
        cond: passed to the model unchanged.
        generator: the random source of k and x_k.
        k: (B,) step indices in 1 .. T to use instead of drawing them.

    Returns:
        (B,) float64 nats per sequence.
    """
    if T < 1:
        raise UserError(f"uniform diffusion needs T >= 1 steps, got {T}: set the number of steps to a positive integer")
    if k is None:
        k = 1 + randint(T, (x0.shape[0],), generator, x0.device)  # (B,) in 1 .. T
    x_k = uniform_forward(x0, uniform_alpha_bar(k, schedule, T), V, generator)  # (B, L)
    return uniform_prior_kl(x0, schedule, V) + T * uniform_step_kl(model, x0, x_k, k, schedule, T, V, cond=cond)
