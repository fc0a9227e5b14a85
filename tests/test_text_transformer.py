"""The text transformer in every role (MDLM denoiser, Diffusion-LM denoiser, autoregressive baseline) and the
autoregressive functions: causality, the KV cache, exact likelihoods, adaLN-zero, labels, a smoke train."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difflab.denoisers import NetworkDenoiser, classifier_free_guidance
from difflab.discrete.autoregressive import ar_log_likelihood, ar_loss, sample_autoregressive, token_log_probs
from difflab.models.text_transformer import EmbeddingDiffusionLM, KVCache, TextTransformer, apply_rotary, rotary_tables
from difflab.schedules import make_schedule

V, L, B = 11, 12, 3
TINY = dict(width=16, depth=2, heads=2, max_length=32)


def _model(**kw) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(**{"vocab_in": V, "vocab_out": V, **TINY, **kw}).eval()


def _tokens(seed: int = 1, batch: int = B, length: int = L) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _randomise_modulations(model: TextTransformer) -> None:
    """Give adaLN-zero's zero-initialised maps random weights, as training would (so c matters)."""
    torch.manual_seed(5)
    for name, p in model.named_parameters():
        if "modulation" in name:
            nn.init.normal_(p, std=0.3)


# --- causality -------------------------------------------------------------------------------------
def test_causal_model_never_looks_ahead() -> None:
    model, x = _model(causal=True), _tokens()
    for j in (0, 5, L - 1):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % V
        before, after = model(x), model(y)
        torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)
        assert (after[:, j:] - before[:, j:]).abs().amax() > 1e-3


def test_bidirectional_model_sees_the_future() -> None:
    model, x = _model(causal=False), _tokens()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    assert (model(y)[:, 0] - model(x)[:, 0]).abs().amax() > 1e-3


def test_rotary_scores_depend_only_on_the_offset() -> None:
    cos, sin = rotary_tables(40, 8)  # (40, 8) each
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, cos[m:m + 1].double(), sin[m:m + 1].double())
        kn = apply_rotary(k, cos[n:n + 1].double(), sin[n:n + 1].double())
        return float((qm * kn).sum())

    assert score(3, 1) == pytest.approx(score(30, 28), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    assert float(apply_rotary(q, cos[5:6].double(), sin[5:6].double()).norm()) == pytest.approx(float(q.norm()))


# --- the KV cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cached_steps_equal_the_full_forward(dtype: torch.dtype, tol: float) -> None:
    model = _model(causal=True, num_classes=3).to(dtype)
    _randomise_modulations(model)
    x, labels = _tokens(), torch.tensor([0, 2, -1])
    full = model(x, labels=labels)  # (B, L, V)
    out, cache = model.forward_step(x[:, :5], None, labels=labels)  # the prompt
    outs = [out]
    for i in range(5, 9):  # one token at a time
        out, cache = model.forward_step(x[:, i:i + 1], cache, labels=labels)
        outs.append(out)
    out, cache = model.forward_step(x[:, 9:], cache, labels=labels)  # a chunk again
    outs.append(out)
    assert cache.length == L and cache.keys[0].shape == (B, TINY["heads"], L, TINY["width"] // TINY["heads"])
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=tol)


def test_cache_is_not_modified_and_bounded() -> None:
    model, x = _model(causal=True), _tokens()
    _, cache = model.forward_step(x[:, :4])
    _, longer = model.forward_step(x[:, 4:6], cache)
    assert cache.length == 4 and cache.keys[0].shape[2] == 4 and longer.length == 6
    with pytest.raises(ValueError, match="max_length"):
        model.forward_step(_tokens(length=TINY["max_length"] - 5), longer)
    with pytest.raises(ValueError, match="causal"):
        _model(causal=False).forward_step(x, KVCache.empty())


# --- the autoregressive functions --------------------------------------------------------------------
def test_log_likelihood_is_the_sum_of_next_token_log_probs() -> None:
    model, x, bos = _model(causal=True), _tokens(), V - 1
    inputs = torch.cat([torch.full((B, 1), bos), x[:, :-1]], dim=1)  # (B, L)
    by_hand = torch.log_softmax(model(inputs), -1).gather(-1, x[..., None])[..., 0].sum(-1)  # (B,)
    torch.testing.assert_close(ar_log_likelihood(model, x, bos=bos), by_hand)
    assert ar_loss(model, x, bos=bos).item() == pytest.approx(-by_hand.sum().item() / (B * L), rel=1e-6)
    without_bos = torch.log_softmax(model(x[:, :-1]), -1).gather(-1, x[:, 1:, None])[..., 0].sum(-1)
    torch.testing.assert_close(ar_log_likelihood(model, x), without_bos)


def test_constant_logits_give_uniform_likelihood() -> None:
    model = _model(causal=True, num_classes=2)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)  # every logit 0: p(x_l | ...) = 1/V
    x = _tokens()
    torch.testing.assert_close(ar_log_likelihood(model, x, bos=0, labels=torch.tensor([0, 1, -1])),
                               torch.full((B,), L * math.log(1 / V)))
    torch.testing.assert_close(ar_log_likelihood(model, x), torch.full((B,), (L - 1) * math.log(1 / V)))
    assert ar_loss(model, x, bos=0).item() == pytest.approx(math.log(V))


