"""Outcome classes, the group view and the deterministic introspector: valid, private."""

from __future__ import annotations

import io
import json
import re
import unicodedata
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fai_core.experience import MAX_WORDS, normalize_text, text_problem
from fai_core.grpo import score_group
from fai_core.introspection import (
    DeterministicIntrospector,
    Introspector,
    Outcome,
    classify_output,
    fit_pattern,
    view_group,
)
from fai_core.telemetry import TelemetryRecord, Trajectory, group_trajectories, read_jsonl


@pytest.mark.parametrize(
    ("output", "label"),
    [
        ("58 passed in 2.31s\nexit code 0", "exit=0 passed"),
        ("Traceback ...\nKeyError: 'alice'\nexited with status 1", "KeyError exit=1"),
        ("FAILED test_x - AssertionError\n1 failed, 3 passed", "AssertionError failed"),
        ("HTTP/1.1 404 Not Found", "http=404 not-found"),
        ("Connection timed out", "timeout"),
        ("AliceProjectError: secret stuff", "exception"),
        ("nothing recognisable here", "unclassified"),
        ({"exit_code": 0, "stdout": "Error: everything failed"}, "exit=0"),
        ({"returncode": 2, "stderr": "ModuleNotFoundError: x"}, "ModuleNotFoundError exit=2"),
        ({"status_code": 503, "error": "pod CrashLoopBackOff"}, "CrashLoopBackOff http=503"),
        ({"status": 201}, "http=201"),
        ({"status": "Resolved", "note": "failed twice"}, "resolved"),
        ({"exit_code": 9999}, "unclassified"),
        ({"exit_code": True}, "unclassified"),
        (True, "ok"),
        (False, "failed"),
        ([1, "ValueError"], "unclassified"),
        (None, "unclassified"),
        (3.5, "unclassified"),
    ],
)
def test_outcome_classes(output, label):
    assert classify_output(output).label == label


def test_failure_flag():
    assert Outcome(exit_code=1).failed and Outcome(http_status=500).failed
    assert Outcome(exception="ValueError").failed and Outcome(status="timeout").failed
    assert not Outcome(exit_code=0, status="passed").failed and not Outcome().failed


def test_long_outputs_are_scanned_at_both_ends():
    text = "x " * 100_000 + "\nRuntimeError: boom"
    assert classify_output(text).exception == "RuntimeError"


def traj(attempt: str, steps: list[tuple[str, object, float]], inp: object = "") -> Trajectory:
    return Trajectory(
        "t",
        attempt,
        tuple(
            TelemetryRecord("t", tool, inp, out, reward, float(i), attempt=attempt)
            for i, (tool, out, reward) in enumerate(steps)
        ),
    )


def view_of(trajectories, kind="fix-failing-test", domain="coding"):
    score = score_group([t.total_reward for t in trajectories])
    return view_group(trajectories, score, domain, kind, 1)


GOOD = [
    ("run_tests", "exit code 1", -0.1),
    ("read_file", {"exit_code": 0}, 0),
    ("edit_file", {"status": "ok"}, 0),
    ("run_tests", "exit code 0 passed", 1.0),
]
BAD = [("edit_file", {"status": "ok"}, 0), ("run_tests", "SyntaxError: bad\nexit code 2", -0.5)]


def test_deterministic_pattern_contrasts_best_and_worst():
    group = view_of([traj("1", BAD), traj("2", GOOD), traj("3", BAD), traj("4", BAD[:1])])
    assert isinstance(DeterministicIntrospector(), Introspector)
    text = DeterministicIntrospector().introspect(group)
    assert text == (
        "fix-failing-test: use read_file before edit_file; best run_tests, read_file, "
        "edit_file, run_tests ended exit=0 passed; worst edit_file, run_tests hit "
        "SyntaxError exit=2"
    )
    assert text_problem(text) is None
    assert DeterministicIntrospector().introspect(group) == text  # deterministic


def test_label_falls_back_to_domain_and_identical_attempts_give_nothing():
    group = view_of([traj("1", BAD), traj("2", GOOD), traj("3", BAD), traj("4", BAD)], kind=None)
    assert DeterministicIntrospector().introspect(group).startswith("coding: ")
    same = [("run_tests", "exit code 0", 1.0)]
    flat = [traj("1", same), traj("2", [("run_tests", "exit code 0", 0.5)])] * 2
    assert DeterministicIntrospector().introspect(view_of(flat)) is None


def test_long_sequences_are_shortened_to_32_words():
    tools = [f"tool_{i}" for i in range(40)]
    long_good = [(t, {"status": "ok"}, 0.1) for t in tools]
    long_bad = [(f"other_{i}", "exit code 1", -0.1) for i in range(40)]
    group = view_of([traj("1", long_good), traj("2", long_bad)] * 2)
    text = DeterministicIntrospector().introspect(group)
    assert text_problem(text) is None and len(text.split(" ")) <= MAX_WORDS
    assert "tool_0" in text and "..." in text


