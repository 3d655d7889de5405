"""A persisted BM25 index of passages in the run directory, with document-level adds and deletes.

    chatforge index add    --run runs/demo notes/ faq.jsonl      # new / changed documents; unchanged skipped
    chatforge index delete --run runs/demo faq.jsonl:17 notes/a.md   # by document id or by source file
    chatforge index search --run runs/demo "Where is Rennu?" -k 3
    chatforge index list   --run runs/demo

    idx = RetrievalIndex.load(run)          # an empty index if none was built yet
    idx.add(docs); idx.save()
    idx.search("雷努镇在哪条河边？", k=3)      # [{"chunk_id", "doc_id", "title", "text", "score"}]
    idx.search(question, k=3, min_ratio=0.75)  # without passages scoring under 3/4 of the best one

Layout (`RUN/index/`): docs.jsonl (document id, title, source, content hash, passage count), chunks.jsonl
(the passages: what answers cite), bm25/ (bm25s's sparse matrices), dense/ (passage vectors, when an
encoder was given: retrieval/dense.py; searches then fuse BM25 and dense rankings) and meta.json (written
last: the index is complete when it exists). Adds and deletes work per document; the BM25 matrices are rebuilt from
the stored passages on save — bm25s has no in-place update, and a rebuild of 100k passages takes seconds,
far less than reading them again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.retrieval.chunks import chunk_document, content_hash, terms
from chatforge.retrieval.dense import DenseVectors, EmbedderSpec, reciprocal_rank_fusion
from chatforge.textio import read_jsonl

FORMAT = 1


class RetrievalIndex:
    def __init__(self, folder: Path, max_chars: int = 600):
        self.folder, self.max_chars = Path(folder), max_chars
        self.docs: dict[str, dict] = {}     # doc_id -> {"doc_id", "title", "source", "sha256", "chunks"}
        self.chunks: dict[str, list[dict]] = {}  # doc_id -> its passages
        self._bm25 = None
        self._order: list[dict] = []        # passages in the BM25 matrix's row order
        self.dense: DenseVectors | None = None  # passage vectors, when an encoder was given
        self._dense_rows = None             # their matrix in _order's row order (None: to build on next search)

    @classmethod
    def load(cls, run: str | Path) -> RetrievalIndex:
        folder = Path(run) / "index"
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            return cls(folder)
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ChatforgeError(f"{folder}: index format {meta.get('format')} is not {FORMAT}; delete the folder "
                                 f"and add the documents again")
        idx = cls(folder, meta["max_chars"])
        for d in read_jsonl(folder / "docs.jsonl"):
            idx.docs[d["doc_id"]] = d
            idx.chunks[d["doc_id"]] = []
        for c in read_jsonl(folder / "chunks.jsonl"):
            idx.chunks[c["doc_id"]].append(c)
        if idx.chunks:
            import bm25s

            idx._bm25 = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
            idx._order = [c for d in idx.docs for c in idx.chunks[d]]
        if meta.get("dense"):
            idx.dense = DenseVectors.load(folder / "dense", meta["dense"])
        return idx

    def set_embedder(self, spec: EmbedderSpec | None) -> None:
        """Use this encoder for dense retrieval from now on (None: BM25 only). The passages are embedded on
        save; vectors of another encoder are dropped."""
        self._dense_rows = None
        if spec is None:
            self.dense = None
            return
        spec.validate()
        if self.dense is None or self.dense.spec != spec:
            self.dense = DenseVectors(self.folder / "dense", spec)

    @classmethod
    def load_nonempty(cls, run: str | Path, asker: str = "--retrieval") -> RetrievalIndex:
        """The run's index for a caller that needs documents in it (an error naming the fix otherwise)."""
        idx = cls.load(run)
        if not idx.docs:
            raise ChatforgeError(f"{asker}: {Path(run) / 'index'} has no documents; add some with "
                                 f"`chatforge index add --run {run} FILES`")
        return idx

    def add(self, docs: list[dict]) -> dict:
        """Add documents ({"doc_id", "title", "text", "source"}); a known id with new content replaces the old
        passages. -> {"added", "updated", "unchanged"} counts."""
        counts = {"added": 0, "updated": 0, "unchanged": 0}
        for doc in docs:
            sha = content_hash(doc)
            old = self.docs.get(doc["doc_id"])
            if old and old["sha256"] == sha:
                counts["unchanged"] += 1
                continue
            counts["updated" if old else "added"] += 1
            chunks = chunk_document(doc, self.max_chars)
            self.docs[doc["doc_id"]] = {"doc_id": doc["doc_id"], "title": doc["title"], "source": doc["source"],
                                        "sha256": sha, "chunks": len(chunks)}
            self.chunks[doc["doc_id"]] = chunks
            self._bm25 = None
        return counts

    def delete(self, keys: list[str]) -> list[str]:
        """Remove documents by id, or every document read from a source file; -> the removed ids. A key that
        matches nothing is an error (nothing is removed), so a typo never passes silently."""
        gone: list[str] = []
        for key in keys:
            ids = [key] if key in self.docs else [i for i, d in self.docs.items() if d["source"] == key]
            if not ids:
                raise ChatforgeError(f"{key!r}: no document with this id or source in {self.folder}")
            gone += ids
        for i in dict.fromkeys(gone):
            del self.docs[i], self.chunks[i]
        self._bm25 = None
        return list(dict.fromkeys(gone))

    def _build(self) -> None:
        import bm25s

        self._order = [c for d in self.docs for c in self.chunks[d]]
        self._dense_rows = None
        self._bm25 = bm25s.BM25()
        # an empty term list would make bm25s drop the row and shift every later passage
        self._bm25.index([terms(c["title"] + " " + c["text"]) or ["<empty>"] for c in self._order],
                         show_progress=False)

    def save(self) -> None:
        """Write the index (rebuilding BM25 if documents changed); meta.json last, so a crash leaves no
        half-written index that claims to be complete."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "meta.json").unlink(missing_ok=True)
        if self._bm25 is None and self.docs:
            self._build()
        with open(self.folder / "docs.jsonl", "w", encoding="utf-8") as f:
            for d in self.docs.values():
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        with open(self.folder / "chunks.jsonl", "w", encoding="utf-8") as f:
            for d in self.docs:
                for c in self.chunks[d]:
                    f.write(json.dumps(c, ensure_ascii=False) + "\n")
        shutil.rmtree(self.folder / "bm25", ignore_errors=True)
        if self._bm25 is not None:
            self._bm25.save(str(self.folder / "bm25"), show_progress=False)
        if self.dense is not None:
            self.dense.update([c for d in self.docs for c in self.chunks[d]])
            self.dense.save()
        else:
            shutil.rmtree(self.folder / "dense", ignore_errors=True)
        meta = {"format": FORMAT, "max_chars": self.max_chars, "documents": len(self.docs),
                "passages": sum(len(c) for c in self.chunks.values()), "terms": "words + Han characters and bigrams",
                "dense": self.dense.spec_dict() if self.dense is not None else None}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def search(self, query: str, k: int = 3, min_ratio: float = 0.0) -> list[dict]:
        """The k best passages for the query, best first. BM25 only: those that match any of its terms (score:
        BM25). With an encoder: BM25's and the dense ranking's candidates fused by reciprocal rank (score: the
        fused score), so a passage may be found by meaning alone. `min_ratio`: leave out passages scoring under
        that share of the best one's score (fused scores are rank-based and close together: it rarely bites
        there)."""
        if not 0.0 <= min_ratio <= 1.0:
            raise ChatforgeError(f"min_ratio must be between 0 and 1, got {min_ratio}")
        if not self.docs:
            return []
        if self._bm25 is None:
            self._build()
        n = k if self.dense is None else max(4 * k, 20)  # fusion needs candidates beyond each list's top k
        ranked = self._bm25_ranking(query, n)
        if self.dense is not None:
            semantic = self._dense_ranking(query, n)
            ranked = reciprocal_rank_fusion([[i for i, _ in ranked], [i for i, _ in semantic]])[:k]
        best = ranked[0][1] if ranked else 0.0
        return [{**self._order[i], "score": s} for i, s in ranked if s >= min_ratio * best]

    def _dense_ranking(self, query: str, n: int) -> list[tuple[int, float]]:
        if self._dense_rows is None:  # once per change of the passages, not per query
            self._dense_rows = self.dense.matrix(self._order)
        return self.dense.rank(query, self._dense_rows, n)

    def _bm25_ranking(self, query: str, n: int) -> list[tuple[int, float]]:
        vocab = self._bm25.vocab_dict
        q = [t for t in terms(query) if t in vocab]
        if not q:
            return []
        ids, scores = self._bm25.retrieve([q], k=min(n, len(self._order)), show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
