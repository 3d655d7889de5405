"""NLP by instruction: prompts in the world's phrasing, output checks, one stricter retry, JSON lines out."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from chatforge import ChatforgeError
from chatforge.cli import main
from chatforge.tasks import read_inputs, run_task, task_spec
from chatforge.tokenizer import Tokenizer


class ScriptedEngine:
    """Answers from a script, recording what it was asked (the tokenizer is real, the model is not)."""

    def __init__(self, tok, answers: list[str]):
        self.tok, self.answers, self.asked = tok, list(answers), []

    def generate(self, ids, params):
        self.asked.append(([self.tok.decode(p) for p in ids], params))
        return [SimpleNamespace(text=self.answers.pop(0)) for _ in ids]


def test_checks_accept_well_formed_answers_only():
    sentiment, extract = task_spec("sentiment"), task_spec("extract", ["time", "place"])
    assert sentiment.check("Negative", "x") == "negative" and sentiment.check("负面", "x") == "negative"
    assert sentiment.check("I am not sure", "x") is None
    assert extract.check('{"time": "9", "place": "Rennu"}', "x") == {"time": "9", "place": "Rennu"}
    assert extract.check('{"time": "9"}', "x") is None and extract.check("time: 9", "x") is None
    to_zh = task_spec("translate")
    assert to_zh.check("雷努位于琥珀河边。", "Rennu lies on the Amber River.") and not to_zh.check("Rennu.", "Rennu lies.")
    assert task_spec("translate", to="zh").prompt("雷努").startswith("Translate into Chinese")
    assert task_spec("summarize").check("Short.", "A much longer paragraph.") == "Short."
    assert task_spec("summarize").check("A much longer paragraph than it was.", "Long.") is None
    with pytest.raises(ChatforgeError, match="unknown task"):
        task_spec("poem")


def test_a_malformed_answer_is_retried_once_stricter_and_then_reported(prepared_run):
    tok = Tokenizer.load(prepared_run / "tokenizer")
    spec = task_spec("extract")
    engine = ScriptedEngine(tok, ['{"time": "9", "place": "Rennu", "person": "Fenelan"}', "time 9 Rennu",
                                  '{"time": "10"}',  # first round; the retry of the last two:
                                  "still no JSON", '{"time": "10", "place": "Kalo", "person": "Mika"}'])
    texts = ["Fenelan met Mika in Rennu at 9.", "Mika was in Kalo at 10.", "Mika left Kalo at 10."]
    out = run_task(engine, spec, texts)
    assert [(r["valid"], r["attempts"]) for r in out] == [(True, 1), (False, 2), (True, 2)]
    assert out[1]["raw"] == "still no JSON" and out[1]["output"] is None  # kept, with what the model said
    first, retry = engine.asked
    assert len(first[0]) == 3 and len(retry[0]) == 2  # only the two failures were asked again
    assert "Output only one JSON object" in retry[0][0] and "Output only" not in first[0][1]
    assert first[1].temperature == 0.0 and all(p.temperature > 0 for p in retry[1])  # greedy would repeat itself


def test_inputs_and_the_cli_end_to_end(base_run, monkeypatch, capsys):
    assert read_inputs(["plain line", "", '{"text": "a json line"}']) == ["plain line", "a json line"]
    with pytest.raises(ChatforgeError, match="line 1"):
        read_inputs(['{"txt": 1}'])
    monkeypatch.setattr("sys.stdin", io.StringIO("The Zota radio broke after two days.\n我的布戈收音机两天就坏了。\n"))
    assert main(["task", "sentiment", "--run", str(base_run), "--stage", "base"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["The Zota radio broke after two days.", "我的布戈收音机两天就坏了。"]
    assert all(set(r) == {"input", "output", "raw", "attempts", "valid"} and r["attempts"] in (1, 2) for r in rows)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["task", "sentiment", "--run", str(base_run), "--stage", "base"]) == 2
    assert "no input" in capsys.readouterr().err
