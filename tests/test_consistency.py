"""Self-consistency: answers read like the scorers read them, the majority wins, and the suite reports it."""

from __future__ import annotations

from chatforge.eval.consistency import answer_key, vote

CAGE = {"scorer": "counts", "labels": {"chickens": ["chickens", "hens"], "rabbits": ["rabbits", "bunnies"]},
        "counts": {"chickens": 14, "rabbits": 37}}


def test_answer_keys_follow_the_scorer():
    assert answer_key("Answer: 14 chickens, 37 rabbits.", CAGE) == answer_key("so 37 bunnies and 14 hens", CAGE)
    assert answer_key("Answer: 14 chickens.", CAGE) is None  # half an answer commits to nothing
    assert answer_key("so the total is 42.", {"scorer": "numeric"}) == (42.0,)
    assert answer_key("no number here", {"scorer": "numeric"}) is None


def test_the_majority_answer_wins_ties_go_to_the_first_and_silence_falls_back():
    preds = ["Answer: 10 chickens, 41 rabbits.", "Answer: 14 chickens, 37 rabbits.", "nonsense",
             "so 37 rabbits and 14 chickens", "Answer: 10 chickens, 41 rabbits.", "Answer: 14 hens, 37 bunnies."]
    assert vote(preds, CAGE) == preds[1]  # 3 votes for 14/37 against 2 for 10/41; its first wording is kept
    assert vote(preds[:2], CAGE) == preds[0]  # 1-1: the answer reached first
    assert vote(["nothing", "still nothing"], CAGE) == "nothing"


def test_suite_reports_a_self_consistency_row_next_to_greedy(base_run):
    from chatforge.eval.suite import score_model
    from chatforge.model import load_model
    from chatforge.tokenizer import Tokenizer

    model, tok = load_model(base_run / "base"), Tokenizer.load(base_run / "base")
    a = score_model(base_run, model, tok, chat=False, tasks=["arithmetic_cot", "arithmetic_direct"], limit=4,
                    progress=False, self_consistency=3)
    b = score_model(base_run, model, tok, chat=False, tasks=["arithmetic_cot"], limit=4, progress=False,
                    self_consistency=3)
    assert {"arithmetic_cot", "arithmetic_cot@sc3", "arithmetic_direct@sc3"} <= set(a["tasks"])
    row = a["tasks"]["arithmetic_cot@sc3"]
    assert row["n"] == 4 and 0.0 <= row["score"] <= 1.0 and "majority" in row["metric"]
    assert row["samples"] == b["tasks"]["arithmetic_cot@sc3"]["samples"]  # seeded: the same samples, the same vote
    plain = score_model(base_run, model, tok, chat=False, tasks=["arithmetic_cot"], limit=4, progress=False)
    assert set(plain["tasks"]) == {"arithmetic_cot"}  # off by default
