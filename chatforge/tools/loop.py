"""Generation with the calculator tool: the model calls `<<calc: EXPR>>`, the tool writes the value.

    comps = generate_with_calculator(engine, prompts, params)   # like engine.generate, values filled in
    for ev in stream_with_calculator(engine, prompt, params):   # like engine.stream for one prompt
        print(ev.delta, end="")
    answer = CalculatorAnswer(prompt, params)                   # the state between rounds, for other loops

Each request generates with ">>" as an extra stop string. When it stops there inside an open call, the
calculator's answer (">>VALUE", tools/calculator.py) is appended to the answer so far and generation goes
on from prompt + answer, with the tokens already spent taken off `max_tokens`; a ">>" outside a call is
kept as text (and is no call). At most `max_calls` calls per answer (later calls are closed with an error the
model sees). The final completion holds the whole answer (`text`, tool output included), the last round's
finish reason ("length" when the tokens ran out at an unanswered call) and every round's generated
`token_ids` (the tool's text is not among them: the model didn't write it). The request's own stop strings
are matched in what the model writes within a round, not in the tool's values or across a round boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from chatforge.engine import Completion, Engine, SamplingParams, StreamEvent
from chatforge.tools.calculator import CALL_END, answer_open_call

MAX_CALLS = 8


def _tool_text(text: str, c: Completion, params: SamplingParams, calls: int, max_calls: int) -> tuple[str | None, bool]:
    """(what to append before generating on — None: the answer is finished —, whether it answers a call)."""
    if c.stop_string != CALL_END:
        return None, False
    tool = answer_open_call(text)
    if tool is None:  # a literal ">>" outside a call: keep it (unless the caller asked to stop there)
        return (None if CALL_END in params.stop else CALL_END), False
    return (tool if calls < max_calls else f"{CALL_END}error: more than {max_calls} calls"), True


@dataclass
class CalculatorAnswer:
    """One answer generated in rounds with the tool: what every caller of the loop keeps between rounds
    (the batched and streamed loops below, and the server's engine loop)."""
    prompt: list[int]
    params: SamplingParams
    max_calls: int = MAX_CALLS
    text: str = ""
    ids: list[int] = field(default_factory=list)  # the model's tokens over all rounds
    calls: int = 0
    cut: bool = False  # max_tokens ran out at a call the tool had not answered yet

    @property
    def spent(self) -> int:
        return len(self.ids)

    def round_prompt(self, tok) -> list[int]:
        """The prompt of the next round: the question and the answer so far, tool values included."""
        return self.prompt + (tok.encode(self.text) if self.text else [])

    def round_params(self) -> SamplingParams:
        """The request's settings with ">>" as a stop and the tokens already spent taken off max_tokens."""
        return replace(self.params, stop=[*self.params.stop, CALL_END], max_tokens=self.params.max_tokens - self.spent)

    def take(self, c: Completion) -> str | None:
        """Take a finished round; the tool text to append before the next round, or None: the answer is done."""
        self.text, self.ids = self.text + c.text, self.ids + list(c.token_ids)
        tool, is_call = _tool_text(self.text, c, self.params, self.calls, self.max_calls)
        if tool is None or self.spent >= self.params.max_tokens:
            self.cut = tool is not None and is_call
            return None
        self.text, self.calls = self.text + tool, self.calls + is_call
        return tool

    def final(self, c: Completion) -> Completion:
        """The last round's completion carrying the whole answer."""
        return replace(c, prompt_ids=self.prompt, text=self.text, token_ids=list(self.ids),
                       finish_reason="length" if self.cut else c.finish_reason)


def generate_with_calculator(engine: Engine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                             max_calls: int = MAX_CALLS) -> list[Completion]:
    """engine.generate with the tool: every round generates all unfinished answers in one batched call."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    answers = [CalculatorAnswer(p, sp, max_calls) for p, sp in zip(prompts, params)]
    done: dict[int, Completion] = {}
    todo = list(range(len(prompts)))
    while todo:
        comps = engine.generate([answers[i].round_prompt(engine.tok) for i in todo],
                                [answers[i].round_params() for i in todo])
        again = []
        for i, c in zip(todo, comps):
            if answers[i].take(c) is None:
                done[i] = answers[i].final(c)
            else:
                again.append(i)
        todo = again
    return [done[i] for i in range(len(prompts))]


def stream_with_calculator(engine: Engine, prompt: list[int], params: SamplingParams,
                           max_calls: int = MAX_CALLS) -> Iterator[StreamEvent]:
    """engine.stream for one prompt with the tool: the tool's text arrives as deltas like the model's."""
    answer = CalculatorAnswer(prompt, params, max_calls)
    while True:
        for ev in engine.stream([answer.round_prompt(engine.tok)], answer.round_params()):
            if not ev.finished:
                yield ev
                continue
            tool = answer.take(ev.completion)
            if tool is None:
                yield replace(ev, completion=answer.final(ev.completion))
                return
            yield replace(ev, finished=False, completion=None, delta=ev.delta + tool)
