"""Reading raw documents: jsonl, parquet, txt and html files (or folders of them), streamed.

    docs, skipped = read_sources({"web": ["crawl/"], "books": ["books.parquet"]}, text_column="text")

- jsonl: one JSON object per line with a `text` string (other fields kept);
- parquet: the `text_column` column (a missing column is an error that lists the columns there are),
  read in record batches;
- txt: one document per blank-line-separated block;
- html / htm: one document per file, its main content extracted with trafilatura (menus, footers and
  sidebars left out).

A file that can't be read at all (not UTF-8, not parquet, missing) is an error naming it; a record that
can't be used (a line that isn't JSON, no text, empty text, a page with no main content) is skipped and
counted per reason, so one bad line never loses a corpus.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.textio import list_text_files, nonblank_lines, read_text

SUFFIXES = (".jsonl", ".parquet", ".txt", ".html", ".htm")


def iter_file(f: Path, skipped: Counter, text_column: str = "text") -> Iterator[dict]:
    if f.suffix == ".jsonl":
        for n, line in nonblank_lines(f):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped["not_json"] += 1
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get(text_column), str):
                skipped[f"no_{text_column}_field"] += 1
                continue
            if not rec[text_column].strip():
                skipped["empty_text"] += 1
                continue
            rec = {**rec, "text": rec[text_column]}
            rec.setdefault("id", f"{f.name}:{n}")
            yield rec
    elif f.suffix == ".parquet":
        yield from _iter_parquet(f, skipped, text_column)
    elif f.suffix == ".txt":
        for i, block in enumerate(b for b in read_text(f).split("\n\n") if b.strip()):
            yield {"id": f"{f.name}:{i}", "text": block}
    else:
        import trafilatura

        text = trafilatura.extract(read_text(f), include_comments=False, include_tables=True)
        if text and text.strip():
            yield {"id": f.name, "text": text}
        else:
            skipped["html_no_main_content"] += 1


def _iter_parquet(f: Path, skipped: Counter, text_column: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise ChatforgeError(f"{f}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_column not in names:
        raise ChatforgeError(f"{f}: no column {text_column!r}; columns: {names} (choose one with --text-column)")
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            text = rec.get(text_column)
            if not isinstance(text, str) or not text.strip():
                skipped["empty_text"] += 1
                continue
            yield {**rec, "text": text, "id": rec.get("id", f"{f.name}:{row}")}


def read_sources(sources: dict[str, list[str]], text_column: str = "text") -> tuple[list[dict], Counter]:
    """All documents of all sources (each tagged with its source name unless it names one), and the skips."""
    docs: list[dict] = []
    skipped: Counter = Counter()
    for name, paths in sources.items():
        for f in list_text_files(paths, SUFFIXES):
            for rec in iter_file(f, skipped, text_column):
                rec.setdefault("source", name or f.stem)
                if name:
                    rec["source"] = name
                docs.append(rec)
    if not docs:
        raise ChatforgeError(f"no documents in {sources}" + (f" ({dict(skipped)} records skipped)" if skipped else ""))
    return docs, skipped


def parse_source(spec: str) -> tuple[str, str, float | None]:
    """NAME=PATH[:WEIGHT] -> (name, path, weight or None); a bare PATH is a source named by its files."""
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "", spec
    path, weight = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass  # a ':' that is part of the path
    if weight is not None and weight <= 0:
        raise ChatforgeError(f"--source {spec!r}: the weight must be > 0")
    return name, path, weight
