"""One refusal vocabulary (fai_core.refusals): every reason a node gives for refusing peer
input is an enum member, values are unique metric labels, and a word two stages share is
declared in `SHARED`.

The admission sources are also read statically, so a refusal written as a bare string
(`return "busy"`, `self._reject("oops", ...)`) fails here even on a path no test runs.
"""

from __future__ import annotations

import ast
import re
from itertools import combinations
from pathlib import Path

import pytest

from fai_core import deltasoup, errors, refusals
from fai_core.refusals import (
    CHARGED,
    SHARED,
    UNCHARGED,
    VOCABULARIES,
    Drop,
    Ignore,
    Muted,
    Refusal,
    Reject,
)
from fai_net.admission import gate

REPO = Path(__file__).resolve().parent.parent.parent
#: The modules that decide admission; none may spell a refusal as a bare string.
ADMISSION = [
    REPO / "fai_net" / "admission" / name for name in ("gate.py", "membership.py", "budgets.py")
] + [REPO / "fai_net" / "node" / name for name in ("receive.py", "rounds.py")]
#: A Prometheus label value as we write them: lowercase snake case.
LABEL = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
#: Calls whose arguments are refusal reasons.
REASON_CALLS = frozenset({"_reject", "on_reject", "GateResult", "reject", "drop"})


def test_every_vocabulary_is_listed_once():
    assert set(VOCABULARIES) == {Reject, Refusal, Ignore, Drop, Muted}
    assert len(VOCABULARIES) == 5


@pytest.mark.parametrize("enum", VOCABULARIES, ids=lambda e: e.__name__)
def test_values_are_unique_prometheus_labels(enum):
    values = [m.value for m in enum]
    assert len(values) == len(set(values))  # an alias would silently merge two reasons
    assert [v for v in values if not LABEL.fullmatch(v)] == []
    for member in enum:  # the member is its value wherever a string is expected
        assert member == member.value and str(member) == member.value
        assert f"{member}" == member.value


def test_a_word_shared_between_enums_is_declared():
    shared: set[str] = set()
    for a, b in combinations(VOCABULARIES, 2):
        shared |= {m.value for m in a} & {m.value for m in b}
    assert shared == SHARED  # a new clash must be declared, a stale declaration removed


def test_the_old_homes_still_export_the_same_objects():
    assert errors.Reject is Reject
    assert deltasoup.Drop is Drop
    assert deltasoup.CHARGED is CHARGED and deltasoup.UNCHARGED is UNCHARGED
    assert set(Drop) == CHARGED | UNCHARGED and not CHARGED & UNCHARGED


def test_pinned_values():
    # Metric labels, log text and docs name these; they never change.
    assert {m.value for m in Refusal} == {
        "unrequested",
        "topic_mismatch",
        "wrong_model",
        "stale",
        "future",
        "not_member",
        "no_operator_sig",
        "bad_operator_sig",
        "equivocation",
        "old_seq",
        "low_reputation",
        "sender_budget",
        "forwarder_budget",
        "busy",
        "internal",
        "refused_again",
        "round_error",
    }
    assert {m.value for m in Ignore} == {"duplicate", "unsubscribed"}


def test_the_gate_refusal_sets_hold_enum_members():
    assert all(isinstance(r, Refusal) for r in gate.TEMPORARY_REFUSALS)
    assert all(isinstance(r, Reject) for r in gate.FORWARDER_UNCHARGED)
    assert {"not_member", "future", "busy", "sender_budget"} <= gate.TEMPORARY_REFUSALS


def _direct_literals(node: ast.AST | None) -> list[ast.Constant]:
    """Snake-case string constants `node` evaluates to: itself, or a branch of a
    conditional / `or` / container (not the arguments of a call inside it)."""
    if isinstance(node, ast.Constant):
        ok = isinstance(node.value, str) and LABEL.fullmatch(node.value)
        return [node] if ok else []
    if isinstance(node, ast.IfExp):
        return _direct_literals(node.body) + _direct_literals(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [c for v in node.values for c in _direct_literals(v)]
    if isinstance(node, ast.Set | ast.List | ast.Tuple):
        return [c for e in node.elts for c in _direct_literals(e)]
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"frozenset", "set"}:
        return [c for a in node.args for c in _direct_literals(a)]
    return []


def _reason_literals(path: Path) -> list[tuple[int, str]]:
    """Snake-case string literals where the admission code names a reason: returned,
    passed as the reason of a reject call or a GateResult, or listed in a module-level
    `...REFUSALS` constant."""
    found: list[ast.Constant] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Return):
            found += _direct_literals(node.value)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            position = 1 if name == "GateResult" else 0
            if name in REASON_CALLS:
                if len(node.args) > position:
                    found += _direct_literals(node.args[position])
                found += [
                    c for k in node.keywords if k.arg == "reason" for c in _direct_literals(k.value)
                ]
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and "REFUSAL" in t.id for t in targets):
            found += _direct_literals(node.value)
    return [(c.lineno, c.value) for c in found]


@pytest.mark.parametrize("path", ADMISSION, ids=lambda p: p.name)
def test_admission_never_spells_a_refusal_as_a_bare_string(path):
    assert _reason_literals(path) == []


def test_the_scan_catches_a_bare_string_refusal(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "TEMPORARY_REFUSALS = frozenset({'busy'})\n"
        "def check(x):\n"
        "    if x:\n"
        "        return 'not_member'\n"
        "    return None if x else 'bad_operator_sig'\n"
        "def admit(self):\n"
        "    self.on_reject('internal')\n"
        "    GateResult(Verdict.IGNORE, reason='unsubscribed')\n"
        "    GateResult(Verdict.IGNORE, 'duplicate', signed)\n"
        "    return self._reject('oops', 'detail')\n",
        encoding="utf-8",
    )
    assert sorted(v for _, v in _reason_literals(planted)) == [
        "bad_operator_sig",
        "busy",
        "duplicate",
        "internal",
        "not_member",
        "oops",
        "unsubscribed",
    ]


def test_refusals_is_pure_core():
    source = Path(refusals.__file__).read_text(encoding="utf-8")
    imported = {
        n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)
    }
    assert imported <= {"__future__", "enum"}