def test_cached_and_uncached_sampling_agree() -> None:
    model = _model(causal=True, num_classes=3)
    _randomise_modulations(model)
    prefix, labels = _tokens(length=4), torch.tensor([1, -1, 2])
    samples = [sample_autoregressive(model, B, 10, bos=0, labels=labels, prefix=prefix, use_cache=cache,
                                     generator=torch.Generator().manual_seed(7), temperature=0.8)
               for cache in (True, False)]
    assert samples[0].shape == (B, 10) and samples[0].dtype == torch.long
    assert torch.equal(samples[0], samples[1])
    assert torch.equal(samples[0][:, :4], prefix)
    other = sample_autoregressive(model, B, 10, bos=0, labels=labels, prefix=prefix,
                                  generator=torch.Generator().manual_seed(8), temperature=0.8)
    assert not torch.equal(other, samples[0])
    assert sample_autoregressive(model, 2, 5, bos=0).shape == (2, 5)


def test_sampling_follows_a_peaked_model() -> None:
    """A model whose logits single out one token (a large bias) samples only that token."""
    model = _model(causal=True)
    nn.init.zeros_(model.head.weight)
    with torch.no_grad():
        model.head.bias.fill_(-50.0)
        model.head.bias[4] = 50.0
    assert torch.equal(sample_autoregressive(model, 2, 6, bos=0), torch.full((2, 6), 4))


