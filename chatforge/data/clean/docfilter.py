"""Document-level quality rules (Gopher / FineWeb style), language-aware: Chinese documents are measured in
Han characters and character n-grams, English ones in words and word n-grams.

    reason = document_reason(text)     # None = keep; else "too_short", "repetition", "no_stopwords", ...

Rules (thresholds from Gopher's MassiveWeb rules, loosened where the built-in world's short, clean documents
need it):
- too short: < 5 English words or < 10 Han characters;
- mojibake: UTF-8 read as Latin-1 (any telltale sequence such as "â€" or "å\\x8d");
- symbols: '#' / '…' per word > 0.1; bullet-start lines > 90%; lines ending in '…' > 30%;
- English prose: mean word length outside 2.5..10; fewer than 2 distinct English function words in ≥ 20
  words (keyword soup, spam) — code-like documents are exempt from these two;
- repetition (both languages): duplicate lines > 30% of lines; in documents of ≥ 50 units, the most
  frequent 2-gram covering > 20% of the text or duplicated 5-grams covering > 35% (words for English; for
  Chinese, characters: 4-grams and 10-grams); fewer than 25 distinct units among the first 100 (keyword
  soup in any language mix).
"""

from __future__ import annotations

import re
from collections import Counter

from chatforge.data.clean.text import han_count, is_chinese, mojibake_count, words

STOPWORDS = frozenset("the a an is are was were be been of to in on at by for from with and or but not that this "
                      "it its as so do does did has have had how many what who which there their they he she we "
                      "you i his her".split())
_CODE = re.compile(r"[=(){}\[\];:<>]|^\s*(?:def|class|import|return|for|if|while|function|var|let|const)\b",
                   re.MULTILINE)


def looks_like_code(text: str) -> bool:
    lines = [line for line in text.split("\n") if line.strip()]
    return bool(lines) and sum(bool(_CODE.search(line)) for line in lines) / len(lines) >= 0.5


def _units(text: str, zh: bool) -> list[str]:
    """Words for English, Han characters (and words between them) for Chinese."""
    if zh:
        return re.findall(r"[\u3400-\u9fff]|[A-Za-z]+|\d+", text)
    return [w.lower() for w in words(text)]


def _top_ngram_coverage(units: list[str], n: int) -> float:
    grams = [" ".join(units[i:i + n]) for i in range(len(units) - n + 1)]
    if not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    return count * len(gram.replace(" ", "")) / max(1, sum(len(u) for u in units))


def _dup_ngram_coverage(units: list[str], n: int) -> float:
    """Share of units inside an n-gram that occurs more than once."""
    if len(units) < n:
        return 0.0
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(units)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(covered) / len(units)


def document_reason(text: str) -> str | None:
    zh = is_chinese(text)
    ws = words(text)
    if mojibake_count(text):  # telltale sequences never occur in clean English or Chinese text
        return "mojibake"
    han = han_count(text)
    if (han < 10) if zh else (len(ws) < 5):
        return "too_short"
    lines = [line for line in text.split("\n") if line.strip()]
    n_units = max(1, len(ws) + han)
    if (text.count("#") + text.count("…")) / n_units > 0.1:
        return "symbols"
    if lines and sum(line.lstrip().startswith(("•", "-", "*", "·")) for line in lines) / len(lines) > 0.9:
        return "bullets"
    if lines and sum(line.rstrip().endswith(("…", "...")) for line in lines) / len(lines) > 0.3:
        return "ellipsis_lines"
    if not zh and not looks_like_code(text):
        mean_len = sum(map(len, ws)) / len(ws)
        if not 2.5 <= mean_len <= 10:
            return "word_length"
        if len(ws) >= 20 and len({w.lower() for w in ws} & STOPWORDS) < 2:
            return "no_stopwords"
    if len(lines) >= 3 and 1 - len(set(lines)) / len(lines) > 0.3:
        return "duplicate_lines"
    units = _units(text, zh)
    if len(units) >= 50 and len(set(units[:100])) / len(units[:100]) < 0.25:
        return "low_diversity"  # keyword soup: a handful of words over and over, in any language
    # Chinese units are characters: a 2-word phrase is ~4 of them, Gopher's 5-word span ~10. Short documents
    # are exempt: a 30-character entry that names its subject three times is not repetitive.
    top_n, dup_n = (4, 10) if zh else (2, 5)
    if len(units) >= 50 and (_top_ngram_coverage(units, top_n) > 0.2 or _dup_ngram_coverage(units, dup_n) > 0.35):
        return "repetition"
    return None
