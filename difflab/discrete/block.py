"""Block diffusion: masked diffusion inside blocks of L' tokens, autoregressive across them (BD3-LM: Arriola et
al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion Language Models").

The sequence x0 (B, L) is cut into L / L' blocks x^1 .. x^{L/L'}. Then -log p(x0) = sum_b -log p(x^b | x^{<b}), and
each term is bounded by the masked-diffusion ELBO of block b given the clean blocks before it (BD3-LM eq. 5), here
in its any-order form (:func:`~difflab.discrete.masked.masked_count_nelbo`: k ~ U{1..L'} of the block's tokens
masked, weight L' / k). L' = L is masked diffusion; L' = 1 is the autoregressive model, and the bound is then
exact (one token, always masked, weight 1).

**One pass for every block in training** (BD3-LM Sec. 3.2, its vectorised training): the network reads the noised
and the clean sequence side by side, 2L tokens [x_t ; x0] at positions 0 .. L-1 twice, with the attention mask of
:func:`block_training_mask`: a noised token of block b reads the noised tokens of its own block and the clean
tokens of blocks before b; a clean token of block b reads the clean tokens of blocks up to b (block-causal). The
logits of the noised half are the denoiser of every block at once.

**Sampling** (BD3-LM Sec. 3.3, without its KV cache): block after block, the clean blocks so far followed by one
fully masked block, with the block-causal mask of :func:`block_causal_mask` (which is what the clean half saw in
training), unmasked by MDLM's ancestral sampler (:func:`~difflab.discrete.samplers.sample_masked`).

The network contract of this module: ``model(tokens, positions, attn_mask, cond) -> logits`` with tokens (B, N)
int64, positions (N,) int64, attn_mask (N, N) bool (True = element i reads element j), logits (B, N, V + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.discrete.masked import count_weight, draw_counts, random_subsets, subs_log_probs, token_nll
from difflab.discrete.samplers import Fixed, SampleStats, check_fixed, resolve_device, sample_masked
from difflab.discrete.schedules import TokenSchedule
from difflab.errors import UserError
from difflab.samplers.common import steps_bar

BlockModel = Callable[[Tensor, Tensor, Tensor, Any], Tensor]  # (tokens, positions, attn_mask, cond) -> logits


def check_blocks(L: int, block: int) -> int:
    """The number of blocks L / L', or one line when L' does not divide L."""
    if block < 1 or L % block:
        raise UserError(f"text.block_size {block} must divide text.length {L}: pick a divisor such as "
                        f"{next(d for d in (16, 8, 4, 2, 1) if L % d == 0)}")
    return L // block


def block_causal_mask(N: int, block: int, device: torch.device | str | None = None) -> Tensor:
    """(N, N) bool: element i reads element j when j's block is not after i's (blocks of ``block`` elements)."""
    b = torch.arange(N, device=device) // block  # (N,)
    return b[None, :] <= b[:, None]


def block_training_mask(L: int, block: int, device: torch.device | str | None = None) -> Tensor:
    """(2L, 2L) bool attention of [x_t ; x0] (BD3-LM Sec. 3.2): noised -> noised of the same block, noised -> clean
    of earlier blocks, clean -> clean of blocks up to its own (block-causal), clean -> noised never."""
    b = torch.arange(L, device=device) // block  # (L,)
    same, earlier = b[:, None] == b[None, :], b[None, :] < b[:, None]  # (L, L) each: [query, key]
    top = torch.cat([same, earlier], dim=1)  # (L, 2L): noised queries
    bottom = torch.cat([torch.zeros_like(same), same | earlier], dim=1)  # (L, 2L): clean queries
    return torch.cat([top, bottom], dim=0)  # (2L, 2L)


def block_nelbo(model: BlockModel, x0: Tensor, mask_id: int, block: int, *, cond: dict[str, Any] | None = None,
                generator: torch.Generator | None = None, antithetic: bool = True, gamma: float = 0.0) -> Tensor:
    """An unbiased estimate of the block-diffusion bound on -log p(x0), all blocks in one network pass.

        NELBO(x0) = sum_b L' E_{k_b ~ U{1..L'}} E_{|M_b| = k_b} [ (1/k_b) sum_{i in M_b} -log p(x0^i | x_t^b, x0^{<b}) ]

    Each block draws its own count k_b (low-discrepancy over the B * L / L' blocks of the batch with
    ``antithetic``; from q(k) proportional to k^-gamma with reweighting when ``gamma`` > 0, as
    :func:`~difflab.discrete.masked.masked_count_nelbo`) and its own k_b-subset of positions.

    Args:
        model: the block network (module docstring), called once on (B, 2L).
        x0: (B, L) clean tokens in 0 .. V-1.
        mask_id: the MASK token (= V).
        block: L', tokens per block, dividing L.
        cond: passed to the model unchanged.
        generator: the random source of the counts and the masks.
        antithetic: low-discrepancy counts over the batch's blocks.
        gamma: the exponent of the counts' proposal (0: uniform).

    Returns:
        (B,) nats per sequence.
    """
    B, L = x0.shape
    nb = check_blocks(L, block)
    k = draw_counts(B * nb, block, generator, antithetic=antithetic, gamma=gamma, device=x0.device)  # (B * nb,)
    masked = random_subsets(k, block, generator).view(B, L)  # (B, nb * L') -> (B, L)
    x_t = torch.where(masked, mask_id, x0)  # (B, L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # (2L,): 0 .. L-1 twice
    logits = model(torch.cat([x_t, x0], dim=1), positions, block_training_mask(L, block, x0.device), cond)
    log_p = subs_log_probs(logits[:, :L], x_t, mask_id)  # (B, L, V+1): the noised half
    nll = torch.where(masked, token_nll(log_p, x0), 0.0).view(B * nb, block).sum(-1)  # (B * nb,)
    return (nll * count_weight(k, block, gamma, nll.dtype)).view(B, nb).sum(-1)  # (B,)


def sample_block(model: BlockModel, shape: tuple[int, int], schedule: TokenSchedule, steps: int, mask_id: int,
                 block: int, *, cond: dict[str, Any] | None = None, generator: torch.Generator | None = None,
                 fixed: Fixed | None = None, stats: SampleStats | None = None,
                 device: torch.device | str | None = None, progress: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0) -> Tensor:
    """Block-by-block ancestral sampling (BD3-LM Sec. 3.3): each block drawn by MDLM's sampler given the blocks
    before it, in ``steps`` / (L / L') steps of its own (at least 1; the network calls are counted in ``stats``).

    Args:
        model: the block network (module docstring).
        shape: (B, L) of the samples.
        schedule: alpha(t) of the in-block sampler.
        steps: the total number of steps, shared evenly by the blocks.
        mask_id: the MASK token (= V).
        block: L'.
        cond: passed to the model unchanged.
        generator: the random source.
        fixed: given positions (a prefix continues; positions after the first free one are kept but the blocks
            before them cannot read them: block diffusion does not infill).
        stats, device, progress, temperature, top_p: as :func:`~difflab.discrete.samplers.sample_masked`.

    Returns:
        (B, L) int64 tokens in 0 .. V-1.
    """
    B, L = shape
    nb = check_blocks(L, block)
    if steps < 1:
        raise UserError(f"block sampling needs steps >= 1, got {steps}: pass a positive number of steps")
    per_block = max(1, round(steps / nb))
    device = resolve_device(device, generator)
    fixed = check_fixed(fixed, shape, mask_id, device)
    x = torch.empty((B, 0), dtype=torch.long, device=device)  # the clean blocks so far
    for b in steps_bar(nb, "blocks", progress):
        prefix, start = x, b * block
        N = start + block
        positions, mask = torch.arange(N, device=device), block_causal_mask(N, block, device)

        def denoiser(tokens: Tensor, t: Tensor, c: Any, prefix: Tensor = prefix) -> Tensor:
            """The network on [clean blocks ; the block being drawn] -> the logits of that block (B, L', V+1)."""
            return model(torch.cat([prefix, tokens], dim=1), positions, mask, c)[:, -block:]

        given = None if fixed is None else (fixed[0][:, start:N], fixed[1][:, start:N])
        new = sample_masked(denoiser, (B, block), schedule, per_block, mask_id, cond=cond, generator=generator,
                            fixed=given, time_conditioned=False, stats=stats, device=device,
                            temperature=temperature, top_p=top_p)  # (B, L')
        x = torch.cat([x, new], dim=1)  # (B, N)
    return x


__all__ = ["BlockModel", "block_causal_mask", "block_nelbo", "block_training_mask", "check_blocks", "sample_block"]
