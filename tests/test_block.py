"""Block diffusion (difflab.discrete.block): the attention masks, the one-pass bound against its block-by-block
form, its two ends (L' = 1: the exact autoregressive likelihood; L' = L: the masked bound), and the sampler."""

from __future__ import annotations

import pytest
import torch

from difflab.discrete.block import block_causal_mask, block_nelbo, block_training_mask, check_blocks, sample_block
from difflab.discrete.masked import masked_count_nelbo, subs_log_probs, token_nll
from difflab.discrete.samplers import SampleStats
from difflab.discrete.schedules import token_schedule
from difflab.errors import UserError
from difflab.models.text_transformer import TextTransformer
from difflab.tasks.text_methods import block_call, network_call

V, L = 7, 8
MASK = V


@pytest.fixture(scope="module")
def net() -> TextTransformer:
    torch.manual_seed(0)
    model = TextTransformer(vocab_in=V + 1, vocab_out=V + 1, width=16, depth=2, heads=2, max_length=L).eval()
    with torch.no_grad():  # larger weights than the init, so that every position's logits depend on the context
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_the_masks_read_what_block_diffusion_allows():
    causal = block_causal_mask(4, 2)
    assert causal.tolist() == [[True, True, False, False], [True, True, False, False],
                               [True, True, True, True], [True, True, True, True]]
    m = block_training_mask(4, 2).int()  # rows: x_t 0..3, x0 0..3; columns the same
    assert m[:4, :4].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]  # noised: own block
    assert m[:4, 4:].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]  # clean: earlier blocks
    assert m[4:, :4].sum() == 0 and torch.equal(m[4:, 4:].bool(), causal)  # the clean half: block-causal


def test_the_one_pass_logits_are_each_blocks_logits_given_the_clean_blocks_before_it(net):
    """The training pass on [x_t ; x0] gives, for the noised block b, what sampling computes from the clean
    blocks before b followed by that noised block (the vectorised training of BD3-LM, Sec. 3.2)."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, V, (3, L), generator=g)
    x_t = torch.where(torch.rand(3, L, generator=g) < 0.5, MASK, x0)
    block, call = 4, block_call(net)
    with torch.no_grad():
        one_pass = call(torch.cat([x_t, x0], 1), torch.arange(L).repeat(2), block_training_mask(L, block), None)
        for b in range(L // block):
            N = (b + 1) * block
            seq = torch.cat([x0[:, :b * block], x_t[:, b * block:N]], 1)  # (B, N)
            alone = call(seq, torch.arange(N), block_causal_mask(N, block), None)[:, -block:]
            torch.testing.assert_close(one_pass[:, b * block:N], alone, atol=1e-5, rtol=1e-4)


def test_block_size_one_is_the_exact_left_to_right_likelihood(net):
    """L' = 1: each block is one token, always masked, weight 1: -sum_i log p(x_i | x_<i) whatever the draws."""
    x0 = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(2))
    call = block_call(net)
    with torch.no_grad():
        bounds = [block_nelbo(call, x0, MASK, 1, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
        exact = torch.zeros(2)
        for i in range(L):
            seq = torch.cat([x0[:, :i], torch.full((2, 1), MASK)], 1)  # (B, i + 1)
            logits = call(seq, torch.arange(i + 1), block_causal_mask(i + 1, 1), None)[:, -1:]
            exact += token_nll(subs_log_probs(logits, seq[:, -1:], MASK), x0[:, i:i + 1])[:, 0]
    torch.testing.assert_close(bounds[0], bounds[1])
    torch.testing.assert_close(bounds[0], exact, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_one_block_is_the_masked_bound_with_the_same_draws(net, gamma):
    """L' = L: the noised half reads only itself, so the bound is masked_count_nelbo's, draw for draw."""
    x0 = torch.randint(0, V, (5, L), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        block = block_nelbo(block_call(net), x0, MASK, L, generator=torch.Generator().manual_seed(4), gamma=gamma)
        masked = masked_count_nelbo(network_call(net), x0, MASK, generator=torch.Generator().manual_seed(4),
                                    gamma=gamma)
    torch.testing.assert_close(block, masked, atol=1e-4, rtol=1e-5)


def test_the_bound_is_unbiased_for_its_block_by_block_form(net):
    """The mean over many draws of the one-pass estimate matches the block-by-block sum of masked bounds (each
    block's any-order bound given the clean blocks before it), computed exactly over every count."""
    from itertools import combinations

    x0 = torch.randint(0, V, (1, L), generator=torch.Generator().manual_seed(5))
    block, call = 4, block_call(net)
    with torch.no_grad():
        exact = 0.0
        for b in range(L // block):
            N = (b + 1) * block
            for k in range(1, block + 1):  # E_k E_{|M|=k} (L'/k) sum_{i in M} -log p, k ~ U{1..L'}
                subsets = list(combinations(range(block), k))
                total = 0.0
                for subset in subsets:
                    x_t = x0[:, b * block:N].clone()
                    x_t[0, list(subset)] = MASK
                    seq = torch.cat([x0[:, :b * block], x_t], 1)
                    log_p = subs_log_probs(call(seq, torch.arange(N), block_causal_mask(N, block), None)[:, -block:],
                                           x_t, MASK)
                    total += float(torch.where(x_t == MASK, token_nll(log_p, x0[:, b * block:N]), 0.0).sum())
                exact += (1 / block) * (block / k) * total / len(subsets)
        g = torch.Generator().manual_seed(6)
        draws = torch.cat([block_nelbo(call, x0.expand(500, L), MASK, block, generator=g) for _ in range(4)])
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / len(draws) ** 0.5


def test_sampling_keeps_a_prefix_and_calls_the_network_per_block(net):
    schedule = token_schedule("log-linear", 1e-3)
    given = torch.zeros(2, L, dtype=torch.bool)
    given[:, :3] = True
    tokens = torch.tensor([[1, 2, 3] + [0] * 5, [4, 5, 6] + [0] * 5])
    stats = SampleStats()
    with torch.no_grad():
        x = sample_block(block_call(net), (2, L), schedule, 8, MASK, 4, fixed=(given, tokens),
                         generator=torch.Generator().manual_seed(0), stats=stats)
    assert x.shape == (2, L) and torch.equal(x[:, :3], tokens[:, :3]) and int(x.max()) < V and int(x.min()) >= 0
    assert 1 <= stats.model_calls <= 2 * 4  # two blocks of 4 steps each, calls saved where nothing changed


def test_a_block_size_that_does_not_divide_the_length_is_one_line():
    assert check_blocks(256, 16) == 16
    with pytest.raises(UserError, match="text.block_size 5 must divide text.length 8"):
        check_blocks(8, 5)
