"""Self-consistency (Wang et al., 2022): sample k reasoning paths, keep the answer most of them reach.

    chatforge eval --run runs/demo --stage sft --tasks arithmetic_cot --self-consistency 8

`answer_key` reads the final answer out of a prediction the way the item's scorer does (the counts of a
chickens-and-rabbits answer, the last number of a numeric one, the normalised text otherwise);
`vote` returns the prediction whose answer the most samples share (ties: the answer reached first), or
the first sample when none states an answer. The suite reports it as its own row, `<task>@sc<k>`, next
to the greedy score, so the gain is measured on the same items in the same run.
"""

from __future__ import annotations

from collections import Counter

from chatforge.engine import Engine, SamplingParams
from chatforge.eval.scorers import extract_counts, extract_final_number, normalize

SC_TASKS = ("arithmetic_cot", "arithmetic_direct")


def answer_key(pred: str, item: dict) -> tuple | None:
    """The answer a prediction commits to, comparable across samples; None when it states none."""
    if item["scorer"] == "counts":
        counts = extract_counts(pred, item["labels"])
        return tuple(sorted(counts.items())) if len(counts) == len(item["labels"]) else None
    if item["scorer"] == "numeric":
        n = extract_final_number(pred)
        return None if n is None else (n,)
    text = normalize(pred)
    return (text,) if text else None


def vote(preds: list[str], item: dict) -> str:
    keys = [answer_key(p, item) for p in preds]
    tally = Counter(k for k in keys if k is not None)
    if not tally:
        return preds[0]
    best = max(tally.values())
    winner = next(k for k in keys if k is not None and tally[k] == best)  # ties: the first answer reached
    return preds[keys.index(winner)]


def self_consistent_answers(engine: Engine, prompts: list[list[int]], items: list[dict], k: int, max_tokens: int,
                            temperature: float = 0.7, seed: int = 0, stop: list[str] | None = None) -> list[str]:
    """One voted answer per item from k seeded samples each (all k·n sequences through one batched call)."""
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=1.0, seed=seed + 1000 * i + j,
                             stop=list(stop or []))
              for i in range(len(items)) for j in range(k)]
    comps = engine.generate([p for p in prompts for _ in range(k)], params)
    texts = [c.text.strip() for c in comps]
    return [vote(texts[i * k:(i + 1) * k], item) for i, item in enumerate(items)]
