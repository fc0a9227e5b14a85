"""The UNet denoiser and its building blocks: shapes, conditioning semantics, trainability."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from difflab.errors import UserError
from difflab.models.unet import UNet, count_parameters
from difflab.nn import SpatialAttention, timestep_embedding

TINY = dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,), num_heads=2)
K, D_CTX, L = 5, 8, 6  # classes, context width, context length of the conditional tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny ops run faster on one thread; two threads on busy shared cores spin for seconds per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw: object) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**TINY, "in_channels": 3, **kw})


def perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every weight off its (often zero) init, so conditioning paths actually matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def batch(B: int = 2, C: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, C, size, size, generator=g), torch.rand(B, generator=g) * 999


def conditional() -> UNet:
    return perturb(tiny(num_classes=K, context_dim=D_CTX))


# -- embeddings and attention ---------------------------------------------------------------
def test_timestep_embedding_is_cos_sin_of_float_time() -> None:
    t = torch.tensor([0.0, 2.5])
    emb = timestep_embedding(t, 7)
    assert emb.shape == (2, 7)
    assert torch.equal(emb[0, :3], torch.ones(3)) and torch.equal(emb[0, 3:], torch.zeros(4))
    assert emb[1, 0] == pytest.approx(torch.cos(torch.tensor(2.5)).item())  # w_0 = 1
    assert not torch.allclose(timestep_embedding(torch.tensor([2.0]), 8), timestep_embedding(torch.tensor([2.5]), 8))


def test_fresh_attention_is_identity() -> None:
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(SpatialAttention(16, 2)(x), x)
    cross = SpatialAttention(16, 2, context_dim=D_CTX)
    assert torch.equal(cross(x, torch.randn(2, L, D_CTX)), x)


# -- shapes and sizes -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shape(channels: int, size: int) -> None:
    x, t = batch(C=channels, size=size)
    with torch.no_grad():
        assert tiny(in_channels=channels)(x, t).shape == x.shape


def test_out_channels() -> None:
    x, t = batch()
    with torch.no_grad():
        assert tiny(out_channels=6)(x, t).shape == (2, 6, 8, 8)


def test_fractional_time_changes_the_output() -> None:
    model, (x, _) = perturb(tiny()), batch()
    with torch.no_grad():
        a = model(x, torch.tensor([10.0, 10.0]))
        b = model(x, torch.tensor([10.5, 10.5]))
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_non_divisible_size_raises() -> None:
    x = torch.randn(1, 3, 30, 30)
    with pytest.raises(UserError, match="divisible by 4"):
        tiny()(x, torch.zeros(1))


@pytest.mark.parametrize("kw", [dict(base_channels=12), dict(attention_levels=(3,))])
def test_bad_config_raises(kw: dict) -> None:
    with pytest.raises(UserError):
        tiny(**kw)


# -- zero init and training -------------------------------------------------------------------
def test_zero_init_output_then_trains() -> None:
    model, (x, t) = tiny(in_channels=1, channel_mult=(1, 2), attention_levels=(1,)), batch(B=4, C=1)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model(x, t), torch.zeros_like(x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) == 1:
            assert model(x, t).abs().max() > 0
    assert losses[-1] < 0.8 * losses[0]


# -- conditioning -------------------------------------------------------------------------
def test_class_conditioning_changes_output() -> None:
    model, (x, t) = conditional(), batch()
    with torch.no_grad():
        a = model(x, t, labels=torch.tensor([0, 1]))
        b = model(x, t, labels=torch.tensor([2, 3]))
    assert not torch.allclose(a, b)


def test_drop_all_equals_no_labels() -> None:
    model, (x, t) = conditional(), batch()
    with torch.no_grad():
        dropped = model(x, t, labels=torch.tensor([0, 1]), drop=torch.tensor([True, True]))
        assert torch.equal(dropped, model(x, t))
        half = model(x, t, labels=torch.tensor([0, 1]), drop=torch.tensor([False, True]))
    assert torch.equal(half[1], dropped[1]) and not torch.allclose(half[0], dropped[0])


def test_labels_on_unconditional_model_raise() -> None:
    x, t = batch()
    with pytest.raises(ValueError, match="num_classes"):
        tiny()(x, t, labels=torch.tensor([0, 1]))


def test_context_mask_hides_padding() -> None:
    model, (x, t) = conditional(), batch()
    ctx = torch.randn(2, L, D_CTX)
    mask = torch.arange(L)[None] < torch.tensor([[3], [5]])  # (B, L): 3 and 5 valid tokens
    padded, valid = ctx.clone(), ctx.clone()
    padded[0, 3:] += 1.0
    padded[1, 5:] += 1.0
    valid[0, 0] += 1.0
    with torch.no_grad():
        ref = model(x, t, context=ctx, context_mask=mask)
        assert torch.allclose(model(x, t, context=padded, context_mask=mask), ref, atol=1e-6)
        changed = model(x, t, context=valid, context_mask=mask)
    assert not torch.allclose(changed[0], ref[0]) and torch.allclose(changed[1], ref[1], atol=1e-6)


def test_dropped_context_equals_null_context() -> None:
    model, (x, t) = conditional(), batch()
    ctx, mask = torch.randn(2, L, D_CTX), torch.tensor([[True] * 2 + [False] * (L - 2)] * 2)
    with torch.no_grad():
        null = model(x, t)
        dropped = model(x, t, context=ctx, context_mask=mask, drop=torch.tensor([True, True]))
        assert torch.allclose(dropped, null, atol=1e-5)
        kept = model(x, t, context=ctx, context_mask=mask)
        empty = model(x, t, context=ctx, context_mask=torch.zeros(2, L, dtype=torch.bool))
    assert not torch.allclose(kept, null, atol=1e-3)
    assert torch.allclose(empty, null, atol=1e-5)  # no valid token = null context


@pytest.mark.parametrize("drop", [[False, True], [False, False]])
def test_gradients_reach_every_parameter(drop: list[bool]) -> None:
    """Every parameter takes part in every step (DDP without find_unused_parameters)."""
    model, (x, t) = conditional().train(), batch()
    out = model(x, t, labels=torch.tensor([0, 4]), context=torch.randn(2, L, D_CTX),
                context_mask=torch.tensor([[True] * L, [True] * 2 + [False] * (L - 2)]), drop=torch.tensor(drop))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    if drop[1]:  # the null token was used, so even it gets a nonzero gradient
        silent = [n for n, p in model.named_parameters() if not p.grad.any()]
        assert not silent
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
