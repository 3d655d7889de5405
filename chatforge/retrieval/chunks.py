"""Documents for retrieval: read files into documents, split documents into passages, and the terms BM25 sees.

    docs = read_documents(["notes/", "faq.jsonl", "page.html"])   # [{"doc_id", "title", "text", "source"}]
    chunk_document(doc, max_chars=600)                          # [{"chunk_id", "doc_id", "title", "text", ...}]
    terms("雷努镇位于赤河边")                                      # ['雷', '雷努', '努', '努镇', ...]

Files: .jsonl (one document per record: `text`, optional `id` and `title`), .txt / .md (one document per
file; a Markdown "# heading" or the first line is its title), .html / .htm (main content via trafilatura),
.pdf (the text layer, page by page, via pypdf; a scanned PDF without one is a counted skip, not OCR'd).
Passages break at paragraph, then sentence boundaries (English and Chinese punctuation) so a cited passage
reads as whole sentences. Terms: lower-cased English words and numbers, and for Chinese every Han character
and every pair of neighbouring Han characters: a word segmenter's dictionary (jieba) does not know the
names of a user's own world — or of this one — and bigrams need no dictionary.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.textio import list_text_files

SUFFIXES = (".jsonl", ".txt", ".md", ".html", ".htm", ".pdf")
_WORD = re.compile(r"[a-z0-9]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])")  # split after the mark, keep the spacing
STOPWORDS = frozenset("a an and are as at be by for from has have in is it its of on or that the this to was were "
                      "what when where which who whom why how does do did with".split())


def terms(text: str) -> list[str]:
    """The words BM25 indexes and matches (see the module docstring)."""
    out = []
    for run in _WORD.findall(text.lower()):
        if _HAN.match(run):
            out += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
        elif run not in STOPWORDS:
            out.append(run)
    return out


def _title_of(text: str, fallback: str) -> str:
    first = text.strip().split("\n", 1)[0].strip()
    return first.lstrip("#").strip()[:120] if first.startswith("#") else (first[:80] or fallback)


def read_documents(paths: list[str | Path]) -> tuple[list[dict], Counter]:
    """Documents of these files / folders, and counted skips (bad jsonl lines, pages with no main content)."""
    from chatforge.data.clean.ingest import iter_file
    from chatforge.textio import read_text

    docs: list[dict] = []
    skipped: Counter = Counter()
    for f in list_text_files(paths, SUFFIXES):
        if f.suffix in (".pdf", ".txt", ".md"):  # one document per file
            text = pdf_text(f) if f.suffix == ".pdf" else read_text(f)
            if text.strip():
                docs.append({"doc_id": str(f), "title": _title_of(text, f.stem), "text": text, "source": str(f)})
            else:
                skipped["pdf_without_text" if f.suffix == ".pdf" else "empty_file"] += 1
            continue
        for rec in iter_file(f, skipped):
            doc_id = str(rec["id"]) if f.suffix == ".jsonl" and "id" in rec else f"{f}:{rec['id']}"
            title = rec.get("title") if isinstance(rec.get("title"), str) else _title_of(rec["text"], f.stem)
            docs.append({"doc_id": doc_id, "title": title, "text": rec["text"], "source": str(f)})
    return docs, skipped


def pdf_text(f: Path) -> str:
    """The text layer of a PDF, pages separated by blank lines (so passages don't straddle pages)."""
    import pypdf

    try:
        reader = pypdf.PdfReader(f)
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # noqa: BLE001 - pypdf raises many types for damaged files
        raise ChatforgeError(f"{f}: not a readable PDF ({e})") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _pieces(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(separator before it, piece): paragraphs, and the sentences of paragraphs longer than max_chars (a
    sentence longer than that is cut). Sentences keep their own spacing, so joining gives the text back."""
    out = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        sents = [para] if len(para) <= max_chars else [x for x in _SENTENCE_END.split(para) if x]
        for j, sent in enumerate(sents):
            for i in range(0, len(sent), max_chars):
                out.append(("\n\n" if j == 0 and i == 0 else "", sent[i:i + max_chars]))
    return out


def chunk_document(doc: dict, max_chars: int = 600) -> list[dict]:
    """Consecutive pieces joined up to max_chars per passage; each passage knows its document and title."""
    chunks: list[str] = []
    cur = ""
    for sep, piece in _pieces(doc["text"], max_chars):
        if cur and len(cur) + len(sep) + len(piece) > max_chars:
            chunks.append(cur.strip())
            cur = ""
        cur += (sep if cur else "") + piece
    if cur.strip():
        chunks.append(cur.strip())
    return [{"chunk_id": f"{doc['doc_id']}#{i}", "doc_id": doc["doc_id"], "title": doc["title"], "text": text}
            for i, text in enumerate(chunks)]


def content_hash(doc: dict) -> str:
    return hashlib.sha256((doc["title"] + "\0" + doc["text"]).encode("utf-8")).hexdigest()
