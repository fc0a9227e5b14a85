"""The five ways ``task: text`` models text, on one transformer (:class:`~difflab.models.text_transformer.TextTransformer`):
each a small class with the same five methods, chosen by ``text.method`` from :data:`METHODS` (no string branches
anywhere else).

==================  ==========================================================================================
method              what it is
==================  ==========================================================================================
``masked``          absorbing-state diffusion, MDLM (Sahoo et al. 2024): SUBS, the continuous-time ELBO
``uniform``         D3PM with uniform transitions (Austin et al. 2021): its discrete-time ELBO
``embedding``       Diffusion-LM (Li et al. 2022): Gaussian diffusion on learned token embeddings, x0-prediction,
                    the rounding loss, the clamping trick; the core's schedule and samplers unchanged
``mask-predict``    the conditional masked LM of Mask-Predict (Ghazvininejad et al. 2019), decoded by re-masking
                    the least confident tokens; its bound is the masked ELBO of the same network
``autoregressive``  the baseline a user would otherwise train: the same transformer, causal, a KV cache
``block``           block diffusion, BD3-LM (Arriola et al. 2025): masked diffusion inside blocks of L' tokens,
                    autoregressive across them, in one pass through a block attention mask
==================  ==========================================================================================

Token ids: the corpus's tokens are 0..V-1; ``MASK = V`` (masked, mask-predict) and ``BOS = V`` (autoregressive) are
one extra input id. ``fixed`` (infilling) is a pair (mask (B, L) bool, tokens (B, L)): the given positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import DDPM_TIMESTEPS, Config
from difflab.errors import UserError

Fixed = tuple[Tensor, Tensor]  # (given (B, L) bool, tokens (B, L) int64)
REMASK_NOISE = 16.0  # mask-predict: tau of MaskGIT's noise on the re-masking (BENCHMARKS.md, "Text levers")
BOUND_STRATA = 50  # embedding: stratified draws of the Gaussian bound's sum over t per sequence
# the time features of every method see t in [0, DDPM_TIMESTEPS): the discrete family's t in [0, 1] is scaled by this,
# the Gaussian core's t in [0, T - 1] by DDPM_TIMESTEPS / T
TIME_RANGE = float(DDPM_TIMESTEPS)


def network_call(net: nn.Module):
    """``net(tokens, t, labels=...)`` as the discrete family's contract ``model(tokens, t, cond) -> logits``."""
    return lambda tokens, t, cond: net(tokens, t, **(cond or {}))


def label_cond(labels: Tensor | None) -> dict[str, Tensor] | None:
    """The network's condition of category ids (B,) (-1 = none); None without labels."""
    return None if labels is None else {"labels": labels}


def untempered(what: str, temperature: float, top_p: float) -> None:
    """One line unless ``temperature`` and ``top_p`` are 1: ``what`` does not draw tokens from a categorical."""
    if temperature != 1 or top_p != 1:
        raise UserError(f"{what} sampling draws no categorical tokens, so it takes no --temperature or --top-p: "
                        "drop them")


