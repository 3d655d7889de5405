"""Prompting without training: chain-of-thought instructions for chat models, few-shot prompts for base models.

    with_cot(messages)                      # the last user turn also asks for steps, in its own language
    few_shot_text([("2+2?", "4")], "3+5?")  # "Question: 2+2?\nAnswer: 4\n\nQuestion: 3+5?\nAnswer:"

    chatforge chat   --run runs/demo --cot                      # every question asks for step-by-step reasoning
    chatforge sample --run runs/demo --stage base --few-shot shots.jsonl "How many people live in Elqui?"

A shots file is JSON lines {"question": ..., "answer": ...}. The few-shot form is the one the world's worked
problems and the eval's base-model prompts use ("Question:" / "Answer:"), and generation stops where the
model would start the next block (FEW_SHOT_STOPS). The chain-of-thought phrasing is the one the eval's
arithmetic_cot items carry, so `--cot` in chat asks exactly what the suite measures.
"""

from __future__ import annotations

import json
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.data.clean.text import is_chinese

COT = {"en": " Think step by step, then give the answer.", "zh": "请一步一步思考，然后给出答案。"}
FEW_SHOT_STOPS = ["\n\n", "\nQuestion:"]  # a base model's answer ends where its next block would start


def with_cot(messages: list[dict]) -> list[dict]:
    """The conversation with the chain-of-thought request added to its last user message."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] += COT["zh" if is_chinese(m["content"]) else "en"]
            break
    return out


def few_shot_text(shots: list[tuple[str, str]], question: str) -> str:
    blocks = [f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots]
    return "".join(blocks) + f"Question: {question}\nAnswer:"


def read_shots(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) pairs of a JSON-lines file; a bad line is an error naming it."""
    from chatforge.textio import nonblank_lines

    try:
        lines = nonblank_lines(path)
    except OSError as e:
        raise ChatforgeError(f"{path}: cannot read few-shot examples ({e})") from None
    shots = []
    for i, line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatforgeError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not (isinstance(r, dict) and isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)):
            raise ChatforgeError(f"{path}:{i}: expected {{\"question\": str, \"answer\": str}}")
        shots.append((r["question"], r["answer"]))
    if not shots:
        raise ChatforgeError(f"{path}: no few-shot examples")
    return shots
