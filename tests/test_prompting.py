"""Prompting helpers: the chain-of-thought request, few-shot prompts for base models, the CLI that uses them."""

from __future__ import annotations

import pytest

from chatforge import ChatforgeError
from chatforge.cli import main
from chatforge.prompting import COT, few_shot_text, read_shots, with_cot


def test_cot_asks_in_the_question_language_and_leaves_the_input_alone():
    msgs = [{"role": "user", "content": "A cage holds 3 heads."}, {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": "笼子里有鸡和兔。"}]
    out = with_cot(msgs)
    assert out[-1]["content"] == "笼子里有鸡和兔。" + COT["zh"] and out[0] == msgs[0]  # only the last question
    assert msgs[-1]["content"] == "笼子里有鸡和兔。"  # the caller's history is not changed
    assert with_cot([{"role": "user", "content": "2+2?"}])[0]["content"].endswith("Think step by step, then give the answer.")


def test_few_shot_text_and_shots_file(tmp_path):
    assert few_shot_text([("2+2?", "4"), ("3+3?", "6")], "5+5?") == \
        "Question: 2+2?\nAnswer: 4\n\nQuestion: 3+3?\nAnswer: 6\n\nQuestion: 5+5?\nAnswer:"
    f = tmp_path / "shots.jsonl"
    f.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"}\n', encoding="utf-8")
    with pytest.raises(ChatforgeError, match=r"shots.jsonl:2"):
        read_shots(f)
    f.write_text("", encoding="utf-8")
    with pytest.raises(ChatforgeError, match="no few-shot examples"):
        read_shots(f)
    with pytest.raises(ChatforgeError, match="cannot read"):
        read_shots(tmp_path / "missing.jsonl")


def test_sample_answers_a_question_after_the_shots(base_run, tmp_path, capsys):
    f = tmp_path / "shots.jsonl"
    f.write_text('{"question": "How many people live in Elqui?", "answer": "32033"}\n', encoding="utf-8")
    assert main(["sample", "--run", str(base_run), "--few-shot", str(f), "--max-new-tokens", "8",
                 "How many people live in Hasu?"]) == 0
    answer = capsys.readouterr().out.strip()
    assert "Question:" not in answer and "\n\n" not in answer  # it stopped where a next block would start
    assert main(["sample", "--run", str(base_run), "--few-shot", str(f)]) != 0  # no question: a clear error
    assert "--few-shot answers the question" in capsys.readouterr().err
