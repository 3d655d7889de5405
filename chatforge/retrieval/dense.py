"""Optional dense retrieval: passage embeddings from a local Hugging Face encoder, fused with BM25.

    chatforge index add --run runs/demo docs/ --embedder /models/bge-small-zh-v1.5 --pooling cls
    chatforge index add --run runs/demo docs/ --embedder /models/multilingual-e5-small \
        --query-prefix "query: " --passage-prefix "passage: "
    chatforge index search --run runs/demo "雷努镇在哪条河边？"      # BM25 + dense, fused by rank
    chatforge index add --run runs/demo --embedder none            # back to BM25 only

The encoder is read from a folder (`AutoTokenizer` + `AutoModel`, local files only: nothing is downloaded) and
remembered in the index, so every later add, search, chat, server and eval uses it. A text's vector is the
encoder's last hidden state pooled over its tokens — `mean` (sentence-transformers' mean-pooling models, E5,
GTE) or `cls` (BGE) — and L2-normalised, so a dot product is the cosine similarity. Models that expect an
instruction or a prefix get them through `--query-prefix` / `--passage-prefix`.

Vectors live in `RUN/index/dense/` (vectors.npy, keys.json), keyed by a hash of the exact text embedded, so
re-adding unchanged documents and deleting documents embed nothing; only new or changed passages are
encoded. A search ranks passages by BM25 and by cosine similarity and fuses the two rankings by reciprocal
rank (each list contributes 1 / (60 + rank)): scale-free, so BM25's unbounded scores and cosines need no
calibration against each other, and a passage that shares no word with the question (a paraphrase, the other
language) can still be found by meaning.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chatforge import ChatforgeError

RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al. 2009); damps the top ranks' dominance
POOLINGS = ("mean", "cls")


@dataclass
class EmbedderSpec:
    path: str
    pooling: str = "mean"
    query_prefix: str = ""
    passage_prefix: str = ""

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ChatforgeError(f"--pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        folder = Path(self.path)
        if not (folder / "config.json").is_file():
            raise ChatforgeError(f"--embedder {self.path}: not a Hugging Face model folder (no config.json); give "
                                 f"the local folder of an encoder such as bge-small or multilingual-e5-small")


class Embedder:
    """A local encoder turning texts into unit vectors (see the module docstring)."""

    def __init__(self, spec: EmbedderSpec, batch_size: int = 32, max_length: int = 512):
        spec.validate()
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(spec.path, local_files_only=True).eval()
        except Exception as e:  # transformers raises many kinds for a bad folder
            raise ChatforgeError(f"--embedder {spec.path}: cannot load it as an encoder ({type(e).__name__}: "
                                 f"{str(e)[:200]})") from None
        self.spec, self.batch_size = spec, batch_size
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))
        self._torch = torch

    def embed(self, texts: list[str], queries: bool = False) -> np.ndarray:
        prefix = self.spec.query_prefix if queries else self.spec.passage_prefix
        out = []
        with self._torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok([prefix + t for t in texts[i:i + self.batch_size]], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                if self.spec.pooling == "cls":
                    v = hidden[:, 0]
                else:
                    m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                out.append(self._torch.nn.functional.normalize(v.float(), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def passage_text(chunk: dict) -> str:
    return f"{chunk['title']}: {chunk['text']}"


def text_key(spec: EmbedderSpec, text: str) -> str:
    return hashlib.sha256((spec.passage_prefix + text).encode("utf-8")).hexdigest()[:32]


class DenseVectors:
    """The vectors of an index's passages, by text key; persisted in `folder` (RUN/index/dense)."""

    def __init__(self, folder: Path, spec: EmbedderSpec):
        self.folder, self.spec = Path(folder), spec
        self.vectors: dict[str, np.ndarray] = {}
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.spec)
        return self._embedder

    @classmethod
    def load(cls, folder: Path, spec_dict: dict) -> DenseVectors:
        dv = cls(folder, EmbedderSpec(**spec_dict))
        keys_file, vec_file = dv.folder / "keys.json", dv.folder / "vectors.npy"
        if keys_file.is_file():
            # the vectors are a cache of (passages, encoder): damaged ones are re-embedded, not fatal
            try:
                keys = json.loads(keys_file.read_text(encoding="utf-8"))
                mat = np.load(vec_file)
                if len(keys) != len(mat):
                    raise ValueError(f"{len(keys)} keys for {len(mat)} vectors")
                dv.vectors = dict(zip(keys, mat))
            except (OSError, ValueError) as e:
                print(f"warning: {dv.folder}: dense vectors unreadable ({e}); the passages will be embedded again",
                      file=sys.stderr)
        return dv

    def update(self, chunks: list[dict]) -> int:
        """Embed the passages that have no vector yet and drop vectors no passage uses; -> passages embedded."""
        wanted = {text_key(self.spec, t): t for t in map(passage_text, chunks)}
        missing = [k for k in wanted if k not in self.vectors]
        if missing:
            for k, v in zip(missing, self.embedder.embed([wanted[k] for k in missing])):
                self.vectors[k] = v
        self.vectors = {k: v for k, v in self.vectors.items() if k in wanted}
        return len(missing)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        dim = next(iter(self.vectors.values())).shape[0] if keys else 0
        mat = np.stack([self.vectors[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)
        np.save(self.folder / "vectors.npy", mat)
        (self.folder / "keys.json").write_text(json.dumps(keys), encoding="utf-8")

    def matrix(self, chunks: list[dict]) -> np.ndarray:
        """The passages' vectors as rows, in their order (embedding those that have none yet)."""
        self.update(chunks)
        if not chunks:
            return np.zeros((0, 0), np.float32)
        return np.stack([self.vectors[text_key(self.spec, passage_text(c))] for c in chunks])

    def rank(self, query: str, matrix: np.ndarray, n: int) -> list[tuple[int, float]]:
        """(row, cosine) of the n rows of `matrix` nearest the query, nearest first."""
        if not len(matrix):
            return []
        sims = matrix @ self.embedder.embed([query], queries=True)[0]
        top = np.argsort(-sims, kind="stable")[:n]
        return [(int(i), float(sims[i])) for i in top]

    def spec_dict(self) -> dict:
        return asdict(self.spec)


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse rankings (lists of item ids, best first) -> (item, fused score), best first; ties keep first-seen order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