def test_training_on_a_repeating_string_lowers_the_loss() -> None:
    text = "hello world " * 20
    chars = sorted(set(text))
    bos, vocab = len(chars), len(chars) + 1
    ids = torch.tensor([chars.index(c) for c in text])
    torch.manual_seed(0)
    model = TextTransformer(vocab_in=vocab, vocab_out=vocab, width=32, depth=2, heads=2, max_length=16, causal=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        starts = torch.randint(0, len(ids) - 16, (16,), generator=g)
        return torch.stack([ids[s:s + 16] for s in starts.tolist()])  # (16, 16)

    first = ar_loss(model, batch(), bos=bos).item()
    for _ in range(150):
        loss = ar_loss(model, batch(), bos=bos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    final = ar_loss(model, batch(), bos=bos).item()
    assert first > 0.8 * math.log(vocab)
    assert final < 0.2 * math.log(vocab), (first, final)


# --- conditioning ----------------------------------------------------------------------------------
def test_adaln_zero_ignores_time_at_init_and_learns_it() -> None:
    model = _model(time_conditioning=True, time_scale=1000.0).train()
    x, t0, t1 = _tokens(), torch.zeros(B), torch.full((B,), 0.7)
    assert torch.equal(model(x, t0), model(x, t1))
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % V  # zero gates: every block is the identity, so positions do not interact yet
    torch.testing.assert_close(model(y, t0)[:, 1:], model(x, t0)[:, 1:], rtol=0, atol=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    t = torch.rand(B, generator=torch.Generator().manual_seed(0))
    loss = ((model(x, t).mean(dim=(1, 2)) - t) ** 2).mean()  # the target depends on t
    loss.backward()
    opt.step()
    assert (model(x, t0) - model(x, t1)).abs().amax() > 1e-4


def test_labels_change_the_output_and_minus_one_is_the_null_label() -> None:
    model = _model(num_classes=3)
    assert sum(p.numel() for n, p in model.named_parameters() if "time" in n) == 0
    x = _tokens()
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(model(x, labels=labels), model(x))  # adaLN-zero at init
    _randomise_modulations(model)
    out = model(x, labels=labels)
    assert (out - model(x, labels=torch.tensor([1, 2, 0]))).abs().amax() > 1e-3
    null = model(x, labels=torch.full((B,), -1))
    torch.testing.assert_close(model(x), null)
    torch.testing.assert_close(model(x, labels=labels, drop=torch.ones(B, dtype=torch.bool)), null)
    assert (out - null).abs().amax() > 1e-3


def test_time_and_labels_together() -> None:
    model = _model(time_conditioning=True, num_classes=2)
    _randomise_modulations(model)
    x, t = _tokens(), torch.full((B,), 0.5)
    a = model(x, t, torch.tensor([0, 0, 0]))
    assert (a - model(x, t, torch.tensor([1, 1, 1]))).abs().amax() > 1e-3
    assert (a - model(x, t * 0.1, torch.tensor([0, 0, 0]))).abs().amax() > 1e-3


def test_untimed_model_ignores_t_and_has_no_time_parameters() -> None:
    model, x = _model(), _tokens()
    assert model.time_embed is None and model.final_modulation is None
    assert torch.equal(model(x, torch.zeros(B)), model(x, torch.ones(B)))


# --- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["tokens", "vectors"])
@pytest.mark.parametrize("target", ["logits", "vectors"])
def test_shapes(source: str, target: str) -> None:
    ins = {"vocab_in": V} if source == "tokens" else {"input_dim": 5}
    outs = {"vocab_out": 7} if target == "logits" else {"output_dim": 3}
    model = TextTransformer(**ins, **outs, **TINY, time_conditioning=True)
    x = _tokens(length=9) if source == "tokens" else torch.randn(B, 9, 5)
    assert model(x, torch.rand(B)).shape == (B, 9, 7 if target == "logits" else 3)


def test_parameter_count_of_the_reference_size() -> None:
    """Width 256, depth 4, heads 4, V = 100: 4 blocks of 12 D^2 + 13 D weights (attention 4 D^2 + 4 D,
    MLP 8 D^2 + 5 D, two affine LayerNorms 4 D), embedding and head V D (+ V), final LayerNorm 2 D."""
    D, V_, depth = 256, 100, 4
    model = TextTransformer(vocab_in=V_, vocab_out=V_, width=D, depth=depth, heads=4, max_length=256, causal=True)
    expected = depth * (12 * D * D + 13 * D) + 2 * V_ * D + V_ + 2 * D
    assert model.num_parameters() == expected == 3_210_852


# --- Diffusion-LM ----------------------------------------------------------------------------------
def test_embedding_diffusion_lm() -> None:
    torch.manual_seed(0)
    model = EmbeddingDiffusionLM(vocab_size=V, embed_dim=6, width=16, depth=1, heads=2, max_length=16,
                                 num_classes=2, time_scale=1.0).eval()
    tokens = _tokens(length=8)
    e = model.embed(tokens)  # (B, 8, 6)
    assert e.shape == (B, 8, 6)
    assert torch.equal(model.nearest_embedding(e), e)
    assert torch.equal(model.nearest_tokens(e + 1e-3 * torch.randn_like(e)), tokens)
    x = torch.randn(B, 8, 6)
    brute = torch.cdist(x, model.embedding.weight[None].expand(B, -1, -1)).argmin(-1)  # (B, 8)
    assert torch.equal(model.nearest_tokens(x), brute)
    assert model.rounding_logits(x).shape == (B, 8, V)
    torch.testing.assert_close(model.rounding_logits(e)[0, 0], model.embedding.weight @ e[0, 0])
    assert model(x, torch.full((B,), 10.0), torch.tensor([0, 1, -1])).shape == (B, 8, 6)


def test_embedding_diffusion_lm_through_the_gaussian_core() -> None:
    """The Gaussian core calls ``model(x_t, t, **cond)``; classifier-free guidance adds ``drop``."""
    model = EmbeddingDiffusionLM(vocab_size=V, embed_dim=6, width=16, depth=1, heads=2, max_length=16, num_classes=2)
    denoiser = classifier_free_guidance(NetworkDenoiser(model, make_schedule("linear", T=50), "x0"), 2.0)
    x_t = torch.randn(B, 8, 6)
    assert denoiser(x_t, torch.full((B,), 20.0), {"labels": torch.tensor([0, 1, 1])}).shape == (B, 8, 6)


# --- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "message"), [
    ({"vocab_in": V, "input_dim": 4, "vocab_out": V}, "exactly one of vocab_in .* got both"),
    ({"vocab_out": V}, "exactly one of vocab_in .* got neither"),
    ({"vocab_in": V, "vocab_out": V, "output_dim": 4}, "exactly one of vocab_out .* got both"),
    ({"vocab_in": V}, "exactly one of vocab_out .* got neither"),
])
def test_inputs_and_outputs_must_be_exactly_one(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextTransformer(**kw, **TINY)


def test_bad_calls_raise() -> None:
    x = _tokens()
    with pytest.raises(ValueError, match="time-conditioned"):
        _model(time_conditioning=True)(x)
    with pytest.raises(ValueError, match="num_classes=0"):
        _model()(x, labels=torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError, match="max_length"):
        _model()(_tokens(length=TINY["max_length"] + 1))
    with pytest.raises(ValueError, match="token ids"):
        _model()(torch.randn(B, L, 4))
    with pytest.raises(ValueError, match="causal"):
        ar_loss(_model(), x, bos=0)
    with pytest.raises(ValueError, match="causal"):
        token_log_probs(_model(), x)
