"""Throughput of the cleaning stages, one process (= per core), each next to the plain library call it wraps,
measured in the same run.

    .venv/bin/python benchmarks/data_pipeline.py --run runs/demo [--docs 3000] [--doc-kb 2]

Documents: the world's raw texts joined into ~2 KB documents (English and Chinese mixed as in the world).
Printed per stage: docs/s and MB/s, and where there is one, the plain call's docs/s and the ratio.
Goals (issue 9): MinHash signatures >= 2,000 docs/s per core at ~2 KB/doc; tokenising to shards >= 5 MB/s
per core.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

# per core: HF tokenizers' encode_batch would otherwise use every core (Rayon)
os.environ.setdefault("RAYON_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatforge.data.clean.dedup import Deduplicator, MinHasher, shingle_hashes  # noqa: E402
from chatforge.data.clean.docfilter import document_reason  # noqa: E402
from chatforge.data.clean.lines import clean_lines  # noqa: E402
from chatforge.data.clean.pii import scrub_pii  # noqa: E402
from chatforge.data.clean.text import normalise  # noqa: E402
from chatforge.data.shards import write_shards  # noqa: E402
from chatforge.tokenizer import Tokenizer  # noqa: E402


def documents(run: Path, n: int, kb: float) -> list[str]:
    texts = [json.loads(line)["text"] for f in sorted(glob.glob(str(run / "world" / "raw" / "*.jsonl")))
             for line in open(f, encoding="utf-8")]
    docs, cur, i = [], [], 0
    while len(docs) < n:
        cur.append(texts[i % len(texts)])
        i += 7919  # stride through the corpus so neighbouring documents differ
        if sum(len(t.encode("utf-8")) for t in cur) >= kb * 1024:
            docs.append("\n".join(cur))
            cur = []
    return docs


def timed(fn, docs) -> float:
    t0 = time.perf_counter()
    fn(docs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--doc-kb", type=float, default=2.0)
    args = ap.parse_args()
    run = Path(args.run)
    docs = documents(run, args.docs, args.doc_kb)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    tok = Tokenizer.load(run / "tokenizer")
    from datasketch import MinHash

    hasher = MinHasher(128)

    def datasketch_plain(ds):
        for d in ds:
            m = MinHash(num_perm=128)
            u = d.lower().split()
            m.update_batch([" ".join(u[i:i + 5]).encode("utf-8") for i in range(max(1, len(u) - 4))])

    def lsh(ds):
        dd = Deduplicator()
        for i, d in enumerate(ds):
            dd.check(i, d)

    def shards(ds, tokenizer=tok):
        with tempfile.TemporaryDirectory() as tmp:
            write_shards(ds, tokenizer, tmp, progress=False)

    fast = tok.fast_encoder
    hf_only = Tokenizer(tok.hf)
    hf_only._fast = None  # the HF `tokenizers` path, which any non-chatforge tokenizer takes

    stages = [
        ("normalise", lambda ds: [normalise(d) for d in ds], "unicodedata NFKC",
         lambda ds: [unicodedata.normalize("NFKC", d) for d in ds]),
        ("line filter", lambda ds: [clean_lines(d) for d in ds], None, None),
        ("document rules", lambda ds: [document_reason(d) for d in ds], None, None),
        ("PII scrub", lambda ds: [scrub_pii(d) for d in ds], None, None),
        ("MinHash signature", lambda ds: [hasher.signature(shingle_hashes(d)) for d in ds],
         "datasketch update_batch", datasketch_plain),
        ("dedup (sig + LSH + verify)", lsh, None, None),
        ("tokenise to shards", shards, "tiktoken encode_ordinary" if fast else "HF encode_batch",
         (lambda ds: [fast.encode_ordinary(d) for d in ds]) if fast else
         (lambda ds: tok.hf.encode_batch(ds, add_special_tokens=False))),
        ("tokenise to shards (HF path)", lambda ds: shards(ds, hf_only), "HF encode_batch",
         lambda ds: tok.hf.encode_batch(ds, add_special_tokens=False)),
    ]
    print(f"data_pipeline: {len(docs)} documents, {mb:.2f} MB ({1000 * mb / len(docs):.2f} KB/doc), one process")
    print(f"{'stage':<28} {'docs/s':>9} {'MB/s':>7}   {'plain call':<26} {'docs/s':>9} {'ours/plain':>10}")
    results = {}
    for name, ours, plain_name, plain in stages:
        t = timed(ours, docs)
        row = f"{name:<28} {len(docs) / t:>9,.0f} {mb / t:>7.2f}"
        results[name] = {"docs_per_s": len(docs) / t, "mb_per_s": mb / t}
        if plain is not None:
            tp = timed(plain, docs)
            row += f"   {plain_name:<26} {len(docs) / tp:>9,.0f} {tp / t:>9.2f}x"
            results[name]["plain_docs_per_s"] = len(docs) / tp
        print(row)
    sig, shard = results["MinHash signature"], results["tokenise to shards"]
    print(f"goals: MinHash {sig['docs_per_s']:,.0f} docs/s (>= 2,000: {'met' if sig['docs_per_s'] >= 2000 else 'NOT met'}); "
          f"tokenising {shard['mb_per_s']:.1f} MB/s (>= 5: {'met' if shard['mb_per_s'] >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
