"""The autoregressive baseline: the text model a user would otherwise train, for comparison with text diffusion.

A causal :class:`~difflab.models.text_transformer.TextTransformer` (``causal=True``, no time) factorises

    log p(x_1 .. x_L) = sum_l log p(x_l | bos, x_1 .. x_{l-1})          (the chain rule, exact)

Convention (every function here): the network reads ``input = [bos, x_1 .. x_{L-1}]`` and position l of its
output predicts ``target = x_{l+1}``, i.e. the targets are ``x_1 .. x_L``: the beginning-of-sequence id ``bos``
(part of the model's ``vocab_in``) lets the first token be scored too, so the likelihood is that of the whole
sequence, in nats, comparable with a diffusion model's ELBO on the same tokens.

Sampling is ancestral, one token at a time, with the KV cache. A left-to-right model can only be conditioned
on a *prefix* (a prompt): infilling given a suffix (or any other positions) is not possible without summing
over the missing tokens, which is what the diffusion models of this package do instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.discrete.samplers import check_draw, tempered
from difflab.models.text_transformer import KVCache, TextTransformer
from difflab.samplers.common import steps_bar


def _check_causal(model: TextTransformer) -> None:
    if not model.causal:
        raise ValueError("the autoregressive functions need a causal TextTransformer: build it with causal=True")


def shifted_inputs(tokens: Tensor, bos: int) -> Tensor:
    """(B, L) tokens -> (B, L) network input [bos, x_1 .. x_{L-1}] (the targets are the tokens themselves)."""
    start = torch.full_like(tokens[:, :1], bos)  # (B, 1)
    return torch.cat([start, tokens[:, :-1]], dim=1)  # (B, L)


def token_log_probs(model: TextTransformer, tokens: Tensor, *, labels: Tensor | None = None,
                    bos: int | None = None) -> Tensor:
    """log p(x_l | bos, x_<l) of every token under a causal model.

    Args:
        model: a causal TextTransformer with token input and ``vocab_out`` logits.
        tokens: (B, L) int64.
        labels: (B,) int64 classes (-1 = none) for a label-conditioned model.
        bos: beginning-of-sequence id; None = no bos, the first token is taken as given and only
            x_2 .. x_L are scored (log p(x_l | x_<l)).

    Returns:
        (B, L) log-probabilities in nats ((B, L - 1) when ``bos`` is None), in at least float32.
    """
    _check_causal(model)
    if bos is None:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, L-1) each
    else:
        inputs, targets = shifted_inputs(tokens, bos), tokens  # (B, L) each
    logits = model(inputs, labels=labels)  # (B, L, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, L, V)
    return F.log_softmax(logits, dim=-1).gather(-1, targets[..., None].long())[..., 0]  # (B, L)


def ar_log_likelihood(model: TextTransformer, tokens: Tensor, *, labels: Tensor | None = None,
                      bos: int | None = None) -> Tensor:
    """Exact log p(tokens) in nats under a causal model (the chain rule, module docstring's convention).

    Args:
        model: a causal TextTransformer.
        tokens: (B, L) int64.
        labels: (B,) int64 classes (-1 = none) for a label-conditioned model.
        bos: beginning-of-sequence id in the model's ``vocab_in``; every token is then scored. None =
            the conditional log p(x_2 .. x_L | x_1) (the first token is not scored).

    Returns:
        (B,) log-likelihoods (runs under the caller's grad mode).
    """
    return token_log_probs(model, tokens, labels=labels, bos=bos).sum(dim=-1)  # (B,)


def ar_loss(model: TextTransformer, tokens: Tensor, *, labels: Tensor | None = None, bos: int) -> Tensor:
    """Mean next-token cross-entropy per token in nats (the training loss): -log p(tokens) / (B L).

    Args:
        model: a causal TextTransformer.
        tokens: (B, L) int64 training sequences.
        labels: (B,) int64 classes (-1 = none) for a label-conditioned model.
        bos: beginning-of-sequence id.

    Returns:
        () scalar; log V for a model that knows nothing.
    """
    return -token_log_probs(model, tokens, labels=labels, bos=bos).mean()


def _draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One categorical draw per row of logits (B, V), by inverse CDF in float64 -> (B,) int64."""
    probs = F.softmax(logits.double(), dim=-1)  # (B, V)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape[0], generator=generator, device=device, dtype=torch.float64)  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    index = (cdf < u.to(logits.device)[:, None]).sum(dim=-1)  # (B,)
    return index.clamp(max=logits.shape[-1] - 1)  # (B,)


@torch.no_grad()
def sample_autoregressive(model: TextTransformer, n: int, length: int, *, bos: int, labels: Tensor | None = None,
                          prefix: Tensor | None = None, generator: torch.Generator | None = None,
                          temperature: float = 1.0, top_p: float = 1.0, use_cache: bool = True,
                          progress: bool = False) -> Tensor:
    """Ancestral sampling x_l ~ p(x_l | bos, x_<l), one token at a time (left to right).

    The only conditioning a left-to-right model allows on the text itself is a prefix (see the module
    docstring): suffix-conditioned infilling is not possible here.

    Args:
        model: a causal TextTransformer without time conditioning (put it in eval mode first).
        n: number of sequences B.
        length: L of each output sequence, prefix included; at most ``model.max_length``.
        bos: beginning-of-sequence id, fed before the first token.
        labels: (B,) int64 classes (-1 = none) for a label-conditioned model.
        prefix: (B, P) int64 prompt tokens with P <= length; the output starts with them.
        generator: the source of the categorical draws (one uniform per sequence and step).
        temperature, top_p: each token is drawn from the :func:`~difflab.discrete.samplers.tempered` logits
            (divided by the temperature, cut to the top-p nucleus; 1, 1 = the model's distribution).
        use_cache: run each step on the new token only with the KV cache; False = the full forward on the
            whole sequence every step (slow; the same samples, to float rounding, for a given generator).
        progress: show a progress bar.

    Returns:
        (B, length) int64 tokens.
    """
    _check_causal(model)
    check_draw(temperature, top_p)
    if length > model.max_length:
        raise ValueError(f"length {length} exceeds the model's max_length {model.max_length}")
    device = next(model.parameters()).device
    seq = torch.full((n, 1), bos, dtype=torch.long, device=device)  # (B, 1)
    if prefix is not None:
        if prefix.ndim != 2 or prefix.shape[0] != n or prefix.shape[1] > length:
            raise ValueError(f"prefix must be (B={n}, P <= {length}) tokens, got {tuple(prefix.shape)}")
        seq = torch.cat([seq, prefix.to(device, torch.long)], dim=1)  # (B, 1 + P)
    feed, cache = seq, KVCache.empty()
    for _ in steps_bar(length + 1 - seq.shape[1], "autoregressive", progress):
        if use_cache:
            logits, cache = model.forward_step(feed, cache, labels=labels)  # (B, L_new, V)
        else:
            logits = model(seq, labels=labels)  # (B, L, V)
        token = _draw(tempered(logits[:, -1].double(), temperature, top_p), generator)  # (B,)
        seq = torch.cat([seq, token[:, None]], dim=1)  # (B, L + 1)
        feed = token[:, None]  # (B, 1)
    return seq[:, 1:]  # (B, length)
