"""Masked (absorbing-state) diffusion: MDLM's SUBS parameterisation and continuous-time ELBO, and Mask-Predict's
conditional masked LM objective.

Notation (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models" (MDLM)):

==============  =============================================================================================
symbol          meaning
==============  =============================================================================================
``x0``          clean tokens (B, L) in 0 .. V-1
``x_t``         noised tokens (B, L): each x0 token kept with probability alpha(t), else MASK
``mask_id``     MASK = V; the network outputs V + 1 logits
``log_p``       log p_theta(x0 | x_t), (B, L, V + 1), after SUBS (Sec. 3.2.3)
``weight``      -alpha'(t) / (1 - alpha(t)) (eq. 10), ``TokenSchedule.weight``
==============  =============================================================================================

The network contract: ``model(tokens, t, cond) -> logits`` (B, L, V + 1), t (B,) in [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.discrete.forward import TokenModel, mask_forward, rand, randint
from difflab.discrete.schedules import TokenSchedule, draw_times
from difflab.errors import UserError


def check_masked_logits(logits: Tensor, mask_id: int) -> None:
    """Raise a :class:`~difflab.errors.UserError` unless ``logits`` has V + 1 = ``mask_id`` + 1 classes."""
    if logits.shape[-1] != mask_id + 1:
        raise UserError(f"masked-diffusion logits have {logits.shape[-1]} classes, expected V + 1 = {mask_id + 1} "
                        f"(MASK = V = {mask_id}): give the network V + 1 outputs")


def subs_log_probs(logits: Tensor, x_t: Tensor, mask_id: int) -> Tensor:
    """log p_theta(x0 | x_t) in the SUBS parameterisation (MDLM Sec. 3.2.3, its ``_subs_parameterization``).

    "Zero masking probabilities": the MASK logit is set to -inf before the log-softmax, so x0 is never MASK.
    "Carry-over unmasking": where x_t is not MASK the distribution is the one-hot of x_t (log-prob 0 at x_t,
    -inf elsewhere), whatever the network said. Finite logits give no NaN; -inf logits are allowed as long as
    some data token stays finite at each masked position.

    Args:
        logits: (B, L, V + 1) network outputs.
        x_t: (B, L) noised tokens.
        mask_id: the MASK token (= V).

    Returns:
        (B, L, V + 1) log-probabilities, in at least float32.
    """
    check_masked_logits(logits, mask_id)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    is_mask_class = torch.arange(logits.shape[-1], device=logits.device) == mask_id  # (V+1,)
    log_p = torch.where(is_mask_class, neg_inf, logits).log_softmax(-1)  # (B, L, V+1)
    carried = torch.where(F.one_hot(x_t, logits.shape[-1]).bool(), 0.0, neg_inf)  # (B, L, V+1)
    unmasked = (x_t != mask_id).unsqueeze(-1)  # (B, L, 1)
    return torch.where(unmasked, carried, log_p)


def token_nll(log_p: Tensor, x0: Tensor) -> Tensor:
    """-log p(x0_i) at every position: (B, L, V') log-probabilities and (B, L) tokens -> (B, L)."""
    return -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def masked_nelbo(model: TokenModel, x0: Tensor, schedule: TokenSchedule, mask_id: int, *,
                 cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                 t: Tensor | None = None) -> Tensor:
    """A one-sample estimate of the continuous-time negative ELBO of masked diffusion (MDLM eqs. 10-11).

    NELBO(x0) = int_0^1 weight(t) E_{x_t ~ q(x_t | x0)} [ sum_{i: x_t^i = MASK} -log p_theta(x0^i | x_t) ] dt,
    estimated at one t ~ U[t_min, 1] per sequence (:func:`draw_times`) and one x_t. With the true denoiser it
    equals -log p(x0) (the any-order autoregressive identity; ``tests/test_discrete.py`` checks it). What is
    neglected: the prior term KL(q(x_1 | x0) || all-MASK), which is zero only when alpha(1) = eps = 0
    (MDLM neglects it for eps = 1e-3); and the sliver of the integral over t in [0, t_min], O(t_min) nats.
    There is no reconstruction term: alpha(0) = 1 exactly, and SUBS carries the unmasked tokens through.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V + 1).
        x0: (B, L) clean tokens in 0 .. V-1.
        schedule: the clean-token probability alpha(t).
        mask_id: the MASK token (= V).
        cond: passed to the model unchanged.
        generator: the random source of t and x_t.
        t: (B,) times to use instead of drawing them.

    Returns:
        (B,) nats per sequence; the batch mean is the training loss.
    """
    if t is None:
        t = draw_times(x0.shape[0], generator, device=x0.device)
    x_t = mask_forward(x0, schedule.alpha(t), mask_id, generator)  # (B, L)
    log_p = subs_log_probs(model(x_t, t, cond), x_t, mask_id)  # (B, L, V+1)
    masked = x_t == mask_id  # (B, L)
    nll = torch.where(masked, token_nll(log_p, x0), 0.0).sum(-1)  # (B,)
    return schedule.weight(t).to(nll.dtype) * nll


def random_subsets(n: Tensor, L: int, generator: torch.Generator | None) -> Tensor:
    """(B, L) bool: per row, ``n[b]`` positions of 0 .. L-1 chosen uniformly without replacement."""
    scores = rand((len(n), L), generator, n.device)  # (B, L)
    return scores.argsort(-1).argsort(-1) < n.unsqueeze(-1)


def count_proposal(L: int, gamma: float, device: torch.device | str | None = None) -> Tensor:
    """(L,) float64 q(k) proportional to k^-gamma for k = 1 .. L: the importance proposal of the count (0: uniform).

    Under a per-token gradient noise that does not depend on k, the estimator's variance is proportional to
    sum_k 1 / (k q(k)) and is least at gamma = 1/2 (about 0.6 of the uniform's at L = 256)."""
    k = torch.arange(1, L + 1, dtype=torch.float64, device=device)  # (L,)
    q = k ** -gamma
    return q / q.sum()


def draw_counts(B: int, L: int, generator: torch.Generator | None = None, *, antithetic: bool = True,
                gamma: float = 0.0, device: torch.device | str | None = None) -> Tensor:
    """(B,) numbers of masked tokens k ~ q = :func:`count_proposal` (gamma 0: U{1 .. L}); with ``antithetic``,
    low-discrepancy over the batch (:func:`~difflab.discrete.schedules.draw_times` mapped through q's inverse CDF;
    for the uniform k = 1 + floor(L t)), so a batch covers 1 .. L evenly in q."""
    t = draw_times(B, generator, t_min=0.0, device=device, dtype=torch.float64) if antithetic else \
        rand((B,), generator, device, torch.float64)
    if gamma == 0:
        return (1 + (t * L).floor().long()).clamp(max=L)
    cdf = count_proposal(L, gamma, t.device).cumsum(0)  # (L,)
    return (1 + torch.searchsorted(cdf, t, right=True)).clamp(max=L)


def count_weight(k: Tensor, L: int, gamma: float, dtype: torch.dtype) -> Tensor:
    """The any-order bound's weight of a term with k (B,) of L tokens masked, drawn from q = :func:`count_proposal`:
    L / k for the uniform (gamma 0), else (L / k) * ((1 / L) / q(k)) = 1 / (k q(k)) (importance sampling)."""
    if gamma == 0:
        return L / k.to(dtype)
    return (1 / (k * count_proposal(L, gamma, k.device)[k - 1])).to(dtype)


def masked_count_nelbo(model: TokenModel, x0: Tensor, mask_id: int, *, cond: dict[str, Any] | None = None,
                       generator: torch.Generator | None = None, antithetic: bool = True,
                       gamma: float = 0.0) -> Tensor:
    """The same bound as :func:`masked_nelbo` in its any-order autoregressive form, with lower variance.

    Given the number k of masked tokens, MDLM's Bernoulli masks are a uniform k-subset, and k ~ Binomial(L, t);
    integrating its weight 1/t (log-linear, eps = 0) over t gives int_0^1 Binom(k; L, t) / t dt = 1 / k. So

        NELBO(x0) = L * E_{k ~ U{1..L}} E_{|M| = k} [ (1 / k) sum_{i in M} -log p_theta(x0^i | x_M) ],

    the any-order autoregressive bound (Ou et al. 2024, "Your Absorbing Discrete Diffusion Secretly Models the
    Conditional Distributions of Clean Data" (RADD), Sec. 4; Uria et al. 2014). This estimator draws k exactly
    (low-discrepancy over the batch with ``antithetic``) instead of t and a Binomial count, which removes the
    count's noise and the 1/t weight's heavy tail. The network is called with t = k / L (ignored without time
    conditioning; with it, k is a function of x_t, so the bound still holds). With ``gamma`` > 0, k is drawn from
    q(k) proportional to k^-gamma (:func:`count_proposal`) and its term reweighted by (1 / L) / q(k): importance
    sampling, the same expectation, more draws of the few-mask terms whose one or two tokens are the noisiest.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V + 1).
        x0: (B, L) clean tokens in 0 .. V-1.
        mask_id: the MASK token (= V).
        cond: passed to the model unchanged.
        generator: the random source of k and the masks.
        antithetic: low-discrepancy k over the batch.
        gamma: the exponent of the proposal of k (0: uniform, the plain estimator).

    Returns:
        (B,) nats per sequence.
    """
    B, L = x0.shape
    k = draw_counts(B, L, generator, antithetic=antithetic, gamma=gamma, device=x0.device)  # (B,)
    masked = random_subsets(k, L, generator)  # (B, L)
    x_t = torch.where(masked, mask_id, x0)  # (B, L)
    log_p = subs_log_probs(model(x_t, k.to(torch.get_default_dtype()) / L, cond), x_t, mask_id)  # (B, L, V+1)
    nll = torch.where(masked, token_nll(log_p, x0), 0.0).sum(-1)  # (B,)
    return nll * count_weight(k, L, gamma, nll.dtype)


def cmlm_loss(model: TokenModel, x0: Tensor, mask_id: int, *, cond: dict[str, Any] | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """The conditional masked LM objective of Mask-Predict (Ghazvininejad et al. 2019, Sec. 3).

    Per sequence, the number of masked tokens n ~ U{1 .. L}, n positions chosen uniformly are masked, and the
    loss is the mean cross-entropy of the masked tokens. Times L, this is the any-order form of the masked ELBO
    (:func:`masked_count_nelbo`, with independent rather than low-discrepancy counts): the weight 1 / n is the
    ELBO's, so Mask-Predict's network is trained on the masked-diffusion bound. The model is called with t = n / L,
    the fraction masked.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V + 1) (SUBS: the MASK class is never predicted).
        x0: (B, L) clean tokens.
        mask_id: the MASK token (= V).
        cond: passed to the model unchanged.
        generator: the random source.

    Returns:
        (B,) mean nats per masked token.
    """
    B, L = x0.shape
    n = 1 + randint(L, (B,), generator, x0.device)  # (B,) in 1 .. L
    masked = random_subsets(n, L, generator)  # (B, L): n random positions per row
    x_t = torch.where(masked, mask_id, x0)  # (B, L)
    t = n.to(torch.get_default_dtype()) / L  # (B,)
    log_p = subs_log_probs(model(x_t, t, cond), x_t, mask_id)  # (B, L, V+1)
    nll = torch.where(masked, token_nll(log_p, x0), 0.0).sum(-1)  # (B,)
    return nll / n
