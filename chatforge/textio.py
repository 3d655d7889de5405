"""Read plain text documents from .jsonl ({"text": ...}), .txt (one file = one document) or folders of them.

Used by the tokenizer and shard stages so both accept the same inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from chatforge import ChatforgeError

TEXT_SUFFIXES = (".jsonl", ".txt")


def list_text_files(paths: list[str | Path], suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Path]:
    """Expand files and folders into a sorted list of files with these suffixes; error on anything missing."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in suffixes))
        elif p.is_file():
            if p.suffix not in suffixes:
                raise ChatforgeError(f"{p}: unsupported file type {p.suffix!r}; expected one of {suffixes}")
            files.append(p)
        else:
            raise ChatforgeError(f"{p}: no such file or folder")
    return files


def iter_documents(paths: list[str | Path], text_field: str = "text") -> Iterator[dict]:
    """Yield {"text", "source", "lang"?} dicts; malformed jsonl lines raise naming file and line."""
    for f in list_text_files(paths):
        if f.suffix == ".txt":
            try:
                yield {"text": f.read_text(encoding="utf-8"), "source": f.stem}
            except UnicodeDecodeError as e:
                raise ChatforgeError(f"{f}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
            continue
        with open(f, encoding="utf-8") as fh:
            for lineno, line in _numbered_lines(fh, f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ChatforgeError(f"{f}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                    raise ChatforgeError(f"{f}:{lineno}: expected an object with a string field {text_field!r}")
                try:
                    rec[text_field].encode("utf-8")
                except UnicodeEncodeError:
                    raise ChatforgeError(f"{f}:{lineno}: {text_field!r} holds a lone surrogate escape "
                                         f"(e.g. \\ud800), which is not valid Unicode text") from None
                rec.setdefault("source", f.stem)
                yield rec


def _numbered_lines(fh, f: Path) -> Iterator[tuple[int, str]]:
    lineno = 0
    try:
        for lineno, line in enumerate(fh, 1):  # noqa: B007 (lineno is read in the except)
            yield lineno, line
    except UnicodeDecodeError:
        raise ChatforgeError(f"{f}: line {lineno + 1} is not UTF-8 text; convert the file to UTF-8") from None


def read_text(f: Path) -> str:
    """A UTF-8 file's text; anything else is an error naming the file and the byte."""
    try:
        return Path(f).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ChatforgeError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def nonblank_lines(f: str | Path) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 file's non-blank lines, split on "\n" only (see read_jsonl)."""
    return [(n, line) for n, line in enumerate(read_text(Path(f)).split("\n"), 1) if line.strip()]


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file this project wrote. Split on "\\n" only: `str.splitlines` also breaks
    at U+2028 / U+0085, which `ensure_ascii=False` JSON carries raw inside strings."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    except json.JSONDecodeError as e:
        raise ChatforgeError(f"{path}: damaged JSON lines ({e.msg}); rebuild it") from None
