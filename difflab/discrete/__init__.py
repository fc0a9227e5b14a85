"""The discrete family of diffusion on tokens, beside the Gaussian core: noise schedules of a clean-token
probability alpha(t), the masking (absorbing-state) and uniform forward processes, their ELBOs, their samplers,
Mask-Predict decoding, block diffusion (masked inside blocks, autoregressive across them), and the autoregressive
baseline's sampler and exact likelihood.

Every network of this family is called through one contract: ``model(tokens, t, cond) -> logits``
(tokens (B, L) int64, t (B,) float in [0, 1] or None, cond a dict of the network's keyword arguments or None;
logits (B, L, V_out)); block diffusion's network also reads positions and an attention mask
(:mod:`difflab.discrete.block`).
"""

from difflab.discrete.block import block_nelbo, sample_block
from difflab.discrete.forward import TokenModel, mask_forward, masked_marginal, uniform_forward, uniform_marginal
from difflab.discrete.mask_predict import mask_predict, remask_count, remask_scores
from difflab.discrete.masked import cmlm_loss, draw_counts, masked_count_nelbo, masked_nelbo, subs_log_probs
from difflab.discrete.samplers import SampleStats, sample_masked, sample_uniform, tempered
from difflab.discrete.schedules import TOKEN_SCHEDULES, TokenSchedule, draw_times, token_schedule
from difflab.discrete.uniform import uniform_jump_posterior, uniform_nelbo, uniform_posterior

__all__ = ["TOKEN_SCHEDULES", "SampleStats", "TokenModel", "TokenSchedule", "block_nelbo", "cmlm_loss",
           "draw_counts", "draw_times", "mask_forward", "mask_predict", "masked_marginal", "masked_count_nelbo",
           "masked_nelbo", "remask_count", "remask_scores", "sample_block", "sample_masked", "sample_uniform",
           "subs_log_probs", "tempered", "token_schedule", "uniform_forward", "uniform_jump_posterior",
           "uniform_marginal", "uniform_nelbo", "uniform_posterior"]