# Raw text drawn from an alphabet that shares no 6-character run with tool names or the
# pattern vocabulary, so any such substring in a pattern could only have been copied.
CANARY = st.text(alphabet="qxzjvwy@/.:QXZJVW", min_size=6, max_size=40)
TOOLS = ["run_tests", "read_file", "edit_file", "http_check", "search_kb", "send_reply"]
WRAPPERS = [
    lambda c: c,
    lambda c: f"{c}\nexit code 1",
    lambda c: f"AssertionError: {c}",
    lambda c: {"status": "failed", "error": c},
    lambda c: {"exit_code": 0, "stdout": c},
    lambda c: {"status_code": 500, "detail": [c]},
    lambda c: f"HTTP/1.1 200 OK {c} passed",
]
steps = st.lists(
    st.tuples(
        st.sampled_from(TOOLS),
        st.integers(0, len(WRAPPERS) - 1),
        CANARY,
        st.floats(-2, 2, allow_nan=False),
        CANARY,
    ),
    min_size=1,
    max_size=12,
)


def build(spec) -> list[Trajectory]:
    out = []
    for a, trajectory in enumerate(spec):
        records = tuple(
            TelemetryRecord("t", tool, {"q": inp}, WRAPPERS[w](c), r, float(i), attempt=str(a))
            for i, (tool, w, c, r, inp) in enumerate(trajectory)
        )
        out.append(Trajectory("t", str(a), records))
    return out


def copied(text: str, raw: str, n: int = 6) -> str | None:
    """The first n-character run of `raw` that occurs in `text`."""
    return next((raw[i : i + n] for i in range(len(raw) - n + 1) if raw[i : i + n] in text), None)


@settings(max_examples=80, deadline=None)
@given(st.lists(steps, min_size=4, max_size=4))
def test_patterns_are_valid_and_never_copy_raw_data(spec):
    trajectories = build(spec)
    score = score_group([t.total_reward for t in trajectories])
    if score is None:
        return
    group = view_group(trajectories, score, "coding", "fix-failing-test", 1)
    text = DeterministicIntrospector().introspect(group)
    shared = json.dumps(group.to_json()) + repr(group)
    for trajectory in spec:
        for _tool, _w, output_data, _r, input_data in trajectory:
            for raw in (output_data, input_data):
                assert copied(shared, raw) is None
                if text is not None:
                    assert copied(text, raw) is None
    if text is not None:
        assert text_problem(text) is None
        assert len(text.split(" ")) <= MAX_WORDS


@settings(max_examples=30, deadline=None)
@given(st.lists(steps, min_size=4, max_size=4), st.text(max_size=50))
def test_inputs_never_influence_the_pattern(spec, replacement):
    original = build(spec)
    changed = [
        Trajectory(t.task_id, t.attempt, tuple(
            TelemetryRecord(s.task_id, s.tool, replacement, s.output, s.reward, s.time, s.attempt)
            for s in t.steps
        ))
        for t in original
    ]  # fmt: skip
    score = score_group([t.total_reward for t in original])
    if score is None:
        return
    views = [view_group(ts, score, "coding", None, 1) for ts in (original, changed)]
    assert views[0] == views[1]
    intro = DeterministicIntrospector()
    assert intro.introspect(views[0]) == intro.introspect(views[1])


SENSITIVE = ["alice", "nguyen", "example.com", "/home/", "someone", "A-77812", "T-9001",
             "api.internal", "contract", "customers", "shop", "registry.internal"]  # fmt: skip


def test_sample_set_patterns_hold_no_user_data():
    data = (resources.files("fai_core") / "data" / "sample_telemetry.jsonl").read_bytes()
    tasks = group_trajectories(read_jsonl(io.BytesIO(data)).records)
    assert all(s.encode() in data.lower() or s.encode() in data for s in SENSITIVE)
    intro = DeterministicIntrospector()
    texts = []
    for task in tasks:
        members = list(task.trajectories[:4])
        score = score_group([t.total_reward for t in members])
        if score is not None:
            text = intro.introspect(view_group(members, score, task.domain, task.kind, 1))
            if text is not None:
                texts.append(text)
    assert len(texts) >= 20
    for text in texts:
        assert text_problem(text) is None
        assert not any(s.lower() in text.lower() for s in SENSITIVE), text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fit_pattern_always_returns_a_valid_prefix_or_none(text):
    out = fit_pattern(text)
    cleaned = normalize_text(
        re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", unicodedata.normalize("NFC", text))
    )
    if out is None:
        assert cleaned == "" or text_problem(cleaned[: len(cleaned)]) is not None
    else:
        assert text_problem(out) is None
        words = out.split(" ")
        assert len(words) <= MAX_WORDS and words == cleaned.split(" ")[: len(words)]


def test_fit_pattern_cuts_words_and_bytes():
    assert fit_pattern(" ".join(f"w{i}" for i in range(50))) == " ".join(f"w{i}" for i in range(32))
    long_words = fit_pattern(" ".join(["y" * 100] * 20))
    assert long_words is not None and len(long_words.encode()) <= 1024
    assert len(long_words.split(" ")) == 10
    assert fit_pattern("  \n\t ") is None
    assert fit_pattern("a\x00b") == "a b"
