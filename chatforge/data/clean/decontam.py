"""Decontamination of training documents against evaluation items: a document that shares any 13-gram
(13 words, or 13 Chinese characters; punctuation ignored — the world generator's units and stable keys,
`chatforge.world.decontam`) with an eval item is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from chatforge.textio import read_jsonl
from chatforge.world.decontam import N, build_index, item_texts, ngrams


def build_eval_index(items: Iterable[dict], n: int = N) -> set[int]:
    return build_index((text for item in items for text in item_texts(item)), n)


def eval_items(folder: str | Path) -> list[dict]:
    """Every item of every `*.jsonl` eval set in `folder` (the world's `world/eval/`)."""
    return [item for f in sorted(Path(folder).glob("*.jsonl")) for item in read_jsonl(f)]


def contaminated(text: str, index: set[int], n: int = N) -> bool:
    return not index.isdisjoint(ngrams(text, n))
