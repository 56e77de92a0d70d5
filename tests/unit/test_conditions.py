"""The safe condition language of the thresholds judge."""

from __future__ import annotations

import math

import pytest

from canary_operator.analysis.conditions import MAX_DEPTH, MAX_LENGTH, evaluate, validate

NAN = math.nan
INF = math.inf


@pytest.mark.parametrize(
    ("expression", "result", "expected"),
    [
        ("result < 0.05", 0.01, True),
        ("result < 0.05", 0.05, False),
        ("result <= 0.05", 0.05, True),
        ("result > 1", 2, True),
        ("result >= 2", 2, True),
        ("result == 3", 3.0, True),
        ("result != 3", 3.0, False),
        ("0 <= result < 1", 0.5, True),
        ("0 <= result < 1", 1.0, False),
        ("1 > result > -1 >= -2", 0, True),
        ("result > 1 and result < 3", 2, True),
        ("result > 1 and result < 3", 4, False),
        ("result < 1 or result > 3", 4, True),
        ("not result > 1", 0, True),
        ("not (result > 1 or result < -1)", 0.5, True),
        ("(result + 1) * 2 == 6", 2, True),
        ("result - 1 / 2 == 1.5", 2, True),
        ("-result < 0", 2, True),
        ("+result == 2", 2, True),
        ("result * 100 < 5", 0.04, True),
        ("abs(result) < 0.1", -0.05, True),
        ("abs(result - 10) <= 1e-9", 10, True),
        ("result > 1e3", 1001, True),
        ("result == 0x10", 16, True),
        ("isNaN(result)", NAN, True),
        ("isNaN(result)", 1.0, False),
        ("isInf(result)", INF, True),
        ("isInf(result)", -INF, True),
        ("isInf(result)", 1e308, False),
        ("isNaN(result) or result >= 0.95", NAN, True),
        ("isNaN(result) or result >= 0.95", 0.9, False),
        ("result > 1e308", INF, True),
        ("result < -1e308", -INF, True),
    ],
)
def test_evaluates(expression: str, result: float, expected: bool) -> None:
    validate(expression)
    assert evaluate(expression, result) is expected


@pytest.mark.parametrize(
    ("expression", "result", "expected"),
    [
        ("result >= 0.95 && result < 1", 0.97, True),
        ("result < 0.5 || result > 0.9", 0.95, True),
        ("!isNaN(result) && result != 1", 2, True),
        ("!(result > 1)", 2, False),
        ("!isNaN(result)", NAN, False),
    ],
)
def test_accepts_argo_spellings_of_boolean_operators(
    expression: str, result: float, expected: bool
) -> None:
    assert evaluate(expression, result) is expected


@pytest.mark.parametrize(
    "expression",
    ["result < 1", "result <= 1", "result > 1", "result >= 1", "result == 1", "result != 1",
     "0 < result < 2", "result == result", "result != result", "abs(result) >= 0"],
)  # fmt: skip
def test_every_comparison_with_nan_is_false(expression: str) -> None:
    assert evaluate(expression, NAN) is False


def test_not_of_a_nan_comparison_is_true() -> None:
    # Only the comparison itself is false; negating it is ordinary boolean logic.
    assert evaluate("not (result < 1)", NAN) is True


@pytest.mark.parametrize(
    ("expression", "result", "expected"),
    [
        ("result / 0 > 1e308", 1, True),  # +inf
        ("result / 0 < -1e308", -1, True),  # -inf
        ("isNaN(result / 0)", 0, True),  # 0/0
        ("isNaN(result / 0)", NAN, True),
        ("result / -0.0 < 0", 1, True),  # signed zero: -inf
        ("isInf(result * 1e308)", 1e308, True),  # overflow
        ("isNaN(result - result)", INF, True),  # inf - inf
    ],
)
def test_arithmetic_follows_ieee_754_and_never_raises(
    expression: str, result: float, expected: bool
) -> None:
    assert evaluate(expression, result) is expected


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 5e-324, INF, -INF, NAN])
@pytest.mark.parametrize(
    "expression",
    [
        "result / result > 0",
        "1 / result < 0",
        "result * result * result > 1",
        "abs(result) / 0 == result",
        "isNaN(result - 1 / result) or isInf(result / 0)",
    ],
)
def test_valid_expressions_never_raise(expression: str, value: float) -> None:
    assert isinstance(evaluate(expression, value), bool)


