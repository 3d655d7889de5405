"""N-gram decontamination: no eval item may share a 13-gram with training data.

Units are lower-cased words and numbers for Latin text and single characters for CJK text, so a
13-gram is a phrase of 13 words or 13 Chinese characters (punctuation ignored). N-gram keys are stable
64-bit hashes (blake2b), not Python's per-process `hash`, so an index built in one process is valid in
every worker (the cleaning stage decontaminates on a process pool's output with the same keys).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

N = 13
_UNIT = re.compile(r"[a-z]+|\d+|[\u3400-\u9fff]")


def units(text: str) -> list[str]:
    return _UNIT.findall(text.lower())


def ngrams(text: str, n: int = N) -> set[int]:
    u = units(text)
    return {int.from_bytes(hashlib.blake2b("\x1f".join(u[i:i + n]).encode("utf-8"), digest_size=8).digest(), "little")
            for i in range(len(u) - n + 1)}


def build_index(texts: Iterable[str], n: int = N) -> set[int]:
    index: set[int] = set()
    for t in texts:
        index |= ngrams(t, n)
    return index


def item_texts(item: dict) -> list[str]:
    """Every text an eval item shows or expects: prompt turns, passages and gold answers."""
    out = [m["content"] for m in item.get("messages", [])]
    for key in ("reference_answer", "reference", "text"):
        if isinstance(item.get(key), str):
            out.append(item[key])
    return out + list(item.get("choices", []))


def overlapping(item: dict, index: set[int], n: int = N) -> bool:
    return any(ngrams(t, n) & index for t in item_texts(item))
