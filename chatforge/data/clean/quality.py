"""GPT-3's quality classifier: hashed n-gram features + logistic regression, trained to tell reference text
(positives: text you trust, e.g. an encyclopedia) from raw crawl (negatives), then used to keep raw
documents by Pareto sampling.

    clf = QualityClassifier().fit(reference_texts, raw_texts)
    scores = clf.score(texts)                          # P(reference-like) in [0, 1]
    keep = pareto_keep(scores, alpha=9, seed=0)        # np.random.pareto(alpha) > 1 - score

Features: unigrams and bigrams of units — lower-cased English words and single Han characters, so Chinese
is featurised by characters (it has no spaces) — hashed into 2^18 dimensions (no vocabulary to store).
The Pareto rule keeps every high-scoring document and a few low-scoring ones (diversity): with alpha = 9 a
document is kept with probability (2 - score)^-9, e.g. 0.002 at score 0, 0.026 at 0.5, 0.42 at 0.9, 1 at 1.
"""

from __future__ import annotations

import re

import numpy as np

_UNITS = re.compile(r"[a-z]+|\d+|[\u3400-\u9fff\uf900-\ufaff]")


def _features(text: str) -> list[str]:
    u = _UNITS.findall(text.lower())
    return u + [f"{a} {b}" for a, b in zip(u, u[1:])]


class QualityClassifier:
    def __init__(self, n_features: int = 1 << 18, c: float = 1.0, seed: int = 0):
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = HashingVectorizer(analyzer=_features, n_features=n_features, alternate_sign=False,
                                            norm="l2")
        self.model = LogisticRegression(C=c, max_iter=1000, random_state=seed)

    def fit(self, positives: list[str], negatives: list[str]) -> QualityClassifier:
        from chatforge import ChatforgeError

        if not positives or not negatives:
            raise ChatforgeError(f"the quality classifier needs reference and raw texts (got {len(positives)} "
                                 f"and {len(negatives)})")
        x = self.vectorizer.transform(positives + negatives)
        y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        self.model.fit(x, y)
        return self

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(self.vectorizer.transform(texts))[:, 1]


def pareto_keep(scores: np.ndarray, alpha: float = 9.0, seed: int = 0) -> np.ndarray:
    """GPT-3's rule: keep a document when np.random.pareto(alpha) > 1 - score."""
    rng = np.random.default_rng(seed)
    return rng.pareto(alpha, len(scores)) > 1 - np.asarray(scores)


def threshold_keep(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(scores) >= threshold
