"""The safe calculator: right answers for arithmetic, refusal for everything else, and the tool loop that
answers a model's <<calc: EXPR>> calls during generation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chatforge.engine import Completion, SamplingParams, StreamEvent
from chatforge.tools.calculator import CalculatorError, answer_open_call, calculate
from chatforge.tools.loop import generate_with_calculator, stream_with_calculator


@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7), ("(40 - 12) * 3 / 4", 21), ("2 ** 10 + 7 % 3", 1025), ("-3 ** 2", -9), ("7 // 2", 3),
    ("0.1 + 0.2", 0.3), ("1 / 3", 1 / 3), ("2 ** -2", 0.25), ("43 × 2 − 86", 0), ("（5＋3）÷ 2", 4),
    ("17*4", 68), ("+5", 5), ("2.5e2", 250),
])
def test_arithmetic(expr, value):
    got = calculate(expr)
    assert got == value and type(got) is type(value)  # whole results are ints, the rest floats


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')", "open('/etc/passwd')", "x + 1", "(1).__class__", "[1, 2][0]",
    "'a' * 3", "1 < 2", "lambda: 1", "print(1)", "True + 1", "1 if 1 else 2", "{1: 2}", "1; 2", "",
    "2 ** 1000", "2 ** 0.5", "9" * 61 + " + 1", "-" * 40 + "1", "1 +", "1 / 0", "5 % 0", "0 ** -1",
    "1" + " + 1" * 200, "1e400", "1e400 - 1e400",
    # refused before they are computed (each took seconds, or crashed str(), before the bit limit)
    "((10**64)**64)**2", "(((9**64)**64)**64)**64", "((((9**64)**64)**64)**64)**2", "(2**64)**64 // 3",
])
def test_anything_but_bounded_arithmetic_is_refused(expr):
    with pytest.raises(CalculatorError):
        calculate(expr)


def test_an_open_call_at_the_end_of_the_text_gets_its_value():
    assert answer_open_call("43 heads: <<calc: 43*2") == ">>86"
    assert answer_open_call("so <<calc: (102 - 86) / 2 ") == ">>8"
    assert answer_open_call("<<calc: os.system(1)") == ">>error: only numbers and + - * / // % ** ( ) are allowed"
    assert answer_open_call("<<calc: 1+1>>2 done") is None  # the call was answered already
    assert answer_open_call("no call here") is None


class _Tok:
    def encode(self, text):
        return list(text.encode())


class ScriptedModel:
    """Stands in for the engine: each request writes its next scripted piece, stopping at ">>" when the piece
    is followed by one (as the engine does: the stop text is not returned). Records every round's prompts."""

    def __init__(self, pieces_per_request):
        self.tok, self.queues, self.rounds = _Tok(), [list(p) for p in pieces_per_request], []
        self.model = SimpleNamespace(cfg=SimpleNamespace(max_seq_len=10_000))  # the context the loops read

    def generate(self, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.rounds.append((prompts, params))
        out = []
        for prompt, p in zip(prompts, params):
            q = next(q for q in self.queues if q and q[0][0] == prompt[0])  # requests are told apart by their prompt
            piece, closes = q.pop(0)[1:]
            assert ">>" in p.stop
            out.append(Completion(prompt_ids=prompt, token_ids=list(range(len(piece))), text=piece,
                                  finish_reason="stop", stop_string=">>" if closes else None))
        return out

    def stream(self, prompts, params):
        (c,) = self.generate(prompts, params)
        yield StreamEvent(0, c.text, c.token_ids, finished=True, completion=c)


def test_the_tool_loop_fills_in_values_and_generates_on():
    model = ScriptedModel([
        [(1, "2 heads: <<calc: 43*2", True), (1, " legs; <<calc: os.x", True), (1, " ok", False)],
        [(2, "a >", True), (2, "> b", False)],  # a literal ">>" outside any call stays text
    ])
    params = SamplingParams(max_tokens=100, temperature=0.0)
    a, b = generate_with_calculator(model, [[1], [2]], params)
    assert a.text == ("2 heads: <<calc: 43*2>>86 legs; <<calc: os.x>>error: only numbers and + - * / // % ** ( ) "
                      "are allowed ok")
    assert b.text == "a >>>> b" and a.finish_reason == "stop" and a.prompt_ids == [1]
    second_prompts, second_params = model.rounds[1]
    assert second_prompts[0] == [1, *b"2 heads: <<calc: 43*2>>86"]  # the model reads the value the tool wrote
    assert second_params[0].max_tokens == 100 - len("2 heads: <<calc: 43*2")  # tokens already spent count
    model = ScriptedModel([[(1, "x <<calc: 6*7", True), (1, " y", False)]])
    deltas = [ev.delta for ev in stream_with_calculator(model, [1], params)]
    assert "".join(deltas) == "x <<calc: 6*7>>42 y"


def test_the_tool_loop_caps_calls():
    model = ScriptedModel([[(1, "<<calc: 1+1", True)] * 3 + [(1, ".", False)]])
    (c,) = generate_with_calculator(model, [[1]], SamplingParams(max_tokens=100), max_calls=2)
    assert c.text == "<<calc: 1+1>>2<<calc: 1+1>>2<<calc: 1+1>>error: more than 2 calls."


def test_the_servers_engine_loop_goes_on_under_the_same_key_or_stops_when_the_context_is_full():
    """scheduler._calculator_round: a round stopped at an open call is re-queued under its key with the value
    appended (the event is not final and carries the value as text); with no context left the answer ends
    there, value included, as "length"."""
    from chatforge.serve.scheduler import _calculator_round
    from chatforge.tools.loop import CalculatorAnswer

    added = []
    batch = SimpleNamespace(add=lambda key, prompt, sp, front=False: added.append((key, prompt, sp, front)))

    def finished_round(ctx, prompt):
        engine = SimpleNamespace(tok=_Tok(), model=SimpleNamespace(cfg=SimpleNamespace(max_seq_len=ctx)))
        tools = {7: CalculatorAnswer(prompt, SamplingParams(max_tokens=50), ctx)}
        c = Completion(prompt, [1, 2, 3], "x <<calc: 6*7", "stop", stop_string=">>")
        return _calculator_round(engine, batch, tools, StreamEvent(7, "7", [3], finished=True, completion=c)), tools

    ev, tools = finished_round(100, [1])
    assert not ev.finished and ev.delta == "7>>42" and 7 in tools
    assert added == [(7, [1, *b"x <<calc: 6*7>>42"], added[0][2], True)] and added[0][2].max_tokens == 47
    ev, tools = finished_round(len(b"x <<calc: 6*7>>42") + 1, [1])  # the next round's prompt would fill it
    assert ev.finished and ev.completion.finish_reason == "length" and ev.completion.text == "x <<calc: 6*7>>42"
    assert ev.delta == "7>>42"  # a streaming client gets the value too
    assert tools == {} and len(added) == 1

    def failing_add(key, prompt, sp, front=False):
        raise RuntimeError("simulated")

    batch.add = failing_add  # a round that can't be queued ends that answer only, with what it has
    ev, tools = finished_round(100, [1])
    assert ev.finished and ev.completion.text == "x <<calc: 6*7>>42" and ev.delta == "7>>42" and tools == {}


def test_literal_shift_signs_are_no_calls_and_running_out_at_a_call_is_length():
    model = ScriptedModel([[(1, "a >", True)] * 9 + [(1, " <<calc: 1+1", True), (1, " done", False)]])
    (c,) = generate_with_calculator(model, [[1]], SamplingParams(max_tokens=500), max_calls=1)
    assert c.text == "a >>>" * 9 + " <<calc: 1+1>>2 done"  # nine literal ">>" did not use up the one call
    model = ScriptedModel([[(1, "<<calc: 2*3", True)]])
    (c,) = generate_with_calculator(model, [[1]], SamplingParams(max_tokens=len("<<calc: 2*3")))
    assert c.text == "<<calc: 2*3" and c.finish_reason == "length"
