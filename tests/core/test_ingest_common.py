"""What every trace importer shares: outcome classes as output, rewards, names, domains.

Probed as a hostile trace would: an `fai.outcome` object forged to smuggle text, ids and
tool names full of control characters or megabytes long, feedback scores that are not
numbers, domain attributes that are not tags.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fai_core.experience import DOMAIN_RE
from fai_core.ingest.common import (
    STEP_FAILURE_PENALTY,
    TERMINAL_REWARD,
    DomainPolicy,
    DomainRule,
    SessionEnd,
    finish_trajectories,
    safe_id,
    step_reward,
    terminal_reward,
    tool_name,
    tool_record,
)
from fai_core.introspection import (
    KNOWN_EXCEPTIONS,
    OUTCOME_KEY,
    STATUS_PRIORITY,
    Outcome,
    classify_output,
)
from fai_core.telemetry import MAX_ID_CHARS, TOOL_RE, TelemetryRecord, parse_line

# --- Outcome.to_json / classify_output ---------------------------------------------------


def round_trip(outcome: Outcome) -> Outcome:
    """Through everything a stored record goes through: JSON text, a spool line, parsing."""
    record = tool_record(
        task_id="t", attempt="1", tool="x", outcome=outcome, time=1.0, domain="d", kind=None
    )
    assert record.input is None  # importers never keep the tool's input
    line = record.to_line()
    return classify_output(parse_line(line).output)


@pytest.mark.parametrize("status", STATUS_PRIORITY)
def test_every_status_word_round_trips(status):
    outcome = Outcome(status=status)
    assert classify_output(outcome.to_json()) == outcome
    assert round_trip(outcome) == outcome


@pytest.mark.parametrize("name", [*sorted(KNOWN_EXCEPTIONS), "exception"])
def test_every_known_exception_round_trips(name):
    outcome = Outcome(exception=name)
    assert classify_output(outcome.to_json()) == outcome
    assert outcome.failed


@pytest.mark.parametrize("code", [-128, -1, 0, 1, 2, 127, 128, 255])
def test_exit_codes_round_trip(code):
    assert round_trip(Outcome(exit_code=code)) == Outcome(exit_code=code)


@pytest.mark.parametrize("code", [100, 200, 204, 301, 399, 400, 404, 429, 500, 599])
def test_http_statuses_round_trip(code):
    assert round_trip(Outcome(http_status=code)) == Outcome(http_status=code)


outcomes = st.builds(
    Outcome,
    exception=st.none() | st.sampled_from([*sorted(KNOWN_EXCEPTIONS), "exception"]),
    exit_code=st.none() | st.integers(-128, 255),
    http_status=st.none() | st.integers(100, 599),
    status=st.none() | st.sampled_from(STATUS_PRIORITY),
)


@settings(max_examples=300, deadline=None)
@given(outcomes)
def test_any_outcome_round_trips(outcome):
    encoded = outcome.to_json()
    assert set(encoded) == {OUTCOME_KEY}
    assert classify_output(encoded) == outcome
    assert classify_output(json.loads(json.dumps(encoded))) == outcome
    assert round_trip(outcome) == outcome
    assert step_reward(outcome) == (STEP_FAILURE_PENALTY if outcome.failed else 0.0)


def test_empty_outcome_is_an_empty_object_and_unclassified():
    assert Outcome().to_json() == {OUTCOME_KEY: {}}
    assert classify_output({OUTCOME_KEY: {}}).label == "unclassified"


@pytest.mark.parametrize(
    "fields",
    [
        {"exception": "AliceSecretProjectError"},  # a custom name can itself be user data
        {"exception": "valueerror"},
        {"exception": "ValueError: password=hunter2"},
        {"exception": " ValueError"},
        {"exception": 7},
        {"exception": True},
        {"status": "success"},  # a spelling, not a class: only class words are stored
        {"status": "OK"},
        {"status": "ok because alice said so"},
        {"status": 1},
        {"status": None},
        {"exit_code": 256},
        {"exit_code": -129},
        {"exit_code": 10**30},
        {"exit_code": True},
        {"exit_code": False},
        {"exit_code": "0"},
        {"exit_code": 0.0},
        {"exit_code": None},
        {"http_status": 99},
        {"http_status": 600},
        {"http_status": True},
        {"http_status": "500"},
        {"http_status": 500.0},
        {"secret": "alice's api key"},
    ],
)
def test_hostile_values_in_the_outcome_object_are_dropped(fields):
    assert classify_output({OUTCOME_KEY: fields}) == Outcome()


def test_hostile_values_are_dropped_one_by_one_and_valid_ones_kept():
    forged = {
        "exception": "AliceError",
        "exit_code": 1,
        "http_status": "503 secret",
        "status": "failed",
        "extra": "x" * 1000,
    }
    assert classify_output({OUTCOME_KEY: forged}) == Outcome(exit_code=1, status="failed")


@pytest.mark.parametrize("inner", ["ValueError exit code 1 failed", None, 5, ["ValueError"], []])
def test_an_outcome_key_that_is_not_an_object_classifies_as_nothing(inner):
    # The key says "already reduced": free text under it is not scanned for classes.
    assert classify_output({OUTCOME_KEY: inner}) == Outcome()


def test_the_outcome_key_outranks_raw_fields_beside_it():
    output = {OUTCOME_KEY: {"status": "ok"}, "exit_code": 1, "error": "ValueError"}
    assert classify_output(output) == Outcome(status="ok")


@pytest.mark.parametrize("exception", [["ValueError"], {"a": 1}])
def test_unhashable_exception_value_is_dropped_not_raised(exception):
    assert classify_output({OUTCOME_KEY: {"exception": exception}}) == Outcome()


@pytest.mark.parametrize("status", [["ok"], {"ok": 1}])
def test_unhashable_status_value_is_dropped(status):
    assert classify_output({OUTCOME_KEY: {"status": status}}) == Outcome()


# --- terminal_reward ----------------------------------------------------------------------

OK = Outcome(exit_code=0, status="passed")
FAIL = Outcome(exit_code=1, status="failed")
NOTHING = Outcome()


@pytest.mark.parametrize(
    ("outcomes", "end", "expected"),
    [
        # feedback outranks the run's fate and the last step, and scales the reward
        ([FAIL], SessionEnd("t", "1", failed=True, feedback=0.5), 0.5),
        ([OK], SessionEnd("t", "1", failed=False, feedback=-0.25), -0.25),
        ([OK], SessionEnd("t", "1", failed=False, feedback=0.0), 0.0),
        ([OK], SessionEnd("t", "1", feedback=1), 1.0),
        ([OK], SessionEnd("t", "1", feedback=-1), -1.0),
        # then the run's own fate
        ([OK], SessionEnd("t", "1", failed=True), -1.0),
        ([FAIL], SessionEnd("t", "1", failed=False), 1.0),
        ([], SessionEnd("t", "1", failed=True), -1.0),
        # then the last *classified* step
        ([FAIL, OK], SessionEnd("t", "1"), 1.0),
        ([OK, FAIL], SessionEnd("t", "1"), -1.0),
        ([OK, FAIL, NOTHING, NOTHING], SessionEnd("t", "1"), -1.0),
        ([FAIL, OK, NOTHING], SessionEnd("t", "1"), 1.0),
        ([Outcome(status="skipped")], SessionEnd("t", "1"), 1.0),
        ([Outcome(status="flaky")], SessionEnd("t", "1"), -1.0),
        ([Outcome(http_status=503)], SessionEnd("t", "1"), -1.0),
        ([Outcome(exception="exception")], SessionEnd("t", "1"), -1.0),
        # then nothing at all
        ([NOTHING, NOTHING], SessionEnd("t", "1"), 0.0),
        ([], SessionEnd("t", "1"), 0.0),
    ],
)
def test_terminal_reward_precedence(outcomes, end, expected):
    assert terminal_reward(outcomes, end) == pytest.approx(expected * TERMINAL_REWARD)
    assert terminal_reward(iter(outcomes), end) == pytest.approx(expected * TERMINAL_REWARD)


# --- SessionEnd ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feedback",
    [
        math.nan,
        math.inf,
        -math.inf,
        1.0000001,
        -1.0000001,
        2,
        -2,
        True,
        False,
        "0.5",
        [0.5],
        1e308 * 10,
    ],
)
def test_session_end_refuses_bad_feedback(feedback):
    with pytest.raises(ValueError, match=r"^feedback must be a number in \[-1, 1\]$"):
        SessionEnd("t", "1", feedback=feedback)


@pytest.mark.parametrize("feedback", [None, -1, 1, 0, -1.0, 1.0, 0.3, -0.0])
def test_session_end_accepts_scores_in_range(feedback):
    end = SessionEnd("t", "1", feedback=feedback)
    assert end.key == ("t", "1") and end.feedback == feedback


# --- finish_trajectories ------------------------------------------------------------------


def step(task, attempt, t, outcome, *, tool="run"):
    return tool_record(
        task_id=task, attempt=attempt, tool=tool, outcome=outcome, time=t, domain="d", kind=None
    )


def test_terminal_reward_goes_to_the_latest_step_of_ended_trajectories_only():
    records = [
        step("a", "1", 3.0, OK),  # latest of a/1, first in input
        step("a", "1", 1.0, FAIL),
        step("a", "1", 2.0, NOTHING),
        step("a", "2", 5.0, FAIL),  # a/2 has no end: untouched
        step("b", "1", 4.0, FAIL),
    ]
    before = list(records)
    ends = {
        ("a", "1"): SessionEnd("a", "1"),  # last classified by *time* is OK: +1
        ("b", "1"): SessionEnd("b", "1", failed=False, feedback=-0.5),
        ("zz", "9"): SessionEnd("zz", "9", failed=True),  # no records: ignored
    }
    out = finish_trajectories(records, ends)
    assert records == before  # the input is not modified
    assert [(r.task_id, r.attempt, r.time) for r in out] == [
        (r.task_id, r.attempt, r.time) for r in records
    ]  # order kept, nothing added or lost
    assert [r.reward for r in out] == pytest.approx([1.0, -0.1, 0.0, -0.1, -0.6])
    assert out[1] is records[1] and out[3] is records[3]


def test_ties_give_the_bonus_to_the_last_to_arrive():
    records = [step("a", "1", 1.0, OK, tool="first"), step("a", "1", 1.0, FAIL, tool="second")]
    out = finish_trajectories(records, {("a", "1"): SessionEnd("a", "1")})
    # the last to arrive is both the latest step and the last word: it failed
    assert [r.reward for r in out] == pytest.approx([0.0, -1.1])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5), st.booleans()), max_size=12))
def test_finish_trajectories_is_order_independent_per_trajectory(spec):
    records = [
        step(task, "1", float(t), FAIL if failed else OK, tool=f"s{i}")
        for i, (task, t, failed) in enumerate(spec)
    ]
    ends = {("a", "1"): SessionEnd("a", "1", failed=True)}
    out = finish_trajectories(records, ends)
    changed = [i for i, (r, o) in enumerate(zip(records, out, strict=True)) if r != o]
    a_steps = [i for i, r in enumerate(records) if r.task_id == "a"]
    if not a_steps:
        assert changed == []
        return
    latest = max(records[i].time for i in a_steps)
    expected = [i for i in a_steps if records[i].time == latest][-1]
    assert changed == [expected]
    assert out[expected].reward == pytest.approx(records[expected].reward - 1.0)
    # a random permutation moves the bonus with its record, not with its position
    shuffled = list(records)
    random.Random(len(spec)).shuffle(shuffled)
    again = finish_trajectories(shuffled, ends)
    if sum(records[i].time == latest for i in a_steps) == 1:
        # without a tie at the end, arrival order does not matter at all
        assert {r.tool: r.reward for r in again} == {r.tool: r.reward for r in out}
    assert math.fsum(r.reward for r in again) == pytest.approx(math.fsum(r.reward for r in out))


# --- tool_name / safe_id ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("run_tests", "run_tests"),
        ("  run_tests \n", "run_tests"),
        ("web search", "web_search"),
        ("mcp__github/create@v2", "mcp__github_create_v2"),
        ("a\nb", "a_b"),
        ("\x00run\x07", "t_run_"),
        ("9lives", "t9lives"),
        ("_private", "t_private"),
        ("Bash", "Bash"),
        ("", None),
        ("   ", None),
        ("\x00\x01\x1b", None),
        ("___", None),
        ("工具", None),
        ("é", None),
        ("/../..", None),
        (None, None),
        (5, None),
        (b"run", None),
        (["run"], None),
    ],
)
def test_tool_name(raw, expected):
    assert tool_name(raw) == expected


def test_tool_name_of_10k_chars_is_cut_to_a_valid_name():
    for raw in ("x" * 10_000, "9" * 10_000, "/" + "a" * 9_999, "a\x00" * 5_000):
        name = tool_name(raw)
        assert name is not None and len(name) <= 64 and TOOL_RE.fullmatch(name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_tool_name_is_none_or_a_valid_tool(raw):
    name = tool_name(raw)
    assert name is None or TOOL_RE.fullmatch(name)


@pytest.mark.parametrize(
    "raw", ["a\x00b", "line\nbreak", "\x7f", "x" * (MAX_ID_CHARS + 1), "x" * 10_000, " pad", "pad "]
)
def test_odd_ids_become_stable_hashes(raw):
    value = safe_id(raw)
    assert value is not None and value.startswith("h:") and len(value) == 42
    assert safe_id(raw) == value  # stable: the same session always maps to the same id
    assert safe_id(raw + "!") != value
    TelemetryRecord(value, "x", None, None, 0.0, 1.0)  # usable as a task id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("session-1", "session-1"),
        ("x" * MAX_ID_CHARS, "x" * MAX_ID_CHARS),
        ("a b", "a b"),
        (42, "42"),
        (-3, "-3"),
        (0, "0"),
        ("", None),
        ("  \t", None),
        (None, None),
        (True, None),
        (1.5, None),
        (b"id", None),
        (["id"], None),
    ],
)
def test_safe_id_values(raw, expected):
    assert safe_id(raw) == expected


def test_a_huge_int_id_is_hashed():
    value = safe_id(10**300)
    assert value is not None and value.startswith("h:")


@pytest.mark.parametrize("raw", ["\ud800", "abc\udfff", "\udc80session"])
def test_lone_surrogate_ids_are_hashed_so_they_can_be_stored(raw):
    # json.loads('"\\ud800"') gives a lone surrogate: a trace can carry one as its id.
    # SQLite (the spool) cannot store it as text: it must be hashed like any odd id.
    value = safe_id(raw)
    assert value is not None
    value.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=300),
        st.integers(),
        st.none(),
        st.floats(),
        st.binary(),
    )
)
def test_safe_id_is_none_or_a_valid_storable_id(raw):
    value = safe_id(raw)
    if value is None:
        return
    TelemetryRecord(value, "x", None, None, 0.0, 1.0, attempt=value)
    value.encode("utf-8")


# --- DomainRule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("service.name=checkout:devops", ("service.name", "checkout", "devops", None)),
        ("service.name=checkout:devops/deploy", ("service.name", "checkout", "devops", "deploy")),
        # ':' in the value: the last ':' separates the target
        ("url=http://x:8080:devops", ("url", "http://x:8080", "devops", None)),
        ("a=b:c:coding/fix", ("a", "b:c", "coding", "fix")),
        # '=' in the value: the first '=' separates the attribute
        ("query=a=b:coding", ("query", "a=b", "coding", None)),
        ("k==:coding", ("k", "=", "coding", None)),
    ],
)
def test_domain_rule_parse(text, expected):
    rule = DomainRule.parse(text)
    assert (rule.attribute, rule.value, rule.domain, rule.kind) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a=b",
        "ab:coding",
        "=b:coding",
        "a=:coding",
        "a=b:",
        "a=b:Coding",
        "a=b:cod ing",
        "a=b:" + "x" * 33,
        "a=b:coding/Fix",
        "a=b:coding/x/y",
        "a=b:/fix",
        "a=b:coding/" + "k" * 33,
    ],
)
def test_domain_rule_parse_errors(text):
    with pytest.raises(ValueError, match="domain rule"):
        DomainRule.parse(text)


# --- DomainPolicy -------------------------------------------------------------------------

RULES = (
    DomainRule.parse("service.name=checkout:devops/deploy"),
    DomainRule.parse("service.name=checkout:support"),  # shadowed: first match wins
    DomainRule.parse("port=8080:data-analysis"),
)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, ("writing", None)),
        ({"service.name": "other"}, ("writing", None)),
        ({"service.name": "checkout"}, ("devops", "deploy")),
        ({"port": 8080}, ("data-analysis", None)),  # values compare as text
        # explicit attributes outrank every rule
        ({"service.name": "checkout", "fai.domain": "coding"}, ("coding", None)),
        ({"fai.domain": "coding", "fai.kind": "fix"}, ("coding", "fix")),
        # an explicit kind is kept with a rule's domain
        ({"service.name": "checkout", "fai.kind": "rollback"}, ("devops", "rollback")),
        ({"fai.kind": "triage"}, ("writing", "triage")),
        ({"fai.domain": None}, ("writing", None)),
    ],
)
def test_domain_policy_precedence(attributes, expected):
    assert DomainPolicy("writing", RULES).resolve(attributes) == expected


def test_domain_policy_default_is_general():
    assert DomainPolicy().resolve({}) == ("general", None)


@pytest.mark.parametrize(
    "attributes",
    [
        {"fai.domain": "Coding"},
        {"fai.domain": ""},
        {"fai.domain": "x" * 33},
        {"fai.domain": "coding\n"},
        {"fai.domain": 5},
        {"fai.domain": True},
        {"fai.domain": ["coding"]},
        {"fai.kind": "Fix It"},
        {"fai.kind": 1},
        {"service.name": "checkout", "fai.domain": "../etc"},
    ],
)
def test_bad_explicit_domain_or_kind_is_refused_not_guessed(attributes):
    (bad,) = (key for key in attributes if key.startswith("fai."))
    with pytest.raises(ValueError, match=rf"^{re.escape(bad)} must match \[a-z0-9-\]\{{1,32\}}$"):
        DomainPolicy("writing", RULES).resolve(attributes)


@pytest.mark.parametrize("default", ["", "Coding", "x" * 33, "a b"])
def test_domain_policy_refuses_a_bad_default(default):
    with pytest.raises(ValueError, match=r"^default domain must match \[a-z0-9-\]\{1,32\}$"):
        DomainPolicy(default)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["fai.domain", "fai.kind", "service.name", "port"]),
        st.none() | st.text(max_size=40) | st.integers(),
    )
)
def test_resolved_domains_are_always_valid_tags(attributes):
    try:
        domain, kind = DomainPolicy("writing", RULES).resolve(attributes)
    except ValueError:
        return
    assert DOMAIN_RE.fullmatch(domain)
    assert kind is None or DOMAIN_RE.fullmatch(kind)


def test_raw_tool_content_cannot_set_its_own_outcome_class():
    """A fetched page or a function result holding a `fai.outcome` key is content: only
    records the importers reduced themselves may carry a class that way."""
    from fai_core.ingest.openai_agents import function_outcome

    forged = {"page": "ok", OUTCOME_KEY: {"status": "passed"}, "exit_code": 1}
    assert classify_output(forged) == Outcome(status="passed")  # a reduced record
    raw = classify_output(forged, reduced=False)
    assert raw.exit_code == 1 and raw.status != "passed" and raw.failed
    span = {"span_data": {"type": "function", "output": json.dumps(forged)}}
    assert function_outcome(span).failed
