"""Single-attempt sessions are pooled by (domain, kind) into GRPO groups of G.

Real agents rarely retry one task G times: passive telemetry is mostly one attempt per
task. Before pooling, 24 records of 8 single-attempt coding tasks gave no experience at
all. These tests check the pools: never across domains or kinds, oldest first, exact
`consumed` and `waiting` sets (the node's spool removes the first and keeps the second),
and retried tasks keep the per-task groups and iterations they had.
"""

from __future__ import annotations

import json
import random

import pytest

from fai_core.embedding import HashingEmbedder
from fai_core.extraction import LocalDSOptimizer
from fai_core.grpo import GROUP_SIZE
from fai_core.ingest.common import DomainPolicy
from fai_core.ingest.detect import read_telemetry
from fai_core.introspection import DeterministicIntrospector, GroupView
from fai_core.telemetry import TelemetryRecord

KEY = bytes(range(32))
EMBEDDER = HashingEmbedder(32)


class Recorder:
    """The deterministic introspector, keeping every view it was shown."""

    def __init__(self) -> None:
        self.views: list[GroupView] = []

    def introspect(self, group: GroupView) -> str | None:
        self.views.append(group)
        return DeterministicIntrospector().introspect(group)


def optimizer(**kwargs) -> LocalDSOptimizer:
    return LocalDSOptimizer(EMBEDDER, KEY, clock_ms=lambda: 1_767_300_000_000, **kwargs)


def session(
    task: str,
    start: float,
    ok: bool,
    *,
    domain: str = "coding",
    kind: str | None = None,
    attempt: str = "0",
    tag: str = "s",
) -> list[TelemetryRecord]:
    """One attempt: a probe step whose tool name carries `tag` (so a group's view tells
    which sessions it holds), then a test run that passes (+1) or fails (-1)."""
    return [
        TelemetryRecord(
            task, f"{tag}_probe", {"q": "secret"}, "ok", 0.0, start, attempt, domain, kind
        ),
        TelemetryRecord(
            task,
            "run_tests",
            None,
            "exit code 0, 5 passed" if ok else "exit code 1, 2 failed",
            1.0 if ok else -1.0,
            start + 1,
            attempt,
            domain,
            kind,
        ),
    ]


def tags_of(view: GroupView) -> set[str]:
    return {
        tool.split("_probe")[0] for t in view.trajectories for tool in t.tools if "_probe" in tool
    }


def keys(*tasks: str, attempt: str = "0") -> set[tuple[str, str]]:
    return {(task, attempt) for task in tasks}


# --- the headline -------------------------------------------------------------------------


def fai_jsonl(tasks: int) -> bytes:
    """FAI's own JSON Lines: `tasks` distinct tasks, one attempt each, 3 steps each."""
    lines = []
    for i in range(tasks):
        ok = i % 2 == 0
        for j, (tool, output, reward) in enumerate(
            [
                ("read_file", {"content": "def secret(): ..."}, 0.0),
                ("edit_file" if ok else "write_file", "done", 0.0),
                (
                    "run_tests",
                    "exit code 0, 5 passed" if ok else "exit code 1, 2 failed",
                    1.0 if ok else -1.0,
                ),
            ]
        ):
            lines.append(
                {
                    "task_id": f"issue-{i}",
                    "tool": tool,
                    "input": {"path": "src/secret.py"},
                    "output": output,
                    "reward": reward,
                    "time": 1_700_000_000.0 + 60 * i + j,
                    "domain": "coding",
                }
            )
    return "\n".join(json.dumps(line) for line in lines).encode()


def test_single_attempt_sessions_in_fai_format_yield_experiences():
    fmt, converted = read_telemetry(fai_jsonl(8), "auto", DomainPolicy())
    assert fmt == "fai" and len(converted.records) == 24 and not converted.problems
    result = optimizer().extract(converted.records)
    stats = result.stats
    assert (stats.records, stats.tasks, stats.trajectories) == (24, 8, 8)
    assert stats.groups == stats.pooled_groups == 2
    assert len(result.experiences) >= 1
    for e in result.experiences:
        assert e.domain == "coding" and e.iteration == 1 and 0 < e.quality < 1
        assert "secret" not in e.text
    assert result.consumed == {(f"issue-{i}", "0") for i in range(8)}
    assert result.waiting == set()
    assert stats.waiting_trajectories == stats.unscored_trajectories == 0


