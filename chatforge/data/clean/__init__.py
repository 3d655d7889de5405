"""Cleaning raw pre-training text: normalise, drop ad / boilerplate / navigation lines, filter documents by
language-aware quality rules, scrub PII, and remove exact and near duplicates.

Every stage is a pure function over a batch of documents (`{"id", "text", ...}` dicts) returning the kept
documents and what it removed and why, so the same code runs in a local process pool now and on a
distributed executor later. `chatforge.data.clean.run` chains them and scores the result against the
world's noise labels.
"""
