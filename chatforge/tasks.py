"""Classic NLP tasks done by instruction on the chat model, with checked, structured output.

    echo "The Zota radio broke after two days." | chatforge task sentiment --run runs/demo
    chatforge task extract   --run runs/demo --fields time,place,person < sentences.txt
    chatforge task translate --run runs/demo --to zh < english.txt
    chatforge task summarize --run runs/demo < paragraphs.jsonl          # .jsonl lines with "text" work too

Each input line (or the `text` of a JSON line) becomes one prompt in the phrasing the world's
demonstrations use. The answer is checked — sentiment: says positive or negative; extract: one JSON
object with exactly the asked keys; translate: written in the target language; summarize: non-empty and
shorter than the input — and a failed answer is asked again once with a stricter instruction (sampled,
since greedy decoding would repeat itself). Output is one JSON line per input: {"input", "output" (the
label, the object, the text), "valid", "attempts", "raw"}; an answer still invalid after the retry is
reported with valid: false and its raw text, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chatforge import ChatforgeError
from chatforge.data.clean.text import is_chinese as _zh
from chatforge.engine import Engine, SamplingParams
from chatforge.eval.scorers import parse_json_object, sentiment_label


@dataclass
class TaskSpec:
    prompt: Callable[[str], str]            # input text -> the user message
    stricter: str                           # appended on the retry
    check: Callable[[str, str], object]     # (answer, input) -> structured output, or None when invalid
    max_tokens: int = 64


def task_spec(name: str, fields: list[str] | None = None, to: str | None = None) -> TaskSpec:
    if name == "sentiment":
        return TaskSpec(lambda t: (f"这条评论是正面的还是负面的？\n\n{t}" if _zh(t) else
                                   f"Is this review positive or negative?\n\n{t}"),
                        " Answer with one word: positive or negative.",
                        lambda a, t: sentiment_label(a), 8)
    if name == "extract":
        keys = fields or ["time", "place", "person"]

        def check(answer: str, _t: str):
            obj = parse_json_object(answer)
            return obj if obj is not None and sorted(obj) == sorted(keys) else None

        listed = ", ".join(keys)
        return TaskSpec(lambda t: (f"从这句话中提取{listed}，用 JSON 输出，键为 {listed}。\n\n{t}" if _zh(t) else
                                   f"Extract the {listed} from this sentence as JSON with keys {listed}.\n\n{t}"),
                        f" Output only one JSON object with exactly the keys {listed}.", check, 80)
    if name == "translate":
        def target(t: str) -> str:
            return to or ("en" if _zh(t) else "zh")

        return TaskSpec(lambda t: (f"把这句话翻译成英文：{t}" if target(t) == "en" else f"Translate into Chinese: {t}"),
                        " Write only the translation.",
                        lambda a, t: a.strip() if a.strip() and _zh(a) == (target(t) == "zh") else None, 96)
    if name == "summarize":
        return TaskSpec(lambda t: (f"用一句话概括：\n\n{t}" if _zh(t) else f"Summarize in one sentence:\n\n{t}"),
                        " Use one short sentence.",
                        lambda a, t: a.strip() if 0 < len(a.strip()) < len(t.strip()) else None, 80)
    raise ChatforgeError(f"unknown task {name!r}; expected sentiment, extract, translate or summarize")


def read_inputs(lines: Iterable[str]) -> list[str]:
    """Plain lines, or JSON lines with a "text" string; blank lines skipped."""
    out = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ChatforgeError(f"input line {n}: starts like JSON but isn't valid JSON") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ChatforgeError(f"input line {n}: a JSON line needs a \"text\" string")
            out.append(rec["text"])
        else:
            out.append(line)
    return out


def run_task(engine: Engine, spec: TaskSpec, texts: list[str], seed: int = 0) -> list[dict]:
    """Answer every input (batched); inputs whose answer fails the check are asked once more, stricter."""
    tok = engine.tok

    def ask(prompts: list[str], params: SamplingParams | list[SamplingParams]) -> list[str]:
        ids = [tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
        return [c.text.strip() for c in engine.generate(ids, params)]

    first = ask([spec.prompt(t) for t in texts], SamplingParams(max_tokens=spec.max_tokens, temperature=0.0))
    results = [{"input": t, "output": spec.check(a, t), "raw": a, "attempts": 1} for t, a in zip(texts, first)]
    retry = [i for i, r in enumerate(results) if r["output"] is None]
    if retry:
        again = ask([spec.prompt(texts[i]) + spec.stricter for i in retry],
                    [SamplingParams(max_tokens=spec.max_tokens, temperature=0.7, seed=seed + i) for i in retry])
        for i, a in zip(retry, again):
            results[i].update(output=spec.check(a, texts[i]), raw=a, attempts=2)
    for r in results:
        r["valid"] = r["output"] is not None
    return results