@dataclass(frozen=True)
class TextMethod:
    """What every method provides; ``cfg`` is the run's config, ``V`` its tokenizer's vocabulary size."""

    cfg: Config
    V: int
    num_labels: int = 0

    name: ClassVar[str] = "?"
    samplers: ClassVar[tuple[str, ...]] = ()  # the first is the default
    infills: ClassVar[bool] = True  # a prefix and a suffix can be given (else a prefix only)
    default_time: ClassVar[bool] = False  # text.time_conditioning None means this

    @property
    def time_conditioning(self) -> bool:
        tc = self.cfg.text.time_conditioning
        return self.default_time if tc is None else tc

    def transformer(self, **roles: Any) -> nn.Module:
        """The one transformer of ``cfg.text`` in a role (its inputs, outputs, time, causality)."""
        from difflab.models.text_transformer import TextTransformer

        t = self.cfg.text
        return TextTransformer(width=t.width, depth=t.depth, heads=t.heads, max_length=t.length,
                               mlp_ratio=t.mlp_ratio, dropout=t.dropout, num_classes=self.num_labels,
                               time_scale=TIME_RANGE, **roles)

    def build(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, x0: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """The training objective of a batch x0 (B, L), a scalar (nats per token where it is a bound)."""
        return self.nelbo(model, x0, labels, generator).mean() / x0.shape[1]

    def nelbo(self, model: nn.Module, x0: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """An unbiased estimate of an upper bound on -log p(x0) (exact for the autoregressive model), (B,) nats."""
        raise NotImplementedError

    def sample(self, model: nn.Module, n: int, labels: Tensor | None, *, sampler: str, steps: int,
               fixed: Fixed | None, generator: torch.Generator, progress: bool, temperature: float = 1.0,
               top_p: float = 1.0) -> Tensor:
        """``n`` sequences (n, L) of ``text.length`` tokens, each token drawn from the
        :func:`~difflab.discrete.samplers.tempered` model (``temperature``, ``top_p``; 1, 1: the model's)."""
        raise NotImplementedError

    def check_sampler(self, sampler: str) -> None:
        if sampler not in self.samplers:
            raise UserError(f"a {self.name} text run samples with {' or '.join(self.samplers)}, not {sampler!r}: "
                            f"pass --sampler {self.samplers[0]}")


class Scheduled:
    """The token schedule of ``text.schedule`` (the discrete-noise methods)."""

    cfg: Config

    @property
    def schedule(self):
        from difflab.discrete.schedules import token_schedule

        return token_schedule(self.cfg.text.schedule, self.cfg.text.eps)


# -- masked diffusion (MDLM) and Mask-Predict ------------------------------------------------------
class Masked(Scheduled, TextMethod):
    name = "masked"
    samplers = ("ancestral", "mask-predict")

    @property
    def mask_id(self) -> int:
        return self.V

    def build(self) -> nn.Module:
        return self.transformer(vocab_in=self.V + 1, vocab_out=self.V + 1, time_conditioning=self.time_conditioning)

    def loss(self, model, x0, labels, generator):
        """The bound, its counts drawn by text.count_gamma (importance sampling shapes training only)."""
        return self.nelbo(model, x0, labels, generator, gamma=self.cfg.text.count_gamma).mean() / x0.shape[1]

    def nelbo(self, model, x0, labels, generator, gamma: float = 0.0):
        """The bound as measured: counts k ~ U{1..L} (gamma 0), whatever the training proposal, so that runs
        trained with different text.count_gamma are scored by the same estimator."""
        from difflab.discrete.masked import masked_count_nelbo, masked_nelbo
        from difflab.discrete.schedules import draw_times

        if self.cfg.text.estimator == "count":
            return masked_count_nelbo(network_call(model), x0, self.mask_id, cond=label_cond(labels),
                                      generator=generator, antithetic=self.cfg.text.antithetic, gamma=gamma)
        t = draw_times(len(x0), generator) if self.cfg.text.antithetic else \
            torch.rand(len(x0), generator=generator, device=generator.device)
        return masked_nelbo(network_call(model), x0, self.schedule, self.mask_id, cond=label_cond(labels),
                            generator=generator, t=t.to(x0.device))

    def sample(self, model, n, labels, *, sampler, steps, fixed, generator, progress, temperature=1.0,
               top_p=1.0, remask_noise=REMASK_NOISE):
        from difflab.discrete.mask_predict import mask_predict
        from difflab.discrete.samplers import sample_masked

        self.check_sampler(sampler)
        shape, call = (n, self.cfg.text.length), network_call(model)
        if sampler == "mask-predict":  # draws at the temperature (0: the paper's argmax, one text for all)
            return mask_predict(call, shape, steps, self.mask_id, cond=label_cond(labels), fixed=fixed,
                                generator=generator, temperature=temperature, top_p=top_p,
                                remask_noise=remask_noise)
        return sample_masked(call, shape, self.schedule, steps, self.mask_id, cond=label_cond(labels),
                             generator=generator, fixed=fixed, time_conditioned=self.time_conditioning,
                             progress=progress, temperature=temperature, top_p=top_p)


class MaskPredict(Masked):
    """Trained by the conditional masked LM objective (which is, times L, the masked ELBO in its any-order form
    with independent counts); measured by the masked ELBO; sampled by Mask-Predict."""

    name = "mask-predict"
    samplers = ("mask-predict", "ancestral")

    def loss(self, model, x0, labels, generator):
        from difflab.discrete.masked import cmlm_loss

        return cmlm_loss(network_call(model), x0, self.mask_id, cond=label_cond(labels), generator=generator).mean()


class Block(Masked):
    """Block diffusion (BD3-LM, Arriola et al. 2025): masked diffusion inside blocks of ``text.block_size``
    tokens, autoregressive across them (:mod:`difflab.discrete.block`); the same transformer, bidirectional, read
    through a block attention mask. Time-free, as MDLM; continues a prefix but does not infill."""

    name = "block"
    samplers = ("ancestral",)
    infills = False

    def build(self) -> nn.Module:
        from difflab.discrete.block import check_blocks

        check_blocks(self.cfg.text.length, self.cfg.text.block_size)
        if self.time_conditioning:
            raise UserError("text.method=block is time-free (its in-block sampler reuses unchanged logits, as "
                            "MDLM's): set text.time_conditioning=false")
        return self.transformer(vocab_in=self.V + 1, vocab_out=self.V + 1, time_conditioning=False)

    def nelbo(self, model, x0, labels, generator, gamma: float = 0.0):
        """The bound as measured: counts k ~ U{1..L'} per block (gamma 0), whatever the training proposal."""
        from difflab.discrete.block import block_nelbo

        return block_nelbo(block_call(model), x0, self.mask_id, self.cfg.text.block_size, cond=label_cond(labels),
                           generator=generator, antithetic=self.cfg.text.antithetic, gamma=gamma)

    def sample(self, model, n, labels, *, sampler, steps, fixed, generator, progress, temperature=1.0,
               top_p=1.0):
        from difflab.discrete.block import sample_block

        self.check_sampler(sampler)
        return sample_block(block_call(model), (n, self.cfg.text.length), self.schedule, steps, self.mask_id,
                            self.cfg.text.block_size, cond=label_cond(labels), generator=generator, fixed=fixed,
                            progress=progress, temperature=temperature, top_p=top_p)


def block_call(net: nn.Module):
    """``net`` as the block family's contract ``model(tokens, positions, attn_mask, cond) -> logits``."""
    return lambda tokens, positions, attn_mask, cond: net(tokens, None, positions=positions, attn_mask=attn_mask,
                                                          **(cond or {}))


# -- uniform transitions (D3PM) --------------------------------------------------------------------
class Uniform(Scheduled, TextMethod):
    name = "uniform"
    samplers = ("ancestral",)
    default_time = True

    def build(self) -> nn.Module:
        return self.transformer(vocab_in=self.V, vocab_out=self.V, time_conditioning=self.time_conditioning)

    def nelbo(self, model, x0, labels, generator):
        from difflab.discrete.uniform import uniform_nelbo

        return uniform_nelbo(network_call(model), x0, self.schedule, self.cfg.text.timesteps, self.V,
                             cond=label_cond(labels), generator=generator)

    def sample(self, model, n, labels, *, sampler, steps, fixed, generator, progress, temperature=1.0,
               top_p=1.0):
        from difflab.discrete.samplers import sample_uniform

        self.check_sampler(sampler)
        return sample_uniform(network_call(model), (n, self.cfg.text.length), self.schedule, self.cfg.text.timesteps,
                              steps, self.V, cond=label_cond(labels), generator=generator, fixed=fixed,
                              progress=progress, temperature=temperature, top_p=top_p)


# -- the autoregressive baseline -------------------------------------------------------------------
class Autoregressive(TextMethod):
    name = "autoregressive"
    samplers = ("ancestral",)
    infills = False

    @property
    def bos(self) -> int:
        return self.V

    def build(self) -> nn.Module:
        return self.transformer(vocab_in=self.V + 1, vocab_out=self.V, time_conditioning=False, causal=True)

    def loss(self, model, x0, labels, generator):
        from difflab.discrete.autoregressive import ar_loss

        return ar_loss(model, x0, labels=labels, bos=self.bos)

    def nelbo(self, model, x0, labels, generator):
        from difflab.discrete.autoregressive import ar_log_likelihood

        return -ar_log_likelihood(model, x0, labels=labels, bos=self.bos)

    def sample(self, model, n, labels, *, sampler, steps, fixed, generator, progress, temperature=1.0,
               top_p=1.0):
        from difflab.discrete.autoregressive import sample_autoregressive

        self.check_sampler(sampler)
        prefix = None
        if fixed is not None:
            given, tokens = fixed
            P = int(given[0].long().cumprod(0).sum())  # the given positions from the start
            if bool(given[:, P:].any()):
                raise UserError("an autoregressive run continues a prefix but cannot fill before a suffix: "
                                f"drop --suffix, or sample a run that infills ({infilling_methods()})")
            prefix = tokens[:, :P] if P else None
        return sample_autoregressive(model, n, self.cfg.text.length, bos=self.bos, labels=labels,
                                     generator=generator, prefix=prefix, progress=progress, temperature=temperature,
                                     top_p=top_p)


# -- Gaussian diffusion on embeddings (Diffusion-LM) -------------------------------------------------
class Embedding(TextMethod):
    name = "embedding"
    default_time = True

    @property
    def samplers(self) -> tuple[str, ...]:  # type: ignore[override]
        from difflab.samplers import SAMPLERS

        s = self.cfg.sample.sampler
        return (s, *(k for k in SAMPLERS if k != s)) if s in SAMPLERS else tuple(SAMPLERS)

    @property
    def schedule(self):
        from difflab.schedules import schedule_from_config

        return schedule_from_config(self.cfg.diffusion)

    def build(self) -> nn.Module:
        from difflab.models.text_transformer import EmbeddingDiffusionLM

        t = self.cfg.text
        return EmbeddingDiffusionLM(vocab_size=self.V, embed_dim=t.embed_dim, width=t.width, depth=t.depth,
                                    heads=t.heads, max_length=t.length, num_classes=self.num_labels,
                                    time_scale=TIME_RANGE / self.cfg.diffusion.timesteps, mlp_ratio=t.mlp_ratio,
                                    dropout=t.dropout)

    def loss(self, model, x0, labels, generator):
        """Diffusion-LM's objective (Li et al. 2022, eq. 2, with x0-prediction) on the chain that starts at z = EMB(w):
        ||x0_hat - EMB(w)||^2 at a random t, the rounding loss -log p(w | z_0) of the first noisy latent (the
        bound's decoder term), and ``text.rounding_weight`` x -log p(w | x0_hat) (the rounding of the prediction:
        it keeps the embeddings apart, so they do not collapse)."""
        s = self.schedule
        e = model.embed(x0)  # (B, L, D)
        t = torch.randint(0, s.T, (len(x0),), generator=generator, device=generator.device).to(x0.device)
        eps, eps0 = (torch.randn(e.shape, generator=generator, device=generator.device).to(e) for _ in range(2))
        x0_hat = model(s.q_sample(e, t, eps), t.float(), **(label_cond(labels) or {}))  # (B, L, D)
        mse = (x0_hat - e).pow(2).mean()
        round_data = F.cross_entropy(model.rounding_logits(s.q_sample(e, torch.zeros_like(t), eps0)).flatten(0, 1),
                                     x0.flatten())
        round_hat = F.cross_entropy(model.rounding_logits(x0_hat).flatten(0, 1), x0.flatten())
        return mse + round_data + self.cfg.text.rounding_weight * round_hat

    def nelbo(self, model, x0, labels, generator):
        """-log p(w) <= L_T + sum_{t >= 1} KL(q(z_{t-1} | z_t, z) || p(z_{t-1} | z_t)) - log p(w | z_0), the bound of
        the chain from z = EMB(w) (deterministic: VDM's discrete-data bound, Kingma et al. 2021, with the rounding
        p(w | z_0) as its decoder): the Gaussian terms of difflab.evaluate.likelihood (T - 1 steps estimated by
        :data:`BOUND_STRATA` strata), the decoder the rounding cross-entropy of z_0 ~ q(z_0 | z). The reverse model
        p(z_{t-1} | z_t) is the sampler's, with the clamping trick (:meth:`clamped`): exact wherever the rounding is
        right (the network's own x0_hat, off by a little, costs SNR x error^2 at small t: 114 bits/char against 5.4
        for the clamped one on the first Bible run)."""
        from difflab.evaluate.likelihood import elbo_terms, stratified_timesteps

        s = self.schedule
        e = model.embed(x0)  # (B, L, D)
        denoiser = self.clamped(model)
        steps, weights = stratified_timesteps(s.T, min(BOUND_STRATA, s.T - 1), generator, batch=len(x0))
        terms = elbo_terms(denoiser, e, s, decoder="gaussian", cond=label_cond(labels), timesteps=steps,
                           weights=weights, generator=generator)
        z0 = s.q_sample(e, torch.zeros(len(x0), dtype=torch.long, device=x0.device),
                        torch.randn(e.shape, generator=generator, device=generator.device).to(e))  # (B, L, D)
        rounding = F.cross_entropy(model.rounding_logits(z0).flatten(0, 1).double(), x0.flatten(),
                                   reduction="none").view(x0.shape).sum(1)  # (B,)
        return terms.prior + (terms.kl * terms.weights).sum(-1) + rounding

    def clamped(self, model: nn.Module, fixed: Fixed | None = None):
        """The network as a denoiser ``D(z_t, t, cond) -> x0_hat`` with the clamping trick (Li et al. 2022, Sec. 4.2):
        each predicted vector replaced by its nearest embedding, and the given positions of ``fixed`` by theirs."""
        from difflab.denoisers import NetworkDenoiser

        base = NetworkDenoiser(lambda x_t, t, **c: model(x_t, t, **c), self.schedule, "x0")
        given = None if fixed is None else (fixed[0][..., None], model.embed(fixed[1]))  # (B, L, 1), (B, L, D)

        def denoise(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
            x0_hat = model.nearest_embedding(base(x_t, t, cond))  # (B, L, D)
            return x0_hat if given is None else torch.where(given[0], given[1].to(x0_hat), x0_hat)

        return denoise

    def sample(self, model, n, labels, *, sampler, steps, fixed, generator, progress, temperature=1.0,
               top_p=1.0):
        """The core sampler ``sampler`` on (n, L, D) with the clamping trick (each x0_hat replaced by its nearest
        embedding, Li et al. 2022 Sec. 4.2; given positions by theirs), then rounded."""
        from difflab.samplers import sample

        if sampler not in self.samplers:
            self.check_sampler(sampler)
        untempered(self.name, temperature, top_p)
        s, L = self.schedule, self.cfg.text.length
        x = sample(sampler, self.clamped(model, fixed), (n, L, self.cfg.text.embed_dim), s, steps=steps,
                   grid=self.cfg.sample.grid, cond=label_cond(labels), generator=generator, device=generator.device,
                   progress=progress)  # (n, L, D)
        tokens = model.nearest_tokens(x)  # (n, L): each vector rounded to its nearest embedding
        return tokens if fixed is None else torch.where(fixed[0], fixed[1], tokens)


METHODS: dict[str, type[TextMethod]] = {m.name: m for m in (Masked, Uniform, Embedding, MaskPredict, Autoregressive,
                                                             Block)}


def infilling_methods() -> str:
    """The methods that fill between a prefix and a suffix, comma-separated (for error messages)."""
    return ", ".join(name for name, method in METHODS.items() if method.infills)


def text_method(cfg: Config, V: int, num_labels: int = 0) -> TextMethod:
    """The method of ``cfg.text.method`` for a vocabulary of ``V`` tokens and ``num_labels`` categories."""
    return METHODS[cfg.text.method](cfg, V, num_labels)


__all__ = ["METHODS", "TextMethod", "label_cond", "network_call", "text_method"]
