"""Text -> token shards: flat uint16/uint32 token files plus a document-boundary index.

    chatforge data --run runs/demo [--data corpus.jsonl ...] [--val-every 50]

Layout written to `<run>/data/`:
    train_00000.bin   flat token ids (dtype in meta.json), each document as <|bos|> ids... <|eos|>
    train_00000.idx.npy  int64 start offset of every document in that .bin (for packing / doc masks)
    val_00000.bin, val_00000.idx.npy
    meta.json         dtype, vocab size, special ids, per-shard token/document counts (written last:
                      its presence means the stage is complete)

Every `val_every`-th document (the first one included) goes to the validation split, so the split is
deterministic and non-empty for any non-empty corpus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.tokenizer import Tokenizer

SHARD_TOKENS = 1 << 27  # 128M tokens per shard file (256 MiB as uint16)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._f = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}"
        self._f = open(self.out / f"{name}.bin", "wb")
        self.shards.append({"file": f"{name}.bin", "index": f"{name}.idx.npy", "tokens": 0, "docs": 0})
        self._starts: list[int] = []

    def add_many(self, docs: list[list[int]], bos: int, eos: int) -> None:
        """Append documents as bos, ids..., eos; a new shard starts before a document once the current one
        holds `shard_tokens`. One array build and one write per shard touched: a list and an array per
        document were a third of the time of tokenising to shards."""
        i = 0
        while i < len(docs):
            if self._f is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self.close()
                self._open()
            cur = self.shards[-1]
            t, j = cur["tokens"], i
            while j < len(docs) and (j == i or t < self.shard_tokens):  # a shard takes whole documents until full
                self._starts.append(t)
                t += len(docs[j]) + 2
                j += 1
            flat = chain.from_iterable(x for ids in docs[i:j] for x in ((bos,), ids, (eos,)))
            self._f.write(np.fromiter(flat, dtype=self.dtype, count=t - cur["tokens"]).tobytes())
            cur["docs"] += j - i
            cur["tokens"] = t
            i = j

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            np.save(self.out / self.shards[-1]["index"], np.asarray(self._starts, dtype=np.int64))
            self._f = None


def write_shards(texts: Iterable[str], tok: Tokenizer, out_dir: str | Path, val_every: int = 50,
                 shard_tokens: int = SHARD_TOKENS, batch_docs: int = 1024, progress: bool = True) -> dict:
    """Tokenise documents into train/val shards; returns the meta dict also written to meta.json."""
    if val_every < 2:
        raise ChatforgeError(f"val_every={val_every}: must be >= 2 so training keeps some documents")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    dtype = token_dtype(tok.vocab_size)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    n_docs = 0
    bar = tqdm(desc="tokenising", unit=" docs", disable=not progress, mininterval=1.0)

    def flush(batch: list[str]) -> None:
        nonlocal n_docs
        per_split: dict[str, list[list[int]]] = {"train": [], "val": []}
        for ids in tok.encode_batch(batch):
            per_split["val" if n_docs % val_every == 0 else "train"].append(ids)
            n_docs += 1
        for split, docs in per_split.items():
            writers[split].add_many(docs, tok.bos_id, tok.eos_id)
        bar.update(len(batch))

    batch: list[str] = []
    for text in texts:
        if text.strip():
            batch.append(text)
        if len(batch) >= batch_docs:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    bar.close()
    for w in writers.values():
        w.close()
    if n_docs < 2:
        raise ChatforgeError(f"corpus has {n_docs} non-empty document(s); need at least 2: the first (and every "
                             f"{val_every}th) goes to validation. Split a single .txt into several files, or "
                             f"use .jsonl with one document per line")
    meta = {
        "dtype": dtype.name, "vocab_size": tok.vocab_size, "tokenizer_sha256": tok.fingerprint(),
        "bos_id": tok.bos_id, "eos_id": tok.eos_id,
        "val_every": val_every, "documents": n_docs,
        "splits": {s: w.shards for s, w in writers.items()},
        "tokens": {s: sum(sh["tokens"] for sh in w.shards) for s, w in writers.items()},
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out / "meta.json")
    return meta


def read_meta(data_dir: str | Path) -> dict:
    f = Path(data_dir) / "meta.json"
    if not f.is_file():
        raise ChatforgeError(f"{f}: missing; run `chatforge data --run ...` to write token shards first")
    from chatforge.run import read_json

    return read_json(f, "shard index")


def load_split(data_dir: str | Path, split: str) -> list[np.ndarray]:
    """Memory-mapped token arrays of one split (no copy into RAM)."""
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise ChatforgeError(f"{data_dir}: no split {split!r} in meta.json")
    arrays = []
    for sh in meta["splits"][split]:
        f = Path(data_dir) / sh["file"]
        expected = sh["tokens"] * np.dtype(meta["dtype"]).itemsize
        if not f.is_file() or f.stat().st_size != expected:
            raise ChatforgeError(f"{f}: missing or truncated (expected {expected} bytes); re-run `chatforge data`")
        if sh["tokens"]:
            arrays.append(np.memmap(f, dtype=meta["dtype"], mode="r"))
    return arrays


def data_settings(data: list[str] | None, val_every: int, tok: Tokenizer, cleaned: bool = False) -> dict:
    return {"data": data, "val_every": val_every, "tokenizer_sha256": tok.fingerprint(), "cleaned": cleaned}


def run_data_stage(run: str | Path, data: list[str] | None = None, val_every: int = 50,
                   cleaned: bool | None = None) -> dict:
    """`data`, else <run>/clean/docs.jsonl when the run has been cleaned, else <run>/world/raw (`cleaned`
    forces the choice) -> <run>/data shards with the run's tokenizer. Reading cleaned documents, it also
    completes the cleaning funnel's token column (`clean.run.add_token_counts`), which needs this tokenizer."""
    from chatforge.run import mark_complete, reads_cleaned, require_run, stage_dir, text_sources
    from chatforge.textio import iter_documents

    run = require_run(run)
    tok = Tokenizer.load(stage_dir(run, "tokenizer"))
    cleaned = reads_cleaned(run, data, cleaned)
    sources = text_sources(run, data, cleaned)
    out = stage_dir(run, "data")
    meta = write_shards((d["text"] for d in iter_documents(sources)), tok, out, val_every=val_every)
    if cleaned:
        from chatforge.data.clean.run import add_token_counts

        add_token_counts(run)
    mark_complete(out, settings=data_settings(data, val_every, tok, cleaned), stage="data", tokens=meta["tokens"])
    return meta
