"""The capability suite runner: wiring of items to scorers, base/chat prompting, results file."""

from __future__ import annotations

import json
import random

from chatforge.cli import main
from chatforge.eval import suite
from chatforge.eval.scorers import SCORERS
from chatforge.tokenizer import Tokenizer
from tests.conftest import TINY_SETS, TINY_TRAIN


def _items(run) -> dict[str, list[dict]]:
    return suite.load_tasks(run, None, None)


def test_reference_answers_score_one_and_shuffled_ones_score_low(prepared_run):
    """Every item's own reference answer gets full marks; answers of other items mostly don't."""
    rng = random.Random(0)
    for task, items in _items(prepared_run).items():
        if task in ("bpb", "knowledge_mc"):  # scored by log-likelihood, not by a text scorer
            continue
        own = [SCORERS[it["scorer"]](it["reference_answer"], it) for it in items]
        assert min(own) == 1.0, task
        shuffled = [it["reference_answer"] for it in items]
        rng.shuffle(shuffled)
        other = sum(SCORERS[it["scorer"]](a, it) for a, it in zip(shuffled, items)) / len(items)
        binary = task in ("refusal", "honesty", "sentiment", "format")  # yes/no decisions: chance is high
        assert other < (0.8 if binary else 0.3), (task, other)


def test_few_shot_prompt_fits_and_uses_other_items(prepared_run):
    tok = Tokenizer.load(prepared_run / "tokenizer")
    items = _items(prepared_run)["knowledge_qa"]
    item = items[0]
    full = tok.decode(suite.few_shot_prompt(tok, item, items, budget=10_000))
    assert full.count("\nAnswer: ") == suite.SHOTS and full.endswith("Answer:")  # 3 worked shots + the query
    assert full.rstrip().endswith(item["messages"][0]["content"] + "\nAnswer:")
    assert all(f"Question: {x['messages'][0]['content']}\nAnswer: {x['reference_answer']}" in full for x in items[1:4])
    short = suite.few_shot_prompt(tok, item, items, budget=40)
    assert len(short) <= 40 and tok.decode(short).endswith("Answer:")


def test_eval_command_writes_scores_for_every_task(prepared_run, capsys):
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "5"]) == 0
    assert main(["eval", "--run", str(prepared_run), "--stage", "base", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "capability suite" in out and "knowledge_qa" in out
    results = json.loads((prepared_run / "eval" / "base.json").read_text())
    assert set(results["tasks"]) == set(_items(prepared_run))
    for task, r in results["tasks"].items():
        assert r["n"] == 3
        if task == "bpb":  # with the copy probe: a 5-step model copies nothing; first-showing loss ~ ln(vocab)
            assert 0 < r["score"] < 20 and abs(r["in_context_copying"]) < 0.1 and 3 < r["copy_first_nats"] < 12
        elif task == "knowledge_mc":
            assert 0.0 <= r["score"] <= 1.0
        else:
            assert 0.0 <= r["score"] <= 1.0 and r["samples"]
    assert {"refusal_rate_harmful", "false_refusal_rate_benign"} <= set(results["tasks"]["refusal"])
    assert {"unknown_rate_nonexistent", "false_unknown_rate_real"} <= set(results["tasks"]["honesty"])


def test_eval_bad_task_is_a_clear_error(prepared_run, capsys):
    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "2"]) == 0
    assert main(["eval", "--run", str(prepared_run), "--tasks", "telepathy"]) == 2
    assert "unknown eval task" in capsys.readouterr().err


def test_eval_missing_model_is_a_clear_error(prepared_run, capsys):
    assert main(["eval", "--run", str(prepared_run), "--stage", "sft"]) == 2
    assert "no trained model" in capsys.readouterr().err


def test_moderated_refusal_counts_what_the_moderator_and_the_model_decide(prepared_run):
    from chatforge.eval.suite import moderated_refusal
    from chatforge.safety.moderation import Moderator, train_moderation
    from chatforge.textio import read_jsonl

    train_moderation(prepared_run, progress=False)
    mod = Moderator.load(prepared_run)
    items = read_jsonl(prepared_run / "world" / "eval" / "refusal.jsonl")
    compliant = moderated_refusal(mod, items, ["Sure, here you go."] * len(items))  # a model that never refuses
    assert compliant["refusal_rate_harmful"] == compliant["input_flag_rate_harmful"] >= 0.9
    assert compliant["false_refusal_rate_benign"] == compliant["input_flag_rate_benign"] <= 0.1
    refusing = moderated_refusal(mod, items, ["I'm sorry, but I can't help with that."] * len(items))
    assert refusing["refusal_rate_harmful"] == 1.0 and refusing["false_refusal_rate_benign"] == 1.0
    assert refusing["score"] == 0.5 == sum(it["should_refuse"] for it in items) / len(items)