def test_without_pooling_the_same_sessions_give_nothing_as_before():
    _, converted = read_telemetry(fai_jsonl(8), "auto", DomainPolicy())
    result = optimizer(pool_single_attempts=False).extract(converted.records)
    assert result.experiences == []
    assert result.stats.groups == result.stats.pooled_groups == 0
    assert result.stats.unscored_trajectories == 8 and result.stats.waiting_trajectories == 0
    assert result.consumed == set() and result.waiting == set()


# --- pools ----------------------------------------------------------------------------------


def test_pools_never_mix_domains_or_kinds():
    labels = [
        ("coding", None, 4),
        ("coding", "fix", 4),
        ("devops", None, 4),
        ("coding", "review", 3),
        ("general", None, 2),
    ]
    records: list[TelemetryRecord] = []
    expected_waiting: set[tuple[str, str]] = set()
    n = 0
    for round_ in range(4):  # interleaved in time, so only the labels can keep them apart
        for domain, kind, count in labels:
            if round_ >= count:
                continue
            task = f"{domain}-{kind}-{round_}"
            tag = f"{domain}X{kind}".replace("-", "")
            records += session(task, 10.0 * n, round_ % 2 == 0, domain=domain, kind=kind, tag=tag)
            n += 1
            if count < GROUP_SIZE:
                expected_waiting.add((task, "0"))
    recorder = Recorder()
    result = optimizer(introspector=recorder).extract(records)
    assert result.stats.pooled_groups == result.stats.groups == 3
    assert len(recorder.views) == 3
    for view in recorder.views:
        assert tags_of(view) == {f"{view.domain}X{view.kind}".replace("-", "")}
    assert {(v.domain, v.kind) for v in recorder.views} == {
        ("coding", None),
        ("coding", "fix"),
        ("devops", None),
    }
    assert {e.domain for e in result.experiences} == {"coding", "devops"}
    every = {(r.task_id, r.attempt) for r in records}
    assert result.waiting == expected_waiting and len(expected_waiting) == 5
    assert result.consumed == every - expected_waiting
    assert result.stats.waiting_trajectories == result.stats.unscored_trajectories == 5


def test_seven_sessions_make_one_group_and_three_wait_then_one_more_groups_them():
    oks = [True, False, True, False, False, True, False, True]
    sessions = {f"t{i}": session(f"t{i}", 100.0 * i, oks[i], tag=f"t{i}") for i in range(8)}
    first = [r for i in range(7) for r in sessions[f"t{i}"]]
    random.Random(7).shuffle(first)  # arrival order does not matter, start time does
    recorder = Recorder()
    result = optimizer(introspector=recorder).extract(first)
    assert result.stats.pooled_groups == 1
    assert result.consumed == keys("t0", "t1", "t2", "t3")
    assert result.waiting == keys("t4", "t5", "t6")
    assert result.stats.waiting_trajectories == 3
    assert tags_of(recorder.views[0]) == {"t0", "t1", "t2", "t3"}
    # A second call sees what is left (the spool keeps the waiting ones) plus one more.
    left = [r for r in first if (r.task_id, r.attempt) in result.waiting]
    again = optimizer(introspector=recorder).extract(left + sessions["t7"])
    assert again.stats.pooled_groups == 1
    assert again.consumed == keys("t4", "t5", "t6", "t7")
    assert again.waiting == set() and again.stats.waiting_trajectories == 0
    assert tags_of(recorder.views[1]) == {"t4", "t5", "t6", "t7"}
    assert [e.iteration for e in result.experiences + again.experiences] == [1, 1]


def test_groups_are_cut_by_start_time_ties_by_task_then_attempt():
    records = []
    for i, start in enumerate([50.0, 40.0, 30.0, 20.0, 10.0]):  # newest first in input
        records += session(f"t{i}", start, i % 2 == 0)
    result = optimizer().extract(records)
    assert result.waiting == keys("t0")  # the newest waits
    # equal start times: task id decides, so the result does not depend on arrival
    tied = []
    for task in ["d", "b", "e", "a", "c"]:
        tied += session(task, 5.0, task in "ab")
    for order in (tied, tied[::-1]):
        result = optimizer().extract(order)
        assert result.waiting == keys("e")
        assert result.consumed == keys("a", "b", "c", "d")


def test_pooling_is_deterministic_whatever_the_arrival_order():
    records = []
    for i in range(12):
        records += session(f"t{i}", 7.0 * i, i % 3 == 0, tag=f"t{i}")
    reference = optimizer().extract(records)
    assert reference.experiences
    for seed in range(3):
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        result = optimizer().extract(shuffled)
        assert [(e.text, e.quality) for e in result.experiences] == [
            (e.text, e.quality) for e in reference.experiences
        ]
        assert result.consumed == reference.consumed and result.waiting == reference.waiting


