"""Mask-Predict decoding (Ghazvininejad et al. 2019, "Mask-Predict: Parallel Decoding of Conditional Masked
Language Models", Sec. 3.2).

Notation: L the number of free (not fixed) positions of a sequence, K the number of iterations, n the number
of tokens re-masked after an iteration, p the probability the model gave each current token (its confidence).
Iteration 1 predicts every position; after iteration k < K the n = floor(L (K - k) / K) least confident tokens
are masked again and re-predicted (the paper's linear decay, Sec. 3.2: with K = 10, 90% after the first, then 80%,
...). Trained by :func:`difflab.discrete.masked.cmlm_loss`; the network contract is the family's
``model(tokens, t, cond) -> logits`` (B, L, V + 1).

Re-masking by confidence alone is greedy: on characters the most confident tokens are spaces and frequent
letters, kept from the first iteration on, and unconditional samples collapse into one repeated character.
``remask_noise`` tau adds MaskGIT's noise to the ranking (Chang et al. 2022, "MaskGIT: Masked Generative Image
Transformer", Sec. 3.2, and its released sampler's "choice temperature"): a token's score is
log p + tau (K - k) / K * g, g ~ Gumbel(0, 1), annealed linearly to 0, so the early iterations re-mask nearly at
random (as the ancestral sampler unmasks) and the last ones by confidence. tau = 0 is the paper's ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.discrete.forward import TokenModel
from difflab.discrete.masked import subs_log_probs
from difflab.discrete.samplers import Fixed, apply_fixed, categorical, check_fixed, resolve_device, tempered
from difflab.errors import UserError


def remask_count(L: int, k: int, K: int) -> int:
    """The number of tokens re-masked after iteration k of K: floor(L (K - k) / K), 0 after the last.

    Args:
        L: free positions of the sequence.
        k: the iteration just done, 1 .. K.
        K: the number of iterations.

    Returns:
        n, between 0 and L - 1 (for K >= 1).
    """
    if not 1 <= k <= K:
        raise UserError(f"Mask-Predict iteration k = {k} is outside 1 .. K = {K}: pass 1 <= k <= K")
    return L * (K - k) // K


def _remask(score: Tensor, n: Tensor) -> Tensor:
    """(B, L) bool: the n (B,) lowest-scoring positions of each row (ties: the first position)."""
    ranks = score.argsort(dim=-1, stable=True).argsort(-1)  # (B, L): 0 = the lowest score
    return ranks < n.unsqueeze(-1)


def remask_scores(confidence: Tensor, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """MaskGIT's ranking score log p + noise * g, g ~ Gumbel(0, 1) (Chang et al. 2022, Sec. 3.2).

    Args:
        confidence: (B, L) probabilities of the current tokens (+inf: never re-masked).
        noise: the Gumbel scale, >= 0 (0: the confidence's own order).
        generator: the random source of g.

    Returns:
        (B, L) float64 scores; the lowest are re-masked.
    """
    score = confidence.log()  # (B, L); +inf stays +inf
    if noise == 0:
        return score
    u = torch.rand(confidence.shape, generator=generator, device=confidence.device, dtype=torch.float64)
    gumbel = -(-u.clamp_min(torch.finfo(torch.float64).tiny).log()).log()  # (B, L) ~ Gumbel(0, 1)
    return score + noise * gumbel


def mask_predict(model: TokenModel, shape: tuple[int, int], iterations: int, mask_id: int, *,
                 cond: dict[str, Any] | None = None, fixed: Fixed | None = None,
                 generator: torch.Generator | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 remask_noise: float = 0.0, t_of: Callable[[Tensor], Tensor] | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Mask-Predict: K rounds of predicting the masked tokens and re-masking the least confident ones.

    Starts fully masked (except ``fixed``). Iteration 1 predicts every masked position and records each
    prediction's probability; iterations k = 2 .. K re-mask the :func:`remask_count` (of the free positions)
    lowest-confidence free tokens and predict only those (their tokens and probabilities are updated, the
    others keep theirs). Fixed positions are never re-masked.

    Args:
        model: ``model(tokens, t, cond) -> logits`` (B, L, V + 1); SUBS zeroes the MASK class.
        shape: (B, L) of the samples.
        iterations: K >= 1.
        mask_id: the MASK token (= V).
        cond: passed to the model unchanged.
        fixed: given positions and tokens, returned exactly.
        generator: the random source (used when ``temperature`` > 0).
        temperature: 0 takes the argmax (the paper's, for translation: unconditionally every sample is the same
            text); > 0 draws from the :func:`~difflab.discrete.samplers.tempered` p (with ``top_p``), and the
            confidence is the drawn token's untempered probability.
        top_p: the nucleus of the draws (with ``temperature`` > 0).
        remask_noise: tau of MaskGIT's Gumbel noise on the ranking, annealed as tau (K - k) / K after iteration k
            (0: rank by confidence alone, the paper's).
        t_of: maps the fraction of the sequence masked (B,) to the network's time t (B,); the identity when
            None (a network trained by :func:`~difflab.discrete.masked.cmlm_loss`, or one that ignores t).
        device: where the samples live.

    Returns:
        (B, L) int64 tokens in 0 .. V-1.
    """
    if iterations < 1:
        raise UserError(f"Mask-Predict needs iterations >= 1, got {iterations}: pass a positive number")
    if temperature < 0:
        raise UserError(f"Mask-Predict temperature = {temperature} is negative: use 0 (argmax) or a positive value")
    if remask_noise < 0:
        raise UserError(f"Mask-Predict remask noise = {remask_noise} is negative: use 0 (rank by confidence) or more")
    B, L = shape
    device = resolve_device(device, generator)
    fixed = check_fixed(fixed, shape, mask_id, device)
    free = torch.ones(shape, dtype=torch.bool, device=device) if fixed is None else ~fixed[0]  # (B, L)
    n_free = free.sum(-1).tolist()  # the paper's L, per sequence
    x = apply_fixed(torch.full(shape, mask_id, dtype=torch.long, device=device), fixed)  # (B, L)
    # fixed tokens are certain and never re-masked: confidence +inf ranks them last
    confidence = torch.where(free, 0.0, float("inf")).to(torch.float64)  # (B, L)
    for k in range(1, iterations + 1):
        if k > 1:
            n = torch.tensor([remask_count(m, k - 1, iterations) for m in n_free], device=device)  # (B,)
            score = remask_scores(confidence, remask_noise * (iterations - k + 1) / iterations, generator)
            x = torch.where(_remask(score, n), mask_id, x)
        masked = x == mask_id  # (B, L)
        fraction = masked.sum(-1).to(torch.get_default_dtype()) / L  # (B,)
        t = fraction if t_of is None else t_of(fraction)
        log_p = subs_log_probs(model(x, t, cond), x, mask_id)  # (B, L, V+1)
        if temperature > 0:
            tokens = categorical(tempered(log_p, temperature, top_p), generator)  # (B, L)
        else:
            tokens = log_p.argmax(-1)  # (B, L)
        p = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp().to(torch.float64)  # (B, L)
        x = torch.where(masked, tokens, x)
        confidence = torch.where(masked, p, confidence)
    return x
