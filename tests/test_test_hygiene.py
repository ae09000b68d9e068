"""Tests that bite: a `pytest.raises` of a broad exception type must say which error it means.

`pytest.raises(ValueError)` alone passes when the code raises a ValueError for the wrong
reason (numpy refusing a shape, a typo in the test's own arguments), so the check it means
to pin down can break unnoticed. Every such call must carry `match=` with the intended
message. This scans the source of every test module (an AST walk: no test is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

#: Exception types so common that the type alone says nothing about which check failed.
BROAD = frozenset(
    {
        "BaseException",
        "Exception",
        "ValueError",
        "TypeError",
        "KeyError",
        "RuntimeError",
        "AssertionError",
        "OSError",
        "IOError",  # an alias of OSError
        "EnvironmentError",  # an alias of OSError
    }
)


def _type_name(node: ast.expr) -> str | None:
    """`ValueError` or `builtins.ValueError` -> "ValueError"; anything else -> None."""
    if isinstance(node, ast.Name):
        return node.id
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "builtins"
    ):
        return node.attr
    return None


def _is_raises(func: ast.expr) -> bool:
    """`pytest.raises(...)`, or `raises(...)` as imported with `from pytest import raises`."""
    if isinstance(func, ast.Attribute):
        return (
            func.attr == "raises" and isinstance(func.value, ast.Name) and func.value.id == "pytest"
        )
    return isinstance(func, ast.Name) and func.id == "raises"


def unmatched_broad_raises(source: str, filename: str = "<test>") -> list[str]:
    """Each `pytest.raises(<broad type or a tuple holding one>)` without a useful `match=`,
    as "line: call". A `match` of None or "" matches anything, so it counts as missing."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and _is_raises(node.func)):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        expected = node.args[0] if node.args else keywords.get("expected_exception")
        if expected is None:
            continue
        types = expected.elts if isinstance(expected, ast.Tuple | ast.List) else [expected]
        if not any(_type_name(t) in BROAD for t in types):
            continue
        match = keywords.get("match")
        if (
            match is None
            or None in keywords  # **kwargs: cannot tell, so it must be spelled out
            or (isinstance(match, ast.Constant) and match.value in (None, ""))
        ):
            found.append((node.lineno, f"pytest.raises({ast.unparse(expected)})"))
    return [f"{line}: {call}" for line, call in sorted(found)]


def test_every_broad_pytest_raises_has_a_match():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        relative = path.relative_to(TESTS).as_posix()
        for hit in unmatched_broad_raises(path.read_text(encoding="utf-8"), str(path)):
            offenders.append(f"tests/{relative}:{hit}")
    assert not offenders, (
        "pytest.raises of a broad exception type without match= (it passes when the error "
        "comes from the wrong place; add match= with the intended message):\n"
        + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        ("pytest.raises(ValueError)", "ValueError"),
        ("pytest.raises(Exception)", "Exception"),
        ("pytest.raises(builtins.OSError)", "builtins.OSError"),
        ("pytest.raises((KeyError, IndexError))", "(KeyError, IndexError)"),
        ("pytest.raises((MyError, RuntimeError))", "(MyError, RuntimeError)"),
        ("pytest.raises(expected_exception=TypeError)", "TypeError"),
        ("pytest.raises(AssertionError, match=None)", "AssertionError"),
        ('pytest.raises(ValueError, match="")', "ValueError"),
        ("pytest.raises(ValueError, **options)", "ValueError"),
        ("pytest.raises(ValueError, int, 'x')", "ValueError"),  # the call form has no match
        ("raises(ValueError)", "ValueError"),
    ],
)
def test_the_scan_catches(call, shown):
    source = f"def test_x():\n    with {call}:\n        pass\n"
    assert unmatched_broad_raises(source) == [f"2: pytest.raises({shown})"]


@pytest.mark.parametrize(
    "call",
    [
        'pytest.raises(ValueError, match=r"^limit must be positive$")',
        "pytest.raises((KeyError, OSError), match=WHY)",
        "pytest.raises(IntrospectionUnavailable)",  # a specific type says enough
        "pytest.raises(np.linalg.LinAlgError)",
        "pytest.warns(UserWarning)",
        "other.raises(ValueError)",
    ],
)
def test_the_scan_lets_pass(call):
    assert unmatched_broad_raises(f"with {call}:\n    pass\n") == []
