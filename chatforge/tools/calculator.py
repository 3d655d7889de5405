"""A safe calculator: arithmetic expressions only, evaluated from the syntax tree, never with `eval`.

    calculate("(40 - 12) * 3 / 4")        -> 21
    calculate("2 ** 10 + 7 % 3")          -> 1025
    calculate("__import__('os')")         -> CalculatorError: only numbers and + - * / // % ** ( ) ...
    answer_open_call("so <<calc: 17*4")    -> ">>68"     (what the tool writes after the model's call)

Allowed: integer and decimal literals, + - * / // % **, unary + and -, parentheses, and the typographic and
full-width signs a model writes in Chinese text (× ÷ − ＋ － ＊ ／ （ ）). Arithmetic is exact (fractions), so
0.1 + 0.2 is 0.3. Everything else — names, calls,
attributes, subscripts, strings, comparisons, lambdas — is refused before anything is computed. Limits keep
"arithmetic" from becoming a denial of service: expression length, exponent size, result size, nesting.

The tool protocol (tools/loop.py runs it; the world's arithmetic demonstrations teach it): the model writes
`<<calc: EXPR>>`, generation stops at ">>", `answer_open_call` computes the value, and the tool writes
">>VALUE" (or ">>error: REASON") after the call, so the text reads `<<calc: 17*4>>68 legs` and the model
continues from the value instead of computing it itself.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

MAX_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 60
MAX_DEPTH = 30
# every intermediate value's numerator and denominator stay under this many bits (~600 digits): without it
# ((9**64)**64)**64 computes for seconds on the server's engine thread before the result check refuses it
MAX_BITS = 2048

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SIGNS = str.maketrans({"×": "*", "÷": "/", "−": "-", "（": "(", "）": ")", "＋": "+", "－": "-", "＊": "*", "／": "/"})
OPEN_CALL = re.compile(r"<<calc:([^<>]*)$")  # a call the model has opened and not closed, at the end of its text
CALL_END = ">>"


class CalculatorError(ValueError):
    pass


def _bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def _bounded(value: Fraction) -> Fraction:
    if _bits(value) > MAX_BITS:
        raise CalculatorError(f"intermediate result larger than {MAX_BITS} bits")
    return value


def _number(node: ast.AST, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        try:
            return Fraction(str(node.value))  # exact decimals: 0.1 + 0.2 == 0.3
        except (ValueError, OverflowError):  # 1e400 parses as inf
            raise CalculatorError("number out of range") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(node.left, depth + 1), _number(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponents must be whole numbers up to {MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise CalculatorError("division by zero")
            if _bits(left) * abs(int(right)) > MAX_BITS:  # refused before computing, not after
                raise CalculatorError(f"intermediate result larger than {MAX_BITS} bits")
            return _bounded(left ** int(right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculatorError("division by zero")
        return _bounded(Fraction(_BINARY[type(node.op)](left, right)))
    raise CalculatorError("only numbers and + - * / // % ** ( ) are allowed")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression: an int when it is whole, else a float."""
    text = expression.translate(_SIGNS).strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    try:
        value = _number(tree.body, 0)
    except CalculatorError:
        raise
    except (ArithmeticError, ValueError) as e:  # a limit missed above must still be a refusal, not a crash
        raise CalculatorError(f"cannot compute this ({type(e).__name__})") from None
    if max(len(str(abs(value.numerator))), len(str(value.denominator))) > MAX_DIGITS:
        raise CalculatorError(f"result longer than {MAX_DIGITS} digits")
    return int(value) if value.denominator == 1 else float(value)


def format_value(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.10g}"


def written_call(expression: str, value) -> str:
    """A call and the tool's answer as they stand in a finished text (the world's worked solutions use it)."""
    return f"<<calc: {expression}{CALL_END}{value}"


def answer_open_call(text: str) -> str | None:
    """What the tool appends when `text` ends inside a `<<calc: EXPR` call: ">>VALUE" or ">>error: REASON";
    None when the text ends outside a call."""
    m = OPEN_CALL.search(text)
    if m is None:
        return None
    try:
        return CALL_END + format_value(calculate(m.group(1)))
    except CalculatorError as e:
        return f"{CALL_END}error: {e}"
