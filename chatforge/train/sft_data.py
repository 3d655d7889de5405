"""SFT data: read conversations, validate them, tokenise with the chat template, mask labels, pack rows.

Input records (jsonl, one per line; other keys are ignored):
- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` (the world's sft.jsonl);
- TRL prompt/completion: `{"prompt": str, "completion": str}` or both as message lists.

Every record is checked; a bad one (not JSON, no messages, unknown role, non-string content, no assistant
turn, not ending with an assistant turn, a system message after the start, longer than the row) is either
an error naming the file, line and reason (`on_bad="error"`) or a counted skip (`on_bad="skip"`), reported
per reason with examples. Nothing is dropped silently.

Labels: the loss covers the content tokens of every assistant turn and its <|end|> (the model must learn
to stop); <|bos|>, role tokens, system and user text, and padding carry no loss. Ids are built piece by piece
from the template, so the mask is exact (and the ids equal `Tokenizer.encode_chat`, checked).

Packing: samples are placed into rows of `seq_len` tokens, first-fit by decreasing length (deterministic).
Each token carries a segment id and a position that restarts per sample; the model's attention mask stops
at segment boundaries, so a packed sample computes exactly what it would alone (tested).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatforge import ChatforgeError
from chatforge.tokenizer import ROLES, Tokenizer

ON_BAD = ("error", "skip")


class BadRecord(ValueError):
    """A record that can't be trained on: `kind` (counted in the report) and an optional detail."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def to_messages(rec) -> list[dict]:
    """A record in any accepted format -> its list of messages (not yet validated)."""
    if not isinstance(rec, dict):
        raise BadRecord(f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        return rec["messages"]
    if "prompt" in rec and "completion" in rec:
        p, c = rec["prompt"], rec["completion"]
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else p
        completion = [{"role": "assistant", "content": c}] if isinstance(c, str) else c
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise BadRecord("prompt and completion must be strings or lists of messages")
        return [*prompt, *completion]
    raise BadRecord("no 'messages' (or 'prompt' and 'completion') field")


def validate(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRecord("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRecord(f"message {i} is not an object")
        if m.get("role") not in ROLES:
            raise BadRecord(f"unknown role {m.get('role')!r} in message {i}")
        if not isinstance(m.get("content"), str):
            raise BadRecord(f"message {i} content is not a string")
        if m["role"] == "system" and i > 0:
            raise BadRecord(f"system message at position {i} (only the first message may be system)")
    if messages[-1]["role"] != "assistant":
        raise BadRecord("does not end with an assistant turn")


def tokenize_conversation(tok: Tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """(ids, trained) where trained[i] says token i is an assistant content token or its <|end|>."""
    ids, trained = [tok.bos_id], [False]
    for m in messages:
        content = tok.encode(m["content"])
        is_answer = m["role"] == "assistant"
        ids += [tok.role_ids[m["role"]], *content, tok.end_id]
        trained += [False] + [is_answer] * (len(content) + 1)
    return ids, trained


@dataclass
class Sample:
    ids: np.ndarray  # (L,)
    trained: np.ndarray  # (L,) bool

    @property
    def width(self) -> int:
        """Positions the sample occupies in a row: inputs ids[:-1], targets ids[1:]."""
        return len(self.ids) - 1


@dataclass
class LoadReport:
    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> first "file:line"

    def to_dict(self) -> dict:
        return {"records": self.records, "kept": self.kept, "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()), "examples": self.examples}


def read_records(paths: list[str | Path], on_bad: str, report: LoadReport, parse, hint: bool = True):
    """Yield `parse(record)` for every jsonl record of `paths`. A record that is not JSON, or that `parse`
    rejects with BadRecord, stops everything with `file:line: reason` (`on_bad="error"`) or is counted in
    `report` per reason with its first example (`"skip"`)."""
    if on_bad not in ON_BAD:
        raise ChatforgeError(f"--on-bad-record {on_bad!r}: expected one of {ON_BAD}")
    for f in jsonl_files(paths):
        # split on "\n" only: str.splitlines would also split inside text on U+2028, U+0085, ...
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="strict").split("\n"), 1):
            if not line.strip():
                continue
            report.records += 1
            try:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadRecord("not valid JSON", e.msg) from None
                item = parse(rec)
            except BadRecord as e:
                if on_bad == "error":
                    more = " (use --on-bad-record skip to skip such records and count them)" if hint else ""
                    raise ChatforgeError(f"{f}:{n}: {e}{more}") from None
                report.skipped[e.kind] += 1
                report.examples.setdefault(e.kind, f"{f}:{n}: {e}")
                continue
            report.kept += 1
            yield item


def load_samples(paths: list[str | Path], tok: Tokenizer, seq_len: int, on_bad: str = "error",
                 val_every: int = 0) -> tuple[list[Sample], list[Sample], LoadReport]:
    """Read, validate and tokenise every record -> (train samples, val samples, report). With `val_every`
    = N > 0, every N-th kept conversation goes to validation (held out from training)."""
    def parse(rec) -> Sample:
        messages = to_messages(rec)
        validate(messages)
        ids, trained = tokenize_conversation(tok, messages)
        if len(ids) - 1 > seq_len:
            raise BadRecord("too long", f"{len(ids)} tokens, a row holds {seq_len + 1}")
        return Sample(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool))

    report = LoadReport()
    train, val = [], []
    for i, sample in enumerate(read_records(paths, on_bad, report, parse)):
        (val if val_every and i % val_every == 0 else train).append(sample)
    if not train:
        raise ChatforgeError(f"no usable training conversations in {[str(p) for p in paths]} "
                             f"({report.to_dict()['skipped']} skipped)")
    return train, val, report


def jsonl_files(paths: list[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise ChatforgeError(f"{p}: no such file or folder")
    if not out:
        raise ChatforgeError(f"no .jsonl files in {[str(p) for p in paths]}")
    return out


def pack(samples: list[Sample], seq_len: int) -> list[list[int]]:
    """Rows of sample indices, first-fit by decreasing width (ties by index: deterministic)."""
    order = sorted(range(len(samples)), key=lambda i: (-samples[i].width, i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        w = samples[i].width
        for r, space in enumerate(free):
            if space >= w:
                rows[r].append(i)
                free[r] -= w
                break
        else:
            rows.append([i])
            free.append(seq_len - w)
    return rows


def build_row(samples: list[Sample], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One packed row: x, y (targets; -100 where untrained), segment ids and per-sample positions."""
    x = np.full(seq_len, pad_id, dtype=np.int64)
    y = np.full(seq_len, -100, dtype=np.int64)
    seg = np.full(seq_len, len(samples), dtype=np.int64)  # padding: its own segment (sees only itself)
    pos = np.zeros(seq_len, dtype=np.int64)
    at = 0
    for k, s in enumerate(samples):
        w = s.width
        x[at:at + w] = s.ids[:-1]
        y[at:at + w] = np.where(s.trained[1:], s.ids[1:], -100)
        seg[at:at + w] = k
        pos[at:at + w] = np.arange(w)
        at += w
    pos[at:] = np.arange(seq_len - at)
    return {"x": x, "y": y, "seg": seg, "pos": pos}
