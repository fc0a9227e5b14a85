"""The held-out vocabulary of captioned shapes: other words for each attribute value, other sentences.

The grammar says "a large red circle at the top left"; a user types "a huge crimson round shape near the
top-left edge". To measure whether a text-to-image model follows words its captions never used, every phrase
of an attribute value and every sentence template belongs to exactly one split, fixed here once:

* ``train``: training captions may use them (with ``data.captions: paraphrase``); the grammar's own word of
  each value and its template are among them;
* ``validation``: never in a training caption; settings are chosen on prompts made only of them;
* ``test``: never in a training caption nor used to choose anything; the figure that is reported.

:data:`HELD_OUT_WORDS` names, per held-out split, the words that occur in no training caption (the test checks
it over every caption the train split can make); every held-out phrase and template contains at least one of
them (position phrases share "top", "left", ... with training, as any rephrasing of a place must).
:func:`parse_prompt` reads a prompt of any split back into its attribute values, so the attribute classifier
can score images drawn for any of them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np

from difflab.data.shapes import ATTRIBUTES, all_attributes, caption

SPLITS = ("train", "validation", "test")
SLOTS = ("size", "color", "shape", "position")  # the order of ATTRIBUTES in difflab.data.shapes

# attribute -> value index (as difflab.data.shapes.ATTRIBUTES) -> split -> phrases; train[0] is the grammar's
WORDS: dict[str, tuple[dict[str, tuple[str, ...]], ...]] = {
    "size": (
        {"train": ("small", "little", "compact"), "validation": ("tiny",), "test": ("miniature", "petite")},
        {"train": ("large", "big", "giant"), "validation": ("enormous",), "test": ("huge", "massive")},
    ),
    "color": (
        {"train": ("red", "scarlet", "cherry"), "validation": ("ruby",), "test": ("crimson", "vermilion")},
        {"train": ("green", "lime", "leafy"), "validation": ("emerald",), "test": ("jade", "verdant")},
        {"train": ("blue", "navy", "indigo"), "validation": ("azure",), "test": ("sapphire", "cobalt")},
        {"train": ("yellow", "canary", "sunny"), "validation": ("lemon",), "test": ("golden", "mustard")},
        {"train": ("magenta", "pink", "purple"), "validation": ("orchid",), "test": ("fuchsia", "violet")},
        {"train": ("cyan", "aqua", "turquoise"), "validation": ("aquamarine",), "test": ("teal",)},
        {"train": ("white", "snowy", "milky"), "validation": ("chalk",), "test": ("ivory", "pearl")},
        {"train": ("orange", "tangerine", "apricot"), "validation": ("carrot",), "test": ("pumpkin", "amber")},
    ),
    "shape": (
        {"train": ("circle", "disc", "ball"), "validation": ("dot",), "test": ("round shape", "orb")},
        {"train": ("square", "box", "rectangle"), "validation": ("tile",), "test": ("block", "cube")},
        {"train": ("triangle", "pyramid", "wedge"), "validation": ("cone",), "test": ("triangular shape", "arrowhead")},
        {"train": ("cross", "cruciform"), "validation": ("crosshair",), "test": ("plus sign", "plus symbol")},
    ),
    "position": tuple(
        {"train": (f"at the {v} {h}", f"in the {u} {h}"), "validation": (f"in the {v}-{h} corner",),
         "test": (f"near the {v}-{h} edge", f"{hi} on the {h}")}
        for v, u, hi, h in (("top", "upper", "high up", "left"), ("top", "upper", "high up", "right"),
                            ("bottom", "lower", "low down", "left"), ("bottom", "lower", "low down", "right"))
    ) + ({"train": ("in the center", "in the middle"), "validation": ("at the centre",),
          "test": ("at the midpoint", "in the central spot")},),
}

TEMPLATES: dict[str, tuple[str, ...]] = {  # {size} {color} {shape} {position}; train[0] is the grammar's
    "train": ("a {size} {color} {shape} {position}", "{position}, a {size} {color} {shape}",
              "one {size} {color} {shape} {position}", "the {size} {color} {shape} {position}"),
    "validation": ("a picture of a {size} {color} {shape} {position}",),
    "test": ("there is a {size} {color} {shape} {position}", "an image showing a {size} {color} {shape} {position}",
             "{position} sits a {size} {color} {shape}"),
}

HELD_OUT_WORDS: dict[str, frozenset[str]] = {  # words of each held-out split that no training caption contains
    "validation": frozenset("tiny enormous ruby emerald azure lemon orchid aquamarine chalk carrot dot tile cone "
                            "crosshair corner centre picture of".split()),
    "test": frozenset("miniature petite huge massive crimson vermilion jade verdant sapphire cobalt golden mustard "
                      "fuchsia violet teal ivory pearl pumpkin amber round shape orb block cube triangular arrowhead "
                      "plus sign symbol near edge high up low down on midpoint central spot there is an image "
                      "showing sits".split()),
}

__all__ = ["SPLITS", "WORDS", "TEMPLATES", "HELD_OUT_WORDS", "Phrases", "phrase", "prompts", "paraphrases",
           "parse_prompt", "words_of", "vocabulary"]


def _article(text: str) -> str:
    """'a' before a vowel -> 'an' ("an enormous ..."), the way a person writes it."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


