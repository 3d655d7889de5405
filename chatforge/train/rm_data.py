"""Preference data for the reward model (and DPO): ranked answers -> comparison groups -> packed rows.

Input records (jsonl; other keys ignored):
- rankings (the world's rankings.jsonl, InstructGPT's format): `{"prompt": [messages] | str,
  "responses": [str, ...] (K = 2..9), "ranking": [best index, ..., worst index], "labeler": str?}`;
  an element of `ranking` may be a list of tied indices, e.g. `[[0, 2], 1]`: tied answers form no pair;
- TRL pairs: `{"prompt": ..., "chosen": str | [messages], "rejected": str | [messages]}`, or without a
  prompt, `chosen` / `rejected` as whole conversations.
Bad records: the same `--on-bad-record error|skip` contract as SFT (file:line and reason, or a counted skip).

A group is one prompt's K conversations (prompt + answer), each encoded once, with the pairs (better,
worse) its ranking implies: C(K,2) minus tied pairs. The reward is read at each conversation's last token,
the <|end|> that closes the answer. Conversations are packed into rows exactly like SFT (segment ids,
per-sample positions), so a score doesn't depend on padding, batch composition or packing (tested).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatforge import ChatforgeError
from chatforge.tokenizer import Tokenizer
from chatforge.train.sft_data import (
    BadRecord,
    LoadReport,
    pack,
    read_records,
    tokenize_conversation,
    validate,
)


@dataclass
class Scored:
    """One conversation to score: its ids (the reward is read at its last position) and, for DPO, which
    tokens are the answer's (assistant content + <|end|>)."""
    ids: np.ndarray
    trained: np.ndarray | None = None

    @property
    def width(self) -> int:
        return len(self.ids)


@dataclass
class Group:
    convs: list[Scored]
    pairs: list[tuple[int, int]]  # (better, worse) indices into convs
    labeler: str | None = None


def _as_messages(x, what: str) -> list[dict]:
    if isinstance(x, str):
        return [{"role": "user" if what == "prompt" else "assistant", "content": x}]
    if isinstance(x, list):
        return x
    raise BadRecord(f"{what} must be a string or a list of messages")


def ranking_pairs(ranking, k: int) -> list[tuple[int, int]]:
    """(better, worse) pairs from a best-first ranking whose elements are indices or lists of tied ones."""
    tiers = [r if isinstance(r, list) else [r] for r in ranking]
    flat = [i for t in tiers for i in t]
    if sorted(flat) != list(range(k)) or not all(isinstance(i, int) for i in flat):
        raise BadRecord("ranking is not a permutation of the responses", f"{ranking} for {k} responses")
    return [(a, b) for ti, t in enumerate(tiers) for a in t for u in tiers[ti + 1:] for b in u]


def to_group_messages(rec) -> tuple[list[list[dict]], list[tuple[int, int]], str | None]:
    """A record -> (conversations, pairs, labeler)."""
    if not isinstance(rec, dict):
        raise BadRecord(f"expected a JSON object, got {type(rec).__name__}")
    if "responses" in rec:
        prompt = _as_messages(rec.get("prompt"), "prompt")
        responses = rec["responses"]
        if not isinstance(responses, list) or not 2 <= len(responses) <= 9:
            raise BadRecord("responses must be a list of 2..9 answers")
        if not all(isinstance(r, str) for r in responses):
            raise BadRecord("every response must be a string")
        convs = [[*prompt, {"role": "assistant", "content": r}] for r in responses]
        pairs = ranking_pairs(rec.get("ranking"), len(responses)) if isinstance(rec.get("ranking"), list) else None
        if pairs is None:
            raise BadRecord("no ranking list")
        return convs, pairs, rec.get("labeler")
    if "chosen" in rec and "rejected" in rec:
        prompt = _as_messages(rec["prompt"], "prompt") if "prompt" in rec else []
        convs = [[*prompt, *_as_messages(rec[k], "answer")] for k in ("chosen", "rejected")]
        return convs, [(0, 1)], rec.get("labeler")
    raise BadRecord("no 'responses' + 'ranking' (or 'chosen' + 'rejected') fields")


def load_groups(paths: list[str | Path], tok: Tokenizer, max_len: int, on_bad: str = "error",
                val_every: int = 0) -> tuple[list[Group], list[Group], LoadReport]:
    """Read every comparison record -> (train groups, val groups, report); every `val_every`-th kept group
    is held out (by prompt: both rankings of a doubly-ranked prompt land on the same side)."""
    def parse(rec) -> tuple[str, Group]:
        convs, pairs, labeler = to_group_messages(rec)
        if not pairs:
            raise BadRecord("no ordered pair (every answer tied)")
        scored = []
        for c in convs:
            validate(c)
            ids, trained = tokenize_conversation(tok, c)
            if len(ids) > max_len:
                raise BadRecord("too long", f"{len(ids)} tokens, at most {max_len}")
            scored.append(Scored(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool)))
        return json.dumps(convs[0][:-1], ensure_ascii=False), Group(scored, pairs, labeler)

    report, train, val = LoadReport(), [], []
    prompt_side: dict[str, bool] = {}
    for key, group in read_records(paths, on_bad, report, parse):
        if key not in prompt_side:
            prompt_side[key] = bool(val_every) and len(prompt_side) % val_every == 0
        (val if prompt_side[key] else train).append(group)
    if not train:
        raise ChatforgeError(f"no usable comparisons in {[str(p) for p in paths]} ({dict(report.skipped)} skipped)")
    return train, val, report


def build_score_rows(convs: list[Scored], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pack conversations into rows -> x, seg, pos (R, seq_len) and `ends` (N, 2): the (row, column) of each
    conversation's last token, in the order of `convs`."""
    rows = pack(convs, seq_len)
    x = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    seg = np.zeros((len(rows), seq_len), dtype=np.int64)
    pos = np.zeros((len(rows), seq_len), dtype=np.int64)
    ends = np.zeros((len(convs), 2), dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for k, i in enumerate(members):
            w = convs[i].width
            x[r, at:at + w], seg[r, at:at + w], pos[r, at:at + w] = convs[i].ids, k, np.arange(w)
            ends[i] = (r, at + w - 1)
            at += w
        seg[r, at:] = len(members)  # padding: its own segment
        pos[r, at:] = np.arange(seq_len - at)
    return {"x": x, "seg": seg, "pos": pos, "ends": ends}


def build_group_batch(groups: list[Group], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Several groups in one batch: packed rows, end positions, and the pairs with their weights, so that
    sum(weight * pair_loss) = mean over groups of (mean over the group's pairs): InstructGPT's K-wise loss."""
    convs, pairs, weights, group_of_pair = [], [], [], []
    for g_i, g in enumerate(groups):
        base = len(convs)
        convs += g.convs
        for a, b in g.pairs:
            pairs.append((base + a, base + b))
            weights.append(1.0 / (len(g.pairs) * len(groups)))
            group_of_pair.append(g_i)
    batch = build_score_rows(convs, seq_len, pad_id)
    batch["pairs"] = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    batch["pair_weight"] = np.asarray(weights, dtype=np.float32)
    return batch
