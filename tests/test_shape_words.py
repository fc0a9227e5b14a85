"""The held-out vocabulary of captioned shapes (issue 17): held-out words never reach a training caption."""

import numpy as np
import pytest

from difflab.data.shape_words import (HELD_OUT_WORDS, SLOTS, SPLITS, TEMPLATES, WORDS, all_captions, parse_prompt,
                                      phrase, prompts, words_of)
from difflab.data.shapes import ATTRIBUTES, all_attributes, caption

COMBOS = [tuple(int(i) for i in a) for a in all_attributes()]  # the 320 attribute combinations


def test_the_grammar_is_the_first_training_phrase_and_template():
    for slot in SLOTS:
        assert [v["train"][0] for v in WORDS[slot]] == list(ATTRIBUTES[slot])
    attrs = (1, 0, 2, 4)
    assert TEMPLATES["train"][0].format(**{s: ATTRIBUTES[s][i] for s, i in zip(SLOTS, attrs)}) == caption(attrs)


def test_every_value_has_phrases_in_every_split():
    for slot in SLOTS:
        assert len(WORDS[slot]) == len(ATTRIBUTES[slot])
        for value in WORDS[slot]:
            assert all(value[split] for split in SPLITS)


def test_held_out_words_never_occur_in_any_training_caption():
    train_words = set().union(*(words_of(c) for a in COMBOS for c in all_captions(a, "train")))
    for split, held in HELD_OUT_WORDS.items():
        assert not held & train_words, f"{split} words in training captions: {sorted(held & train_words)}"


@pytest.mark.parametrize("split", ["validation", "test"])
def test_every_held_out_phrase_and_template_has_a_held_out_word(split):
    held = HELD_OUT_WORDS[split]
    for slot in SLOTS:
        for value in WORDS[slot]:
            for p in value[split]:
                assert words_of(p) & held, f"{split} phrase {p!r} has no word of HELD_OUT_WORDS[{split!r}]"
    for t in TEMPLATES[split]:
        literal = t.format(**{s: "" for s in SLOTS})
        assert words_of(literal) & held, f"{split} template {t!r} has no held-out word"
    train_phrases = {p for slot in SLOTS for value in WORDS[slot] for p in value["train"]}
    assert not train_phrases & {p for slot in SLOTS for value in WORDS[slot] for p in value[split]}


def test_no_phrase_names_two_values():
    for slot in SLOTS:
        seen: dict[str, int] = {}
        for i, value in enumerate(WORDS[slot]):
            for p in (p for split in SPLITS for p in value[split]):
                assert seen.setdefault(p, i) == i, f"{p!r} names two {slot} values"


@pytest.mark.parametrize("split", SPLITS)
def test_every_caption_of_every_split_parses_back_to_its_attributes(split):
    for a in COMBOS[::7]:
        for c in all_captions(a, split):
            assert parse_prompt(c) == tuple(a), c
    assert parse_prompt("A huge crimson ROUND shape near the  top-left edge.") == (1, 0, 0, 0)
    assert parse_prompt("a large red circle at the top left") == (1, 0, 0, 0)
    assert parse_prompt("a large red elephant at the top left") is None


def test_prompts_use_only_their_split_and_are_reproducible():
    attrs = np.array(COMBOS)[np.random.default_rng(0).integers(0, len(COMBOS), 200)]
    test = prompts(attrs, "test", seed=3)
    assert test == prompts(attrs, "test", seed=3)
    train_words = set().union(*(words_of(c) for c in prompts(attrs, "train", seed=3)))
    assert all(words_of(p) & HELD_OUT_WORDS["test"] for p in test)
    assert not train_words & HELD_OUT_WORDS["test"]
    assert [parse_prompt(p) for p in test] == [tuple(a) for a in attrs]
    with pytest.raises(ValueError, match="unknown vocabulary split"):
        phrase(attrs[0], "dev", np.random.default_rng(0))


def test_only_narrows_each_value_to_the_given_phrases():
    only = {slot: [WORDS[slot][i]["test"][:1] for i in range(len(ATTRIBUTES[slot]))] for slot in SLOTS}
    attrs = np.array(COMBOS)[:40]
    narrowed = prompts(attrs, "test", seed=1, only=only)
    allowed = set().union(*(words_of(p[0]) for vs in only.values() for p in vs))
    template_words = set().union(*(words_of(t.replace("{", " ").replace("}", " ")) for t in TEMPLATES["test"]))
    assert all(words_of(p) <= allowed | template_words | {"a", "an"} for p in narrowed)
    assert [parse_prompt(p) for p in narrowed] == [tuple(a) for a in attrs]
    only["color"] = [[] for _ in ATTRIBUTES["color"]]
    with pytest.raises(ValueError, match="no test phrase of color"):
        prompts(attrs, "test", seed=1, only=only)
