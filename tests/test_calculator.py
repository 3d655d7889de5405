"""The safe calculator: right answers for arithmetic, refusal for everything else, tool calls in text."""

from __future__ import annotations

import pytest

from chatforge.tools.calculator import CalculatorError, calculate, run_tool_calls


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
])
def test_anything_but_bounded_arithmetic_is_refused(expr):
    with pytest.raises(CalculatorError):
        calculate(expr)


def test_tool_calls_in_model_text_get_their_results():
    text = "43 heads: <<calc: 43*2>> legs if all hens; <<calc: (102 - 86) / 2>> rabbits. <<calc: os.system(1)>>"
    assert run_tool_calls(text) == ("43 heads: <<calc: 43*2 = 86>> legs if all hens; <<calc: (102 - 86) / 2 = 8>> "
                                    "rabbits. <<calc: os.system(1) = error: only numbers and + - * / // % ** ( ) "
                                    "are allowed>>")
    assert run_tool_calls("done <<calc: 1+1 = 2>>") == "done <<calc: 1+1 = 2>>"  # answered calls stay as they are