def test_a_task_with_two_attempts_is_pooled_whole():
    records = session("pair", 1.0, True, attempt="a") + session("pair", 2.0, False, attempt="b")
    records += session("x", 3.0, False) + session("y", 4.0, True)
    result = optimizer().extract(records)
    assert result.stats.pooled_groups == 1
    assert result.consumed == {("pair", "a"), ("pair", "b"), ("x", "0"), ("y", "0")}
    assert result.waiting == set()


def test_no_signal_pooled_groups_are_counted_and_consumed():
    records = []
    for i in range(6):
        records += session(f"t{i}", float(i), True, tag=f"t{i}")  # all succeed: no contrast
    result = optimizer().extract(records)
    stats = result.stats
    assert result.experiences == []
    assert stats.pooled_groups == stats.groups == stats.no_signal == 1
    assert result.consumed == keys("t0", "t1", "t2", "t3")  # done with, not retried forever
    assert result.waiting == keys("t4", "t5")


# --- retried tasks keep the per-task behaviour ---------------------------------------------


def retried(task: str, oks: list[bool], *, start: float = 0.0, tool: str = "r") -> list:
    records = []
    for i, ok in enumerate(oks):
        records += session(task, start + i, ok, attempt=str(i), tag=f"{tool}{i // GROUP_SIZE}")
    return records


def test_retried_tasks_keep_per_task_groups_and_iterations():
    many = retried("retried", [False, True, False, False, True, False, False, False])  # 2 groups
    singles = session("s1", 0.5, True, tag="one") + session("s2", 1.5, False, tag="one")
    singles += session("s3", 2.5, False, tag="one")
    recorder = Recorder()
    result = optimizer(introspector=recorder).extract(many + singles)
    stats = result.stats
    assert stats.groups == 2 and stats.pooled_groups == 0
    assert [v.iteration for v in recorder.views] == [1, 2]
    assert [tags_of(v) for v in recorder.views] == [{"r0"}, {"r1"}]  # no single slipped in
    assert sorted(e.iteration for e in result.experiences) == [1, 2]
    assert result.consumed == {("retried", str(i)) for i in range(8)}
    assert result.waiting == keys("s1", "s2", "s3")
    # the retried task's experiences are the ones it gave before pooling existed
    strict = optimizer(pool_single_attempts=False).extract(many + singles)
    assert [(e.text, e.iteration, e.quality) for e in strict.experiences] == [
        (e.text, e.iteration, e.quality) for e in result.experiences
    ]
    assert strict.stats.unscored_trajectories == 3 and strict.waiting == set()


def test_exactly_g_attempts_is_a_per_task_group_not_a_pool():
    result = optimizer().extract(retried("four", [True, False, False, False]))
    assert result.stats.groups == 1 and result.stats.pooled_groups == 0
    assert result.consumed == {("four", str(i)) for i in range(4)}


def test_a_trailing_partial_block_is_neither_consumed_nor_waiting():
    result = optimizer().extract(retried("five", [True, False, False, False, True]))
    assert result.consumed == {("five", str(i)) for i in range(4)}
    assert result.waiting == set()
    assert result.stats.unscored_trajectories == 1 and result.stats.waiting_trajectories == 0


def test_attempts_past_k_groups_are_consumed():
    oks = [i % 4 == 1 for i in range(13)]  # 3 groups of 4 (K = 3) and one attempt past them
    result = optimizer().extract(retried("many", oks))
    assert result.stats.groups == 3 and result.stats.pooled_groups == 0
    assert result.consumed == {("many", str(i)) for i in range(13)}
    assert result.waiting == set()


@pytest.mark.parametrize("pool", [True, False])
def test_group_accounting_adds_up(pool):
    records = retried("r", [True, False, False, False, False, True, False, False, True])
    for i in range(10):
        records += session(f"s{i}", 100.0 + i, i % 3 == 0, kind="fix" if i % 2 else None)
    stats = optimizer(pool_single_attempts=pool).extract(records).stats
    assert stats.groups == (
        stats.no_signal
        + stats.introspection_errors
        + stats.no_pattern
        + stats.experiences
        + stats.duplicates
    )
    assert stats.waiting_trajectories <= stats.unscored_trajectories
    assert stats.pooled_groups == (2 if pool else 0)  # 5 fix + 5 plain: one group each


def test_the_cli_offers_every_format_the_reader_knows():
    from fai_core.ingest.detect import FORMATS
    from fai_net.cli.telemetry import FORMATS as CLI_FORMATS

    assert CLI_FORMATS == FORMATS
