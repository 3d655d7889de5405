"""Decontamination of training documents against evaluation items: a document that shares any 13-gram
(13 words, or 13 Chinese characters; punctuation ignored — the world generator's units) with an eval item
is dropped.

The n-gram keys are stable 64-bit hashes (blake2b), not Python's per-process `hash`, so an index built in
one process is valid in every worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from chatforge.world.decontam import N, item_texts, units


def ngram_keys(text: str, n: int = N) -> set[int]:
    u = units(text)
    return {int.from_bytes(hashlib.blake2b("\x1f".join(u[i:i + n]).encode("utf-8"), digest_size=8).digest(), "little")
            for i in range(len(u) - n + 1)}


def build_eval_index(items: Iterable[dict], n: int = N) -> set[int]:
    index: set[int] = set()
    for item in items:
        for text in item_texts(item):
            index |= ngram_keys(text, n)
    return index


def eval_items(folder: str | Path) -> list[dict]:
    """Every item of every `*.jsonl` eval set in `folder` (the world's `world/eval/`)."""
    out = []
    for f in sorted(Path(folder).glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").split("\n") if line.strip()]
    return out


def contaminated(text: str, index: set[int], n: int = N) -> bool:
    return not index.isdisjoint(ngram_keys(text, n))
