"""Generation with the calculator tool: the model calls `<<calc: EXPR>>`, the tool writes the value.

    comps = generate_with_calculator(engine, prompts, params)   # like engine.generate, values filled in
    for ev in stream_with_calculator(engine, prompt, params):   # like engine.stream for one prompt
        print(ev.delta, end="")

Each request generates with ">>" as an extra stop string. When it stops there inside an open call, the
calculator's answer (">>VALUE", tools/calculator.py) is appended to the answer so far and generation goes
on from prompt + answer, with the tokens already spent taken off `max_tokens`; a ">>" outside a call is
kept as text. At most `max_calls` calls per answer (later calls are closed with an error the model sees).
The final completion holds the whole answer (`text`, tool output included), the last round's finish
reason and that round's `token_ids`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from chatforge.engine import Completion, Engine, SamplingParams, StreamEvent
from chatforge.tools.calculator import CALL_END, answer_open_call

MAX_CALLS = 8


def _tool_text(text: str, c: Completion, params: SamplingParams, calls: int, max_calls: int) -> str | None:
    """What to append before generating on (None: the answer is finished)."""
    if c.stop_string != CALL_END:
        return None
    tool = answer_open_call(text)
    if tool is None:  # a literal ">>" outside a call: keep it (unless the caller asked to stop there)
        return None if CALL_END in params.stop else CALL_END
    return tool if calls < max_calls else f"{CALL_END}error: more than {max_calls} calls"


def _round_params(params: SamplingParams, spent: int) -> SamplingParams:
    return replace(params, stop=[*params.stop, CALL_END], max_tokens=params.max_tokens - spent)


def generate_with_calculator(engine: Engine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                             max_calls: int = MAX_CALLS) -> list[Completion]:
    """engine.generate with the tool: every round generates all unfinished answers in one batched call."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    texts, spent, calls = [""] * len(prompts), [0] * len(prompts), [0] * len(prompts)
    done: dict[int, Completion] = {}
    todo = list(range(len(prompts)))
    while todo:
        comps = engine.generate([prompts[i] + (engine.tok.encode(texts[i]) if texts[i] else []) for i in todo],
                                [_round_params(params[i], spent[i]) for i in todo])
        again = []
        for i, c in zip(todo, comps):
            texts[i] += c.text
            spent[i] += len(c.token_ids)
            tool = _tool_text(texts[i], c, params[i], calls[i], max_calls)
            if tool is not None and spent[i] < params[i].max_tokens:
                texts[i], calls[i] = texts[i] + tool, calls[i] + 1
                again.append(i)
            else:
                done[i] = replace(c, prompt_ids=prompts[i], text=texts[i])
        todo = again
    return [done[i] for i in range(len(prompts))]


def stream_with_calculator(engine: Engine, prompt: list[int], params: SamplingParams,
                           max_calls: int = MAX_CALLS) -> Iterator[StreamEvent]:
    """engine.stream for one prompt with the tool: the tool's text arrives as deltas like the model's."""
    text, spent, calls = "", 0, 0
    while True:
        for ev in engine.stream([prompt + (engine.tok.encode(text) if text else [])], _round_params(params, spent)):
            if not ev.finished:
                yield ev
                continue
            c = ev.completion
            text, spent = text + c.text, spent + len(c.token_ids)
            tool = _tool_text(text, c, params, calls, max_calls)
            if tool is None or spent >= params.max_tokens:
                yield replace(ev, completion=replace(c, prompt_ids=prompt, text=text))
                return
            yield replace(ev, finished=False, completion=None, delta=ev.delta + tool)
            text, calls = text + tool, calls + 1
