"""The data flywheel: what users said about the answers -> training data for the next SFT and reward model.

    chatforge feedback export --run runs/demo [--db URL] [--out runs/demo/feedback/export]
    chatforge pipeline --run runs/demo --with-feedback [--feedback-stages sft,rm,ppo]

Demonstrations (SFT format, `{"messages": [...]}`): every human correction, and every model answer rated
thumbs-up (unless the same user also ranked it below another answer).
Rankings (RM format, `{"prompt": [...], "responses": [...], "ranking": [...], "labeler": "feedback"}`):
- a user's ranking of a turn's answers (the latest one per turn), best first, tie tiers kept (the web
  page's "best of" choice is best > the others, tied);
- a correction over the answer it corrects;
- within a turn, thumbs-up answers over thumbs-down answers (a tie tier each).
Identical texts never form a pair. Each answer's prompt is the exact message list it answered.
"""

from __future__ import annotations

import json
from pathlib import Path

from chatforge.run import stage_dir

LABELER = "feedback"


def _prompt_of(conv: dict, turn: dict, answer: dict) -> list[dict]:
    if answer.get("prompt"):
        return answer["prompt"]
    # Posted without a prompt: rebuild it from the conversation (each earlier turn's preferred answer).
    msgs = [{"role": "system", "content": conv["system_prompt"]}] if conv.get("system_prompt") else []
    for t in conv["turns"]:
        if t["position"] >= turn["position"]:
            break
        msgs.append({"role": "user", "content": t["user"]})
        best = _preferred(t)
        if best is not None:
            msgs.append({"role": "assistant", "content": best["content"]})
    msgs.append({"role": "user", "content": turn["user"]})
    return msgs


def _tiers(ranking: list) -> list[list[str]]:
    return [t if isinstance(t, list) else [t] for t in ranking]


def _preferred(turn: dict) -> dict | None:
    by_id = {a["id"]: a for a in turn["answers"]}
    if turn["rankings"]:
        return by_id.get(_tiers(turn["rankings"][-1])[0][0])
    humans = [a for a in turn["answers"] if a["author"] == "human"]
    return humans[-1] if humans else (turn["answers"][-1] if turn["answers"] else None)


def _ranked_below(turn: dict) -> set[str]:
    if not turn["rankings"]:
        return set()
    return {a for tier in _tiers(turn["rankings"][-1])[1:] for a in tier}


def _record(prompt: list[dict], tiers: list[list[dict]]) -> dict | None:
    """A ranking record from tiers of answers (best tier first); duplicates texts collapse to one answer."""
    responses: list[str] = []
    ranking: list = []
    for tier in tiers:
        idx = []
        for a in tier:
            if a["content"] in responses:
                continue
            responses.append(a["content"])
            idx.append(len(responses) - 1)
        if idx:
            ranking.append(idx[0] if len(idx) == 1 else idx)
    if len(ranking) < 2:
        return None
    return {"prompt": prompt, "responses": responses, "ranking": ranking, "labeler": LABELER}


def feedback_records(conversations: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """(SFT demonstrations, RM ranking records, counts by kind) from `FeedbackStore.export_all()`."""
    sft, rankings = [], []
    stats = {"conversations": len(conversations), "turns": 0, "answers": 0, "sft_corrections": 0,
             "sft_upvoted": 0, "rank_user_rankings": 0, "rank_corrections": 0, "rank_ratings": 0}
    for conv in conversations:
        for turn in conv["turns"]:
            stats["turns"] += 1
            answers = turn["answers"]
            stats["answers"] += len(answers)
            by_id = {a["id"]: a for a in answers}
            below = _ranked_below(turn)
            for a in answers:
                good_model = a["author"] == "model" and a["rating"] == 1 and a["id"] not in below
                if (a["author"] == "human" or good_model) and a["content"].strip():
                    sft.append({"messages": [*_prompt_of(conv, turn, a), {"role": "assistant", "content": a["content"]}]})
                    stats["sft_corrections" if a["author"] == "human" else "sft_upvoted"] += 1
            if turn["rankings"]:
                tiers = [[by_id[i] for i in tier if i in by_id] for tier in _tiers(turn["rankings"][-1])]
                tiers = [t for t in tiers if t]
                rec = _record(_prompt_of(conv, turn, tiers[0][0]), tiers) if tiers else None
                if rec:
                    rankings.append(rec)
                    stats["rank_user_rankings"] += 1
            for a in answers:
                src = by_id.get(a.get("edited_from") or "")
                if a["author"] == "human" and src is not None:
                    rec = _record(_prompt_of(conv, turn, src), [[a], [src]])
                    if rec:
                        rankings.append(rec)
                        stats["rank_corrections"] += 1
            ups = [a for a in answers if a["rating"] == 1]
            downs = [a for a in answers if a["rating"] == -1]
            if ups and downs:
                rec = _record(_prompt_of(conv, turn, ups[0]), [ups, downs])
                if rec:
                    rankings.append(rec)
                    stats["rank_ratings"] += 1
    stats["sft_records"], stats["rm_records"] = len(sft), len(rankings)
    return sft, rankings, stats


def default_export_dir(run: str | Path) -> Path:
    return stage_dir(run, "feedback") / "export"


def export_feedback(run: str | Path, db: str | None = None, out: str | Path | None = None) -> dict:
    """Write `sft.jsonl` and `rankings.jsonl` (+ `stats.json`) from the run's feedback store."""
    from chatforge.serve.store import FeedbackStore, default_db_url

    store = FeedbackStore(db or default_db_url(run))
    sft, rankings, stats = feedback_records(store.export_all())
    out = Path(out) if out else default_export_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("sft.jsonl", sft), ("rankings.jsonl", rankings)):
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        tmp.replace(out / name)
    stats["out"] = str(out)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats
