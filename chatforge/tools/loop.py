"""Generation with the calculator tool: the model calls `<<calc: EXPR>>`, the tool writes the value.

    comps = generate_with_calculator(engine, prompts, params)   # like engine.generate, values filled in
    for ev in stream_with_calculator(engine, prompt, params):   # like engine.stream for one prompt
        print(ev.delta, end="")
    answer = CalculatorAnswer(prompt, params, ctx)              # the state between rounds, for other loops

Each request generates with ">>" as an extra stop string. When it stops there inside an open call, the
calculator's answer (">>VALUE", tools/calculator.py) is appended to the answer so far and generation goes
on from prompt + answer, with the tokens already spent taken off `max_tokens`; a ">>" outside a call is
kept as text (and is no call). At most `max_calls` calls per answer (later calls are closed with an error the
model sees). The final completion holds the whole answer (`text`, tool output included), the last round's
finish reason ("length" when the tokens ran out at an unanswered call, or the next round would not fit the
context) and every round's generated
`token_ids` (the tool's text is not among them: the model didn't write it). The request's own stop strings
are matched in what the model writes within a round, not in the tool's values or across a round boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from chatforge.engine import Completion, Engine, SamplingParams, StreamEvent
from chatforge.tools.calculator import CALL_END, answer_open_call

MAX_CALLS = 8


@dataclass
class CalculatorAnswer:
    """One answer generated in rounds with the tool: what every caller of the loop keeps between rounds
    (the batched and streamed loops below, and the server's engine loop). `ctx`: the model's context; a
    next round that would not fit ends the answer, value included, as "length"."""
    prompt: list[int]
    params: SamplingParams
    ctx: int
    max_calls: int = MAX_CALLS
    text: str = ""
    ids: list[int] = field(default_factory=list)  # the model's tokens over all rounds
    calls: int = 0
    cut: bool = False  # ended early: tokens or context ran out at a call
    round_ids: list[int] = field(default_factory=list)  # the next round's prompt (set by take)

    def __post_init__(self) -> None:
        self.round_ids = list(self.prompt)

    @property
    def spent(self) -> int:
        return len(self.ids)

    def round_params(self) -> SamplingParams:
        """The request's settings with ">>" as a stop and the tokens already spent taken off max_tokens."""
        return replace(self.params, stop=[*self.params.stop, CALL_END], max_tokens=self.params.max_tokens - self.spent)

    def take(self, c: Completion, tok) -> tuple[str, bool]:
        """Take a finished round: (the text the tool appended, "" if none; whether another round follows, from
        `round_ids`). A round that stopped at ">>" inside an open call gets the calculator's ">>VALUE" (or, past
        `max_calls`, an error); a literal ">>" outside a call is kept as text (unless the caller asked to stop
        there) and is no call."""
        self.text, self.ids = self.text + c.text, self.ids + list(c.token_ids)
        if c.stop_string != CALL_END:
            return "", False
        tool = answer_open_call(self.text)
        is_call = tool is not None
        if not is_call:
            if CALL_END in self.params.stop:
                return "", False
            tool = CALL_END
        elif self.calls >= self.max_calls:
            tool = f"{CALL_END}error: more than {self.max_calls} calls"
        if self.spent >= self.params.max_tokens:
            self.cut = is_call
            return "", False
        self.text, self.calls = self.text + tool, self.calls + is_call
        self.round_ids = self.prompt + tok.encode(self.text)
        if len(self.round_ids) >= self.ctx:
            self.cut = True
            return tool, False
        return tool, True

    def final(self, c: Completion) -> Completion:
        """The last round's completion carrying the whole answer."""
        return replace(c, prompt_ids=self.prompt, text=self.text, token_ids=list(self.ids),
                       finish_reason="length" if self.cut else c.finish_reason)


def generate_with_calculator(engine: Engine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                             max_calls: int = MAX_CALLS) -> list[Completion]:
    """engine.generate with the tool: every round generates all unfinished answers in one batched call."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    ctx = engine.model.cfg.max_seq_len
    answers = [CalculatorAnswer(p, sp, ctx, max_calls) for p, sp in zip(prompts, params)]
    done: dict[int, Completion] = {}
    todo = list(range(len(prompts)))
    while todo:
        comps = engine.generate([answers[i].round_ids for i in todo], [answers[i].round_params() for i in todo])
        again = []
        for i, c in zip(todo, comps):
            if answers[i].take(c, engine.tok)[1]:
                again.append(i)
            else:
                done[i] = answers[i].final(c)
        todo = again
    return [done[i] for i in range(len(prompts))]


def stream_with_calculator(engine: Engine, prompt: list[int], params: SamplingParams,
                           max_calls: int = MAX_CALLS) -> Iterator[StreamEvent]:
    """engine.stream for one prompt with the tool: the tool's text arrives as deltas like the model's."""
    answer = CalculatorAnswer(prompt, params, engine.model.cfg.max_seq_len, max_calls)
    while True:
        for ev in engine.stream([answer.round_ids], answer.round_params()):
            if not ev.finished:
                yield ev
                continue
            tool, more = answer.take(ev.completion, engine.tok)
            if not more:
                yield replace(ev, completion=answer.final(ev.completion), delta=ev.delta + tool)
                return
            yield replace(ev, finished=False, completion=None, delta=ev.delta + tool)
