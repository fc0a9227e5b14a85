"""Measures of generated and held-out text (``task: text``).

=========================  =================================================================================
measure                    meaning
=========================  =================================================================================
bits per character         -log2 p(text) / characters: exact for the autoregressive baseline, an upper bound
                           (the ELBO) for the diffusion methods; per token / :func:`chars_per_token` with BPE
generative perplexity      exp(mean token NLL) of samples under an autoregressive model of the same data (a
                           separate judge; Lou et al. 2024, Sahoo et al. 2024), reported as its bits/char too
unigram entropy            entropy (bits) of the characters of all samples together: a collapse into
                           repetitive text lowers it while keeping the judge's perplexity low (Zheng et al. 2024)
distinct-n                 distinct n-grams (words) / all n-grams of the samples (Li et al. 2016)
=========================  =================================================================================
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

LN2 = math.log(2)
DISTINCT_N = (1, 2, 3)  # word n-gram orders of distinct-n


def bits(nats: float) -> float:
    """Nats -> bits."""
    return nats / LN2


def bits_per_char(total_nats: float, characters: int) -> float:
    """A negative log-likelihood (nats, summed over a text) per character of that text, in bits."""
    if characters <= 0:
        raise ValueError("bits per character of an empty text")
    return total_nats / (characters * LN2)


def unigram_entropy(texts: Sequence[str]) -> float:
    """Entropy in bits of the character distribution of ``texts`` together (0 for no characters)."""
    counts = Counter(c for text in texts for c in text)
    total = sum(counts.values())
    return -sum(k / total * math.log2(k / total) for k in counts.values()) if total else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams over ``texts`` (each split on whitespace); 0 when there are none."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = text.split()
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """``unigram_entropy`` and ``distinct_1`` .. ``distinct_3`` of ``texts``."""
    return {"unigram_entropy": unigram_entropy(texts), **{f"distinct_{n}": distinct_n(texts, n) for n in DISTINCT_N}}


__all__ = ["DISTINCT_N", "bits", "bits_per_char", "distinct_n", "diversity", "unigram_entropy"]
