"""ROUGE-L between short texts, and an index that finds a near-duplicate of a text among thousands (Self-Instruct's
filter: Wang et al. 2022 drop a new instruction whose ROUGE-L against any earlier one is above 0.7). No dependency.

Texts are lowercased and split into word tokens (runs of letters and digits, any script: ``\\w+``, underscore
aside). ROUGE-L's F-measure of two token lists of lengths m and n with a longest common subsequence of length l is
``2·l / (m + n)`` (precision l/m, recall l/n, β = 1), the value of ``rouge_score``'s ``fmeasure`` without stemming.

The longest common subsequence is Hyyrö's bit-parallel algorithm (one big-integer step per token of the second
text, the first text's position masks built once per query), and the index skips most of the pool without
computing it: since l ≤ min(m, n), F ≤ 2·min(m, n)/(m + n), so only texts whose length is within a factor of the
threshold can be near-duplicates (at 0.7: from 0.54·m to 1.86·m tokens); the search stops at the first one found.
A query against 5,000 texts of 5 to 40 words takes about 25 ms on one core.

    rouge_l("The cat sat on the mat", "the cat is on the mat")   # → 0.8333...
    index = RougeIndex(["Write a poem about the sea."]); index.near_duplicate("Write a poem about the sea now", 0.7)
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lowercased word tokens.

    >>> tokens("Hello, World! It's 2 o'clock_now")
    ['hello', 'world', 'it', 's', '2', 'o', 'clock', 'now']
    """
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (Hyyrö 2004, bit-parallel over ``a``).

    >>> lcs_length("a b c d e".split(), "a c e x".split())
    3
    """
    return _lcs_with_masks(_masks(a), len(a), b)


def _masks(a: list[str]) -> dict[str, int]:
    """For each token of ``a``, the bit set of its positions."""
    masks: dict[str, int] = {}
    for position, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def _lcs_with_masks(masks: dict[str, int], m: int, b: list[str]) -> int:
    """LCS length of a text of ``m`` tokens (given by its position masks) and ``b``: one step per token of ``b``,
    V ← (V + U) | (V − U) with U = V & match(token); the LCS is the number of zero bits of V."""
    full = (1 << m) - 1
    v = full
    for token in b:
        match = masks.get(token)
        if match:
            u = v & match
            v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def f_measure(lcs: int, m: int, n: int) -> float:
    return 2 * lcs / (m + n) if m + n else 0.0


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts (symmetric).

    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 4)
    0.8333
    """
    ta, tb = tokens(a), tokens(b)
    return f_measure(lcs_length(ta, tb), len(ta), len(tb))


def length_bound(m: int, n: int) -> float:
    """The largest ROUGE-L F two texts of m and n tokens can have: 2·min(m, n)/(m + n)."""
    return f_measure(min(m, n), m, n)


class RougeIndex:
    """Texts to compare new ones with, bucketed by their number of tokens.

    :meth:`near_duplicate` returns the first text whose ROUGE-L against a new one is above a threshold, looking only
    at the lengths where that is possible (nearest lengths first).
    """

    def __init__(self, texts=()):
        self.texts: list[str] = []
        self._by_length: dict[int, list[tuple[int, list[str]]]] = {}
        self.comparisons = 0  # LCS computations made (the bounds skip the rest): for tests and logs
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> int:
        """Add a text; its position in :attr:`texts`."""
        words = tokens(text)
        self.texts.append(text)
        self._by_length.setdefault(len(words), []).append((len(self.texts) - 1, words))
        return len(self.texts) - 1

    def near_duplicate(self, text: str, threshold: float) -> tuple[int, float] | None:
        """``(position, score)`` of a text of the index whose ROUGE-L against ``text`` is above ``threshold``
        (the first found), or None. An empty text has no words to compare and is no one's duplicate."""
        words = tokens(text)
        m = len(words)
        if not m:
            return None
        masks = _masks(words)
        for n in self._candidate_lengths(m, threshold):
            for position, other in self._by_length[n]:
                self.comparisons += 1
                score = f_measure(_lcs_with_masks(masks, m, other), m, n)
                if score > threshold:
                    return position, score
        return None

    def _candidate_lengths(self, m: int, threshold: float) -> list[int]:
        """The lengths n whose bound 2·min(m, n)/(m + n) is above the threshold (closest to m first)."""
        return sorted(
            (n for n in self._by_length if n and length_bound(m, n) > threshold), key=lambda n: (abs(n - m), n)
        )
