"""Telemetry records: validation, JSONL round trips, bad-line reporting, grouping."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fai_core.telemetry import (
    MAX_LINE_BYTES,
    TelemetryError,
    TelemetryRecord,
    group_trajectories,
    iter_jsonl,
    parse_line,
    read_jsonl,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "task_id": "t1",
    "tool": "run_tests",
    "input": {"cmd": "pytest"},
    "output": "exit code 0",
    "reward": 1.0,
    "time": 1_700_000_000.5,
}


def rec(**overrides) -> TelemetryRecord:
    return TelemetryRecord(**{**GOOD, **overrides})


def line(**overrides) -> str:
    return json.dumps({**GOOD, **overrides})


def test_defaults():
    r = rec()
    assert (r.attempt, r.domain, r.kind) == ("0", "general", None)
    assert r.reward == 1.0 and isinstance(r.reward, float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_id", ""),
        ("task_id", "x" * 129),
        ("task_id", "a\nb"),
        ("task_id", " padded"),
        ("task_id", 7),
        ("attempt", ""),
        ("tool", "run tests"),
        ("tool", "/home/x"),
        ("tool", "a@b.c"),
        ("tool", "9lives"),
        ("tool", "t" * 65),
        ("domain", "Coding"),
        ("domain", "x" * 33),
        ("kind", "Fix failing"),
        ("kind", ""),
        ("reward", float("nan")),
        ("reward", float("inf")),
        ("reward", 2e9),
        ("reward", True),
        ("reward", "1"),
        ("time", -1),
        ("time", 1e15),
        ("input", {1, 2}),
        ("output", object()),
        ("output", float("nan")),
    ],
)
def test_invalid_fields_are_refused_with_their_name(field, value):
    with pytest.raises(TelemetryError) as info:
        rec(**{field: value})
    assert info.value.field == field
    assert info.value.line is None


def test_oversize_record_is_refused_at_construction():
    with pytest.raises(TelemetryError, match="exceeds"):
        rec(output="x" * MAX_LINE_BYTES)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
records = st.builds(
    TelemetryRecord,
    task_id=st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool),
    tool=st.from_regex(r"[A-Za-z][A-Za-z0-9_.:-]{0,20}", fullmatch=True),
    input=json_values,
    output=json_values,
    reward=st.floats(-1e6, 1e6, allow_nan=False),
    time=st.floats(0, 2e9, allow_nan=False),
    attempt=st.sampled_from(["0", "1", "a-2"]),
    domain=st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
    kind=st.none() | st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(records, max_size=5))
def test_jsonl_round_trip(rs):
    buffer = io.StringIO()
    assert write_jsonl(rs, buffer) == len(rs)
    text = buffer.getvalue()
    assert text.count("\n") == len(rs)
    back = read_jsonl(io.BytesIO(text.encode())).records
    assert back == rs


def test_text_stream_and_path_sources(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl([rec(), rec(attempt="1")], path)
    assert len(read_jsonl(path).records) == 2
    assert len(read_jsonl(str(path)).records) == 2
    with open(path, encoding="utf-8") as stream:
        assert len(read_jsonl(stream).records) == 2


BAD_LINES = [
    ("{not json", "line"),
    ("[1, 2]", "record"),
    (line(extra=1), "record"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "reward"}), "record"),
    (line(reward="high"), "reward"),
    (line(tool="rm -rf"), "tool"),
    ('{"task_id": "t", "tool": "x", "input": 1, "output": 1, "reward": NaN, "time": 1}', "line"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_LINES)
def test_bad_line_raises_with_line_number(bad, field):
    data = "\n".join([line(), "", line(attempt="2"), bad, line()]) + "\n"
    with pytest.raises(TelemetryError) as info:
        read_jsonl(io.BytesIO(data.encode()))
    assert info.value.line == 4
    assert info.value.field == field
    assert "line 4" in str(info.value)


def test_skip_bad_counts_and_keeps_going():
    lines = [line(), *[bad for bad, _ in BAD_LINES], line(attempt="9")]
    data = ("\r\n".join(lines)).encode() + b"\n\xff\xfe\n" + line().encode()  # no final newline
    report = read_jsonl(io.BytesIO(data), skip_bad=True)
    assert len(report.records) == 3
    assert report.records[1].attempt == "9"
    assert report.skipped == len(BAD_LINES) + 1
    assert [e.line for e in report.errors] == [*range(2, 2 + len(BAD_LINES)), len(lines) + 1]
    assert report.errors[-1].field == "line"  # not UTF-8


def test_oversize_line_is_skipped_without_losing_the_next_line():
    huge = b'{"task_id": "' + b"x" * (MAX_LINE_BYTES * 2 + 5) + b'"}'
    data = line().encode() + b"\n" + huge + b"\n" + line(attempt="3").encode() + b"\n"
    with pytest.raises(TelemetryError) as info:
        list(iter_jsonl(io.BytesIO(data)))
    assert info.value.line == 2 and "longer than" in info.value.detail
    report = read_jsonl(io.BytesIO(data), skip_bad=True)
    assert [r.attempt for r in report.records] == ["0", "3"]
    assert report.skipped == 1


def test_oversize_last_line_without_newline():
    data = line().encode() + b"\n" + b"y" * (MAX_LINE_BYTES + 10)
    report = read_jsonl(io.BytesIO(data), skip_bad=True)
    assert len(report.records) == 1 and report.skipped == 1 and report.errors[0].line == 2


def test_parse_line_accepts_bytes_and_str():
    assert parse_line(line().encode()) == parse_line(line()) == rec()


def test_grouping_by_task_and_attempt_in_time_order():
    rs = [
        rec(task_id="A", attempt="2", time=50, tool="b"),
        rec(task_id="B", attempt="1", time=5, tool="x"),
        rec(task_id="A", attempt="1", time=20, tool="second"),
        rec(task_id="A", attempt="1", time=10, tool="first"),
        rec(task_id="A", attempt="2", time=50, tool="c"),  # tie: arrival order
        rec(task_id="A", attempt="3", time=10, tool="z"),
    ]
    tasks = group_trajectories(rs)
    assert [t.task_id for t in tasks] == ["A", "B"]
    a = tasks[0]
    assert [t.attempt for t in a.trajectories] == ["1", "3", "2"]  # by start time, then label
    assert [s.tool for s in a.trajectories[0].steps] == ["first", "second"]
    assert [s.tool for s in a.trajectories[2].steps] == ["b", "c"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ABC"), st.sampled_from("123"), st.floats(-5, 5)), max_size=30
    )
)
def test_grouping_partitions_the_records(spec):
    rs = [rec(task_id=t, attempt=a, reward=r, time=float(i)) for i, (t, a, r) in enumerate(spec)]
    tasks = group_trajectories(rs)
    steps = [s for task in tasks for traj in task.trajectories for s in traj.steps]
    assert sorted(steps, key=lambda s: s.time) == rs
    for task in tasks:
        assert len({t.attempt for t in task.trajectories}) == len(task.trajectories)
        for traj in task.trajectories:
            assert {s.task_id for s in traj.steps} == {task.task_id}
            assert {s.attempt for s in traj.steps} == {traj.attempt}
            assert traj.total_reward == pytest.approx(sum(s.reward for s in traj.steps))


def test_one_task_cannot_have_two_domains():
    with pytest.raises(TelemetryError, match="domain, kind"):
        group_trajectories([rec(domain="coding"), rec(domain="devops")])


def test_sample_set_is_rich_enough_and_current():
    path = resources.files("fai_core") / "data" / "sample_telemetry.jsonl"
    report = read_jsonl(io.BytesIO(path.read_bytes()))
    assert report.skipped == 0 and 300 <= len(report.records) <= 1000
    tasks = group_trajectories(report.records)
    domains = {t.domain for t in tasks}
    assert {"coding", "devops", "data-analysis", "writing", "support"} <= domains
    for domain in domains:
        assert sum(t.domain == domain for t in tasks) >= 3
    assert all(len(t.trajectories) >= 4 for t in tasks)
    assert any(len(t.trajectories) >= 12 for t in tasks)
    raw = path.read_text(encoding="utf-8")
    assert "@example.com" in raw and "/home/someone/" in raw
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "make_sample_telemetry.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