Phrases = Mapping[str, Sequence[Sequence[str]]]  # slot -> value index -> phrases to draw from


def phrase(attrs: Sequence[int], split: str, rng: np.random.Generator, only: Phrases | None = None) -> str:
    """A caption of ``attrs`` (size, color, shape, position indices) made only of ``split``'s template and
    phrases, each drawn uniformly with ``rng``; ``only`` narrows the phrases of each value (a subset of the
    split's)."""
    if split not in SPLITS:
        raise ValueError(f"unknown vocabulary split {split!r}: use one of {', '.join(SPLITS)}")
    template = TEMPLATES[split][rng.integers(len(TEMPLATES[split]))]
    fill = {}
    for slot, i in zip(SLOTS, attrs, strict=True):
        options = WORDS[slot][int(i)][split] if only is None else only[slot][int(i)]
        if not options:
            raise ValueError(f"no {split} phrase of {slot} {ATTRIBUTES[slot][int(i)]!r} to draw from")
        fill[slot] = options[rng.integers(len(options))]
    return _article(template.format(**fill))


def prompts(attrs: np.ndarray, split: str, seed: int, only: Phrases | None = None) -> list[str]:
    """One caption per row of ``attrs`` (N, 4) in ``split``'s words (:func:`phrase`), reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    return [phrase(a, split, rng, only) for a in np.asarray(attrs, dtype=np.int64).reshape(-1, len(SLOTS))]


def all_captions(attrs: Sequence[int], split: str) -> list[str]:
    """Every caption ``split``'s templates and phrases can make of ``attrs`` (for the disjointness check)."""
    options = [WORDS[slot][int(i)][split] for slot, i in zip(SLOTS, attrs, strict=True)]
    return [_article(t.format(**dict(zip(SLOTS, words, strict=True))))
            for t in TEMPLATES[split] for words in itertools.product(*options)]


def words_of(text: str) -> set[str]:
    """The lower-case words of a caption ("top-left" is two words)."""
    return set(re.findall(r"[a-z]+", text.lower()))


def _pattern() -> tuple[list[re.Pattern[str]], dict[str, dict[str, int]]]:
    """Per template (all splits) a regular expression with one named group per slot, and phrase -> value."""
    value = {slot: {p: i for i, splits in enumerate(WORDS[slot]) for ps in splits.values() for p in ps}
             for slot in SLOTS}
    groups = {slot: "|".join(re.escape(p) for p in sorted(value[slot], key=len, reverse=True)) for slot in SLOTS}
    patterns = []
    for t in (t for split in SPLITS for t in TEMPLATES[split]):
        parts = re.split(r"\{(\w+)\}", t)  # literal, slot, literal, ...
        body = "".join(f"(?P<{part}>{groups[part]})" if k % 2 else
                       " ".join("an?" if w == "a" else re.escape(w) for w in part.split(" "))
                       for k, part in enumerate(parts))
        patterns.append(re.compile(body))
    return patterns, value


_PATTERNS, _VALUE = _pattern()


def parse_prompt(text: str) -> tuple[int, int, int, int] | None:
    """``(size, color, shape, position)`` of a prompt in any split's words and templates (case, spacing and a
    final full stop free), else None."""
    norm = " ".join(text.lower().strip().rstrip(".").split())
    for pattern in _PATTERNS:
        if m := pattern.fullmatch(norm):
            return tuple(_VALUE[slot][m.group(slot)] for slot in SLOTS)  # type: ignore[return-value]
    return None


def vocabulary() -> dict[str, object]:
    """The split as data (printed and stored by the benchmark, so anyone can check it)."""
    return {"words": {slot: {ATTRIBUTES[slot][i]: dict(splits) for i, splits in enumerate(WORDS[slot])}
                      for slot in SLOTS},
            "templates": {k: list(v) for k, v in TEMPLATES.items()},
            "held_out_words": {k: sorted(v) for k, v in HELD_OUT_WORDS.items()}}


def paraphrases(k: int, seed: int = 0) -> list[list[str]]:
    """``k`` training captions of each of the 320 attribute combinations (in ``np.ndindex`` order): the grammar's
    caption first, then ``k - 1`` drawn from the train split's templates and phrases (:func:`phrase`)."""
    rng = np.random.default_rng(seed)
    return [[caption(a), *(phrase(a, "train", rng) for _ in range(k - 1))]
            for a in all_attributes()]
