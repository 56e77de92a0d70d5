"""Safe evaluation of Argo-Rollouts-style conditions on one number, e.g. ``result < 0.05``.

The expression is parsed with :mod:`ast` and only a small, typed language is accepted:

* the name ``result`` (the measured value), int and float literals;
* comparisons ``< <= > >= == !=`` (chained ones too: ``0 <= result < 1``);
* ``and`` / ``or`` / ``not`` (Argo's ``&&`` / ``||`` / ``!`` are accepted as spellings
  of them), parentheses;
* unary minus and plus, ``+ - * /``;
* the functions ``isNaN(x)``, ``isInf(x)`` (either sign) and ``abs(x)``.

Nothing else parses: no attribute access, subscripts (``result[0]``), other names,
other calls, strings, lambdas, ``**``. The expression is also type-checked: arithmetic
and comparisons take numbers, ``and``/``or``/``not`` take conditions, and the whole
expression must be a condition.

Numbers follow IEEE 754: ``x / 0`` is ``inf`` (or ``nan`` for ``0 / 0``), overflow gives
``inf``; evaluating a valid expression never raises. **Every comparison with a NaN
operand is false, ``!=`` included**, so a NaN result never satisfies a condition by
accident; test for it explicitly with ``isNaN(result)``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Final

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "evaluate", "validate"]

MAX_LENGTH: Final = 1000
"""Longest accepted expression, in characters."""
MAX_DEPTH: Final = 32
"""Deepest accepted nesting of the expression tree (bounds recursion when evaluating)."""

_NAME: Final = "result"
_FUNCTIONS: Final[dict[str, Callable[[float], float | bool]]] = {
    "isNaN": math.isnan,
    "isInf": math.isinf,
    "abs": abs,
}
_BOOL_FUNCTIONS: Final = frozenset({"isNaN", "isInf"})

_COMPARE: Final[dict[type[ast.cmpop], Callable[[float, float], bool]]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ARITHMETIC: Final[dict[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}

# Argo (expr-lang) spellings of the boolean operators. Safe as plain text rewrites
# because the language has no strings in which they could appear.
_ARGO_SPELLINGS: Final = ((re.compile(r"&&"), " and "), (re.compile(r"\|\|"), " or "))
_ARGO_NOT: Final = re.compile(r"!(?!=)")

_NUMBER = "number"
_CONDITION = "condition"

Evaluator = Callable[[float], float | bool]


def validate(expression: str) -> None:
    """Raise :class:`ValueError` with a clear message unless ``expression`` is a valid
    condition on ``result``."""
    _compile(expression)


def evaluate(expression: str, result: float) -> bool:
    """Evaluate the condition ``expression`` with ``result`` bound to ``result``.

    Raises :class:`ValueError` if the expression is invalid (see :func:`validate`).
    """
    return bool(_compile(expression)(float(result)))


@lru_cache(maxsize=256)
def _compile(expression: str) -> Evaluator:
    if not isinstance(expression, str):
        raise ValueError(f"a condition must be a string, not {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise ValueError("empty condition: write an expression on `result`, e.g. `result < 0.05`")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"condition is too long ({len(text)} characters; at most {MAX_LENGTH})")
    source = _from_argo_spelling(text).strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ValueError(
            f"condition {_shown(text)!r} is not a valid expression: {exc.msg}"
        ) from None
    except (RecursionError, MemoryError):
        raise ValueError(f"condition {_shown(text)!r} is nested too deeply") from None
    kind, fn = _Compiler(text).visit(tree.body)
    if kind != _CONDITION:
        raise ValueError(
            f"condition {_shown(text)!r} computes a number, not a yes/no answer; "
            "compare it, e.g. `result < 0.05`"
        )
    return fn


def _shown(text: str) -> str:
    """The expression as quoted in messages (long ones shortened)."""
    return text if len(text) <= 80 else text[:77] + "..."


def _from_argo_spelling(text: str) -> str:
    for pattern, replacement in _ARGO_SPELLINGS:
        text = pattern.sub(replacement, text)
    return _ARGO_NOT.sub(" not ", text)


class _Compiler:
    """Turns an allowed AST node into (kind, closure); refuses anything else."""

    def __init__(self, text: str) -> None:
        self.text = _shown(text)
        self.depth = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"condition {self.text!r}: {what} is not allowed")

    def visit(self, node: ast.expr) -> tuple[str, Evaluator]:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ValueError(
                    f"condition {self.text!r} is nested too deeply (at most {MAX_DEPTH} levels)"
                )
            return self.node(node)
        finally:
            self.depth -= 1

    def node(self, node: ast.expr) -> tuple[str, Evaluator]:
        match node:
            case ast.Name(id=name):
                return self.name(name)
            case ast.Constant(value=value):
                return self.constant(value)
            case ast.UnaryOp(op=op, operand=operand):
                return self.unary(op, operand)
            case ast.BinOp(left=left, op=op, right=right):
                return self.binary(left, op, right)
            case ast.BoolOp(op=op, values=values):
                return self.boolean(op, values)
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                return self.compare(left, ops, comparators)
            case ast.Call():
                return self.call(node)
            case ast.Subscript():
                raise ValueError(
                    f"condition {self.text!r}: indexing (`[...]`) is not allowed; `result` is "
                    "a single number here, so write `result` where Argo uses `result[0]`"
                )
            case ast.Attribute(attr=attr):
                raise self.fail(f"attribute access (`.{attr}`)")
            case _:
                raise self.fail(f"`{ast.unparse(node)}` ({type(node).__name__})")

    def name(self, name: str) -> tuple[str, Evaluator]:
        if name != _NAME:
            raise self.fail(f"the name `{name}` (only `{_NAME}` is defined)")
        return _NUMBER, lambda result: result

    def constant(self, value: object) -> tuple[str, Evaluator]:
        # bool is an int subclass: refuse True/False explicitly.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"the literal {value!r} (only numbers)")
        try:
            number = float(value)
        except OverflowError:
            raise self.fail("an integer literal this large") from None
        return _NUMBER, lambda _result: number

    def expect(self, node: ast.expr, kind: str, where: str) -> Evaluator:
        found, fn = self.visit(node)
        if found != kind:
            raise ValueError(
                f"condition {self.text!r}: {where} needs a {kind}, "
                f"but `{ast.unparse(node)}` is a {found}"
            )
        return fn

    def unary(self, op: ast.unaryop, operand: ast.expr) -> tuple[str, Evaluator]:
        if isinstance(op, ast.Not):
            inner = self.expect(operand, _CONDITION, "`not`")
            return _CONDITION, lambda result: not inner(result)
        if isinstance(op, ast.USub):
            value = self.expect(operand, _NUMBER, "unary minus")
            return _NUMBER, lambda result: -value(result)
        if isinstance(op, ast.UAdd):
            value = self.expect(operand, _NUMBER, "unary plus")
            return _NUMBER, value
        raise self.fail("the operator `~`")

    def binary(self, left: ast.expr, op: ast.operator, right: ast.expr) -> tuple[str, Evaluator]:
        symbol = _ARITHMETIC.get(type(op))
        if symbol is None:
            names = {ast.Pow: "`**`", ast.Mod: "`%`", ast.FloorDiv: "`//`"}
            raise self.fail(f"the operator {names.get(type(op), type(op).__name__)}")
        lhs = self.expect(left, _NUMBER, f"`{symbol}`")
        rhs = self.expect(right, _NUMBER, f"`{symbol}`")
        return _NUMBER, lambda result: _arith(symbol, lhs(result), rhs(result))

    def boolean(self, op: ast.boolop, values: list[ast.expr]) -> tuple[str, Evaluator]:
        word = "and" if isinstance(op, ast.And) else "or"
        parts = [self.expect(v, _CONDITION, f"`{word}`") for v in values]
        if word == "and":
            return _CONDITION, lambda result: all(p(result) for p in parts)
        return _CONDITION, lambda result: any(p(result) for p in parts)

    def compare(
        self, left: ast.expr, ops: list[ast.cmpop], comparators: list[ast.expr]
    ) -> tuple[str, Evaluator]:
        funcs: list[Callable[[float, float], bool]] = []
        for op in ops:
            func = _COMPARE.get(type(op))
            if func is None:
                raise self.fail(f"the comparison `{type(op).__name__}` (use < <= > >= == !=)")
            funcs.append(func)
        operands = [self.expect(n, _NUMBER, "a comparison") for n in [left, *comparators]]

        def run(result: float) -> bool:
            values = [fn(result) for fn in operands]
            for func, a, b in zip(funcs, values, values[1:], strict=False):
                if math.isnan(a) or math.isnan(b) or not func(a, b):
                    return False
            return True

        return _CONDITION, run

    def call(self, node: ast.Call) -> tuple[str, Evaluator]:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            known = ", ".join(f"{f}(x)" for f in _FUNCTIONS)
            raise self.fail(f"the call `{ast.unparse(node.func)}(...)` (functions: {known})")
        name = node.func.id
        if node.keywords or len(node.args) != 1:
            raise ValueError(f"condition {self.text!r}: {name}() takes exactly one argument")
        arg = self.expect(node.args[0], _NUMBER, f"{name}()")
        func = _FUNCTIONS[name]
        kind = _CONDITION if name in _BOOL_FUNCTIONS else _NUMBER
        return kind, lambda result: func(float(arg(result)))


def _arith(symbol: str, a: float | bool, b: float | bool) -> float:
    """IEEE 754 arithmetic (Python raises on division by zero; floats overflow to inf)."""
    x, y = float(a), float(b)
    if symbol == "+":
        return x + y
    if symbol == "-":
        return x - y
    if symbol == "*":
        return x * y
    if y == 0.0:
        if x == 0.0 or math.isnan(x):
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)
    return x / y
