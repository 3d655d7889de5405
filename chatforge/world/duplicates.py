"""Ground truth for near-duplicate detection: which of the world's documents are copies of one another.

    groups = duplicate_groups(texts, threshold=0.8)   # {index: group id} for texts in a group of >= 2

A templated world repeats itself by nature (the same story drawn twice, two news items that differ only in
the year), not only through its labelled reposts. Scoring a deduplicator's precision against the reposts
alone would count every such natural copy as a false verdict, so the world labels them too, exactly:
two texts belong together when their canonical forms are equal or their 5-gram shingle sets (the units of
`chatforge.data.clean.dedup`) have Jaccard >= threshold — the definition the deduplicator approximates with
MinHash. All pairs are found without approximation by prefix filtering (Chaudhuri et al., 2006; Bayardo et
al., 2007): order shingles rarest first; two sets with Jaccard >= t must share one of the first
|S| - ceil(t |S|) + 1 shingles of each, so only pairs sharing such a prefix shingle are compared, and each
such pair is compared exactly. Groups are the connected components of those pairs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from chatforge.data.clean.dedup import canonical, shingle_hashes


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def similar_pairs(sets: list[frozenset], threshold: float) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, with Jaccard(sets[i], sets[j]) >= threshold, found exactly."""
    freq = Counter(x for s in sets for x in s)
    index: dict[int, list[int]] = defaultdict(list)
    pairs = []
    # shorter sets first: a longer partner is then always found through the index (length filter below)
    for i in sorted(range(len(sets)), key=lambda k: len(sets[k])):
        s = sets[i]
        if not s:
            continue
        order = sorted(s, key=lambda x: (freq[x], x))
        prefix = order[:len(s) - math.ceil(threshold * len(s)) + 1]
        seen = set()
        for x in prefix:
            for j in index[x]:
                if j in seen:
                    continue
                seen.add(j)
                other = sets[j]
                if len(other) < threshold * len(s):  # too short to reach the threshold
                    continue
                inter = len(s & other)
                if inter / (len(s) + len(other) - inter) >= threshold:
                    pairs.append((min(i, j), max(i, j)))
            index[x].append(i)
    return pairs


def duplicate_groups(texts: list[str], threshold: float = 0.8, n: int = 5) -> dict[int, int]:
    """{index of text: group id} for every text that has an exact or near copy (Jaccard >= threshold of
    word / Han-character n-gram shingles) among `texts`; the group id is the smallest index in the group."""
    first: dict[str, int] = {}
    parent = list(range(len(texts)))
    distinct = []
    for i, t in enumerate(texts):
        key = canonical(t)
        if key in first:
            parent[_find(parent, i)] = _find(parent, first[key])
        else:
            first[key] = i
            distinct.append(i)
    sets = [frozenset(shingle_hashes(texts[i], n).tolist()) for i in distinct]
    for a, b in similar_pairs(sets, threshold):
        ra, rb = _find(parent, distinct[a]), _find(parent, distinct[b])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members = Counter(_find(parent, i) for i in range(len(texts)))
    return {i: _find(parent, i) for i in range(len(texts)) if members[_find(parent, i)] > 1}