def test_accepts_integer_result() -> None:
    assert evaluate("result == 2", 2) is True


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("", "empty condition"),
        ("   ", "empty condition"),
        ("result >", "not a valid expression"),
        ("result > 1;", "not a valid expression"),
        ("result[0] >= 0.95", "write `result` where Argo uses `result[0]`"),
        ("result.real > 1", "attribute access (`.real`)"),
        ("().__class__.__bases__ == 1", "attribute access"),
        ("x > 1", "the name `x`"),
        ("true", "the name `true`"),
        ("True", "the literal True"),
        ("None == result", "the literal None"),
        ("'a' == result", "the literal 'a'"),
        ("1j > result", "the literal 1j"),
        ("__import__('os').system('true') == 0", "the call `__import__('os').system(...)`"),
        ("__import__('os') == 0", "the call `__import__(...)`"),
        ("print(result) == 0", "the call `print(...)`"),
        ("exec('1') == 0", "the call `exec(...)`"),
        ("math.isnan(result)", "the call `math.isnan(...)`"),
        ("isNaN(result, 1)", "takes exactly one argument"),
        ("isNaN(x=result)", "takes exactly one argument"),
        ("isNaN()", "takes exactly one argument"),
        ("result ** 2 > 1", "`**`"),
        ("9 ** 9 ** 9 ** 9 > result", "`**`"),
        ("result % 2 == 0", "`%`"),
        ("result // 2 == 0", "`//`"),
        ("~result > 0", "`~`"),
        ("result << 1 > 0", "LShift"),
        ("result is 1", "`Is`"),
        ("result in (1, 2)", "`In`"),
        ("(lambda: 1)() == 1", "the call"),
        ("lambda: result", "Lambda"),
        ("[result][0] > 1", "indexing"),
        ("[x for x in (1,)] == 1", "ListComp"),
        ("result if result else 0", "IfExp"),
        ("(result := 1) > 0", "NamedExpr"),
        ("result > 1, result < 2", "Tuple"),
        ("f'{result}' == 1", "JoinedStr"),
        ("result + 1", "computes a number, not a yes/no answer"),
        ("abs(result)", "computes a number"),
        ("1", "computes a number"),
        ("result > 1 and 2", "`and` needs a condition, but `2` is a number"),
        ("not result", "`not` needs a condition"),
        ("(result > 1) + 1 > 0", "`+` needs a number"),
        ("(result > 1) < 2", "a comparison needs a number"),
        ("-(result > 1) < 0", "unary minus needs a number"),
        ("isNaN(result > 1)", "isNaN() needs a number"),
        ("abs(isNaN(result)) > 0", "abs() needs a number"),
    ],
)
def test_refuses_with_a_clear_message(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        validate(expression)
    assert fragment in str(info.value)
    with pytest.raises(ValueError):
        evaluate(expression, 1.0)


def test_refuses_overlong_and_deeply_nested_expressions() -> None:
    with pytest.raises(ValueError, match="too long"):
        validate("result > 1 and " * (MAX_LENGTH // 10) + "result > 1")
    with pytest.raises(ValueError, match="nested too deeply"):
        validate("-" * (MAX_DEPTH + 1) + "result > 0")
    with pytest.raises(ValueError, match=r"not a valid expression|nested too deeply"):
        validate("(" * 300 + "result" + ")" * 300 + " > 0")
    validate("-" * (MAX_DEPTH - 3) + "result > 0")


def test_messages_quote_long_expressions_shortened() -> None:
    expression = "result > 1 and " * 20 + "y > 1"
    with pytest.raises(ValueError) as info:
        validate(expression)
    assert "the name `y`" in str(info.value)
    assert expression not in str(info.value)
    assert "..." in str(info.value)
