"""LocalDSOptimizer end to end: telemetry in, valid private experiences out."""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fai_core.embedding import HashingEmbedder
from fai_core.experience import MAX_WORDS, Experience
from fai_core.extraction import LocalDSOptimizer
from fai_core.introspection import GroupView, IntrospectionError
from fai_core.telemetry import TelemetryRecord, read_jsonl

KEY = bytes(range(32))
EMBEDDER = HashingEmbedder(64)


def sample_records() -> list[TelemetryRecord]:
    data = (resources.files("fai_core") / "data" / "sample_telemetry.jsonl").read_bytes()
    return read_jsonl(io.BytesIO(data)).records


def task(task_id: str, returns: list[float], tools=("a_tool", "b_tool"), **labels):
    """One record per attempt; attempts with a positive return use the second tool."""
    return [
        TelemetryRecord(task_id, tools[r > 0], "in", "exit code 0", r, 100.0 + i, str(i), **labels)
        for i, r in enumerate(returns)
    ]


def test_sample_set_end_to_end():
    seen: list[Experience] = []
    optimizer = LocalDSOptimizer(
        EMBEDDER, KEY, clock_ms=lambda: 1_767_300_000_000, on_experience=seen.append
    )
    result = optimizer.extract(sample_records())
    experiences = result.experiences
    stats = result.stats
    assert stats.records == 734 and stats.tasks == 30
    assert stats.groups == stats.no_signal + stats.introspection_errors + stats.no_pattern + (
        stats.experiences + stats.duplicates
    )
    assert stats.experiences == len(experiences) >= 25
    assert seen == experiences
    assert {e.domain for e in experiences} == {
        "coding", "devops", "data-analysis", "writing", "support"
    }  # fmt: skip
    assert {e.iteration for e in experiences} == {1, 2, 3}
    assert len({e.id for e in experiences}) == len(experiences)
    for e in experiences:
        assert isinstance(e, Experience) and 0 < e.quality < 1
        assert e.source == KEY and e.created_ms == 1_767_300_000_000
        assert len(e.text.split(" ")) <= MAX_WORDS
        assert e.dimension == 64
        np.testing.assert_allclose(e.embedding, EMBEDDER.embed([e.text])[0])
    assert optimizer.run(sample_records()) == experiences  # deterministic


def test_record_timestamps_and_iterations():
    records = task("t", [0, 1, 0, 0, 0, 0, 2, 1, 5, 0, 0, 3, 9])  # 13 attempts
    optimizer = LocalDSOptimizer(EMBEDDER, KEY, timestamps="record")
    result = optimizer.extract(records)
    # all three groups say the same thing, so they merge into one experience, and the
    # first group, with the highest quality (one lone success), is the one kept
    assert result.stats.groups == 3 and result.stats.unscored_trajectories == 1
    assert result.stats.duplicates == 2 and len(result.experiences) == 1
    (e,) = result.experiences
    assert e.domain == "general"
    assert e.iteration == 1 and e.created_ms == 103_000


def test_distinct_patterns_keep_their_iteration():
    records = task("t", [0, 1, 0, 0]) + task("t", [-1, -1, 3, -1], tools=("c_tool", "d_tool"))
    for i, r in enumerate(records):
        records[i] = TelemetryRecord(
            r.task_id, r.tool, r.input, r.output, r.reward, float(i), str(i), "devops", "deploy"
        )
    experiences = LocalDSOptimizer(EMBEDDER, KEY).run(records)
    assert [e.iteration for e in experiences] == [1, 2]
    assert all(e.text.startswith("deploy: ") for e in experiences)


def test_flat_groups_and_short_tasks_yield_nothing():
    records = task("flat", [1, 1, 1, 1]) + task("short", [0, 1, 0])
    result = LocalDSOptimizer(EMBEDDER, KEY).extract(records)
    assert result.experiences == []
    assert result.stats.no_signal == 1 and result.stats.unscored_trajectories == 3


class Scripted:
    def __init__(self, answers):
        self.answers = list(answers)
        self.views: list[GroupView] = []

    def introspect(self, group: GroupView):
        self.views.append(group)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_pluggable_introspector_errors_and_invalid_texts_are_counted():
    records = []
    for n in range(5):
        records += task(f"t{n}", [0, 1, 0, 0])
    intro = Scripted(
        [IntrospectionError("down"), None, "two  spaces", " ".join(["w"] * 33), "a fine pattern"]
    )
    result = LocalDSOptimizer(EMBEDDER, KEY, introspector=intro).extract(records)
    assert result.stats.introspection_errors == 1 and result.stats.no_pattern == 3
    assert [e.text for e in result.experiences] == ["a fine pattern"]
    assert all(isinstance(v, GroupView) for v in intro.views)
    # Anything but an IntrospectionError is a bug in the introspector and propagates as is.
    bug = RuntimeError("introspector bug")
    with pytest.raises(RuntimeError, match=r"^introspector bug$"):
        LocalDSOptimizer(EMBEDDER, KEY, introspector=Scripted([bug])).run(records)


def test_constructor_checks():
    with pytest.raises(ValueError, match=r"^source must be the node's 32-byte Ed25519 public key$"):
        LocalDSOptimizer(EMBEDDER, b"short")
    with pytest.raises(ValueError, match=r"^timestamps must be 'now' or 'record'$"):
        LocalDSOptimizer(EMBEDDER, KEY, timestamps="later")
    with pytest.raises(
        ValueError, match=r"^group_size must be >= 2 and max_iterations in \[1, 255\]$"
    ):
        LocalDSOptimizer(EMBEDDER, KEY, group_size=1)


class BadEmbedder:
    model_id = "bad"
    dimension = 8

    def embed(self, texts):
        return np.zeros((len(texts) + 1, 8), dtype=np.float32)


def test_embedder_shape_is_checked():
    with pytest.raises(ValueError, match="shape"):
        LocalDSOptimizer(BadEmbedder(), KEY).run(task("t", [0, 1, 0, 0]))


CANARY = st.text(alphabet="qxzjvwy@/.:QXZJVW", min_size=6, max_size=30)
OUTPUTS = ["exit code 1", "exit code 0 passed", "ValueError: {}", "{} timed out", "HTTP/1.1 500"]
record_spec = st.tuples(
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["1", "2", "3", "4", "5"]),
    st.sampled_from(["run_tests", "edit_file", "http_check", "send_reply"]),
    st.sampled_from(OUTPUTS),
    CANARY,
    CANARY,
    st.floats(-3, 3, allow_nan=False),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_spec, min_size=4, max_size=40))
def test_arbitrary_telemetry_gives_valid_experiences_without_raw_data(spec):
    records = [
        TelemetryRecord(t, tool, {"q": inp}, out.format(canary), r, float(i), a, "coding")
        for i, (t, a, tool, out, canary, inp, r) in enumerate(spec)
    ]
    experiences = LocalDSOptimizer(EMBEDDER, KEY, clock_ms=lambda: 5).run(records)
    for e in experiences:
        assert len(e.text.split(" ")) <= MAX_WORDS and 0 < e.quality < 1
        assert 1 <= e.iteration <= 3
        for *_, canary, inp, _r in spec:
            for raw in (canary, inp):
                assert not any(raw[i : i + 6] in e.text for i in range(len(raw) - 5))
