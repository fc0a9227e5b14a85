"""The forward (noising) processes on tokens, and their closed-form marginals q(x_t | x_0).

Notation (MDLM, Sahoo et al. 2024, Sec. 3; D3PM, Austin et al. 2021, uniform transitions):

============  ===============================================================================================
symbol        meaning
============  ===============================================================================================
``x0``        clean tokens (B, L) in 0 .. V-1
``x_t``       noised tokens (B, L)
``alpha``     (B,) the probability that a token is kept (``TokenSchedule.alpha(t)``, or D3PM's alpha_bar_k)
``V``         the data vocabulary size
``mask_id``   MASK = V, the absorbing state of the masking process (the network then has V + 1 outputs)
============  ===============================================================================================

Masking (absorbing state): q(x_t | x0) = Cat(alpha onehot(x0) + (1 - alpha) onehot(MASK)).
Uniform: q(x_t | x0) = Cat(alpha onehot(x0) + (1 - alpha) / V 1): a replaced token is drawn from all V tokens,
so it may redraw itself.

The network contract of the family, :data:`TokenModel`: ``model(tokens, t, cond) -> logits`` with tokens
(B, L) int64, t (B,) float in [0, 1], cond a dict passed through unchanged (or None), logits (B, L, V_out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.schedules import append_dims

TokenModel = Callable[[Tensor, Tensor, dict[str, Any] | None], Tensor]  # model(tokens, t, cond) -> logits


def rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str | None,
         dtype: torch.dtype = torch.float64) -> Tensor:
    """U[0, 1) drawn on the generator's device, then moved to ``device`` (as :func:`difflab.samplers.common.randn`):
    one seed gives the same draws on every device."""
    draw_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=draw_device, dtype=dtype)
    return u if device is None else u.to(device)


def randint(high: int, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
            device: torch.device | str | None) -> Tensor:
    """int64 uniform on 0 .. high-1, drawn on the generator's device, then moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    k = torch.randint(0, high, tuple(shape), generator=generator, device=draw_device)
    return k if device is None else k.to(device)


def _keep(x0: Tensor, alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, L) bool: each token kept with probability alpha (B,), independently."""
    u = rand(x0.shape, generator, x0.device)  # (B, L)
    return u < append_dims(alpha.to(x0.device), u)


def mask_forward(x0: Tensor, alpha: Tensor, mask_id: int, generator: torch.Generator | None = None) -> Tensor:
    """A draw of x_t ~ q(x_t | x0) of the masking process (MDLM Sec. 3, its ``q_xt``).

    Args:
        x0: (B, L) clean tokens.
        alpha: (B,) the probability that each token is kept.
        mask_id: the MASK token (= V).
        generator: the random source.

    Returns:
        (B, L) tokens: x0 where kept, ``mask_id`` elsewhere.
    """
    return torch.where(_keep(x0, alpha, generator), x0, torch.full_like(x0, mask_id))


def uniform_forward(x0: Tensor, alpha: Tensor, V: int, generator: torch.Generator | None = None) -> Tensor:
    """A draw of x_t ~ q(x_t | x0) of the uniform process (D3PM's uniform transitions).

    Args:
        x0: (B, L) clean tokens.
        alpha: (B,) the probability that each token is kept.
        V: vocabulary size; a replaced token is uniform over 0 .. V-1 (x0 itself included).
        generator: the random source.

    Returns:
        (B, L) tokens.
    """
    keep = _keep(x0, alpha, generator)
    fresh = randint(V, x0.shape, generator, x0.device).to(x0.dtype)  # (B, L)
    return torch.where(keep, x0, fresh)


def masked_marginal(x0: Tensor, alpha: Tensor, V: int) -> Tensor:
    """q(x_t | x0) of the masking process, MASK = V.

    Args:
        x0: (B, L) clean tokens.
        alpha: (B,) float keep probabilities (the result takes their dtype).

    Returns:
        (B, L, V + 1) probabilities alpha onehot(x0) + (1 - alpha) onehot(MASK).
    """
    onehot = F.one_hot(x0, V + 1).to(alpha.dtype)  # (B, L, V+1)
    mask = F.one_hot(torch.full_like(x0, V), V + 1).to(alpha.dtype)  # (B, L, V+1)
    a = append_dims(alpha, onehot)  # (B, 1, 1)
    return a * onehot + (1 - a) * mask


def uniform_marginal(x0: Tensor, alpha: Tensor, V: int) -> Tensor:
    """q(x_t | x0) of the uniform process.

    Args:
        x0: (B, L) clean tokens.
        alpha: (B,) float keep probabilities (the result takes their dtype).

    Returns:
        (B, L, V) probabilities alpha onehot(x0) + (1 - alpha) / V.
    """
    onehot = F.one_hot(x0, V).to(alpha.dtype)  # (B, L, V)
    a = append_dims(alpha, onehot)  # (B, 1, 1)
    return a * onehot + (1 - a) / V
