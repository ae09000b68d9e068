"""OpenAI Agents SDK exports (`trace.export()`, `span.export()`) to records and an end.

The dicts below are what the SDK 0.24 exports (recorded from a `Runner.run` with a
scripted model, plus the span types a real model run adds), trimmed of nothing the
converter reads."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fai_core.ingest.common import DomainPolicy, DomainRule, SessionEnd, finish_trajectories
from fai_core.ingest.openai_agents import (
    USED_SPAN_TYPES,
    check_span,
    convert_trace,
    function_outcome,
    parse_time,
    read_agents_export,
    slim_span,
)
from fai_core.introspection import classify_output

TID = "trace_5538a22d4b674899b08b6b2c3e476485"
T0 = "2026-01-05T10:00:00.000000+00:00"
SECRET = "sk-live-123 customer Ann Smith"


def trace_export(**metadata: Any) -> dict[str, Any]:
    return {
        "object": "trace",
        "id": TID,
        "workflow_name": "Fix and deploy",
        "group_id": "thread_42",
        "metadata": metadata or None,
    }


def span(n: int, data: dict[str, Any], error: dict[str, Any] | None = None, **kw) -> dict:
    out = {
        "object": "trace.span",
        "id": f"span_{n:024d}",
        "trace_id": TID,
        "parent_id": "span_000000000000000000000001",
        "started_at": f"2026-01-05T10:00:{n:02d}.000000+00:00",
        "ended_at": f"2026-01-05T10:00:{n:02d}.500000+00:00",
        "span_data": data,
        "error": error,
    }
    out.update(kw)
    return out


def function(name: str, output: str | None, inp: str = "{}") -> dict[str, Any]:
    return {"type": "function", "name": name, "input": inp, "output": output, "mcp_data": None}


def agent(name: str) -> dict[str, Any]:
    return {"type": "agent", "name": name, "handoffs": [], "tools": ["run_tests"],
            "output_type": "str"}  # fmt: skip


REDACTED = {
    "message": "Error running tool (non-fatal)",
    "data": {"tool_name": "deploy", "error": "Tool execution failed. Error details are redacted."},
}


def run_spans() -> list[dict[str, Any]]:
    """One run: two tool calls in parallel, a handoff, a retry that passes, model spans."""
    return [
        span(1, {"type": "custom", "name": "task", "data": {"sdk_span_type": "task"}}),
        span(2, agent("Triage")),
        span(3, {"type": "generation", "input": [{"role": "user", "content": SECRET}],
                 "output": [{"role": "assistant", "content": SECRET}], "model": "gpt-5",
                 "model_config": {}, "usage": {"input_tokens": 9, "output_tokens": 3}}),
        span(4, {"type": "handoff", "from_agent": "Triage", "to_agent": "Shop assistant"}),
        span(5, agent("Shop assistant")),
        span(6, {"type": "mcp_tools", "server": "github", "result": ["create_pr"]}),
        span(7, {"type": "response", "response_id": "resp_1", "usage": None}),
        span(8, function("run_tests", "exit code 1\n1 failed, 3 passed", json.dumps(SECRET))),
        span(9, function("deploy", "An error occurred while running the tool."), REDACTED),
        span(10, function("run_tests", '{"status": "passed", "summary": "' + SECRET + '"}')),
        span(11, function("github/create pr", SECRET)),
        span(12, function("lookup", None)),  # trace_include_sensitive_data=False
        span(13, {"type": "guardrail", "name": "no_pii", "triggered": False}),
        span(14, {"type": "custom", "name": "turn", "data": {"sdk_span_type": "turn"}}),
    ]  # fmt: skip


def test_a_run_becomes_one_trajectory():
    out = convert_trace(trace_export(team="web"), run_spans(), DomainPolicy("support"))
    assert out.problems == []
    assert out.units == 15
    assert out.ignored == 6  # task, generation, handoff, mcp_tools, response, turn
    got = [(r.tool, classify_output(r.output).label, r.reward) for r in out.records]
    assert got == [
        ("run_tests", "exit=1 failed", -0.1),
        ("deploy", "failed", -0.1),
        ("run_tests", "passed", 0.0),
        ("github_create_pr", "ok", 0.0),
        ("lookup", "ok", 0.0),
    ]
    first = out.records[0]
    assert (first.task_id, first.attempt, first.domain, first.kind) == (TID, "0", "support", None)
    assert first.time == parse_time("2026-01-05T10:00:08.500000+00:00") == 1767607208.5
    assert all(r.input is None for r in out.records)
    assert out.ends == [SessionEnd(TID, "0", failed=None)]
    lines = "\n".join(r.to_line() for r in out.records)
    assert "sk-live" not in lines and "Ann" not in lines


def test_an_agent_error_or_a_triggered_guardrail_fails_the_run():
    tripped = {"message": "Guardrail tripwire triggered",
               "data": {"guardrail": "no_pii", "type": "input_guardrail"}}  # fmt: skip
    for extra in (
        span(20, agent("Shop assistant"), tripped),
        span(20, {"type": "guardrail", "name": "no_pii", "triggered": True}),
        span(20, agent("x"), {"message": "Max turns exceeded", "data": {"max_turns": 10}}),
    ):
        out = convert_trace(trace_export(), [*run_spans(), extra])
        assert out.ends == [SessionEnd(TID, "0", failed=True)]
        finished = finish_trajectories(out.records, {e.key: e for e in out.ends})
        assert finished[-1].reward == pytest.approx(-1.0)


def test_a_clean_run_is_judged_by_its_last_tool_call():
    spans = [span(1, agent("a")), span(2, function("deploy", "deployed to prod"))]
    out = convert_trace(trace_export(), spans)
    finished = finish_trajectories(out.records, {e.key: e for e in out.ends})
    assert [classify_output(r.output).label for r in finished] == ["deployed"]
    assert finished[0].reward == pytest.approx(1.0)


def test_task_identity_from_metadata():
    out = convert_trace(trace_export(**{"fai.task.id": "ticket-17"}), run_spans())
    assert {(r.task_id, r.attempt) for r in out.records} == {("ticket-17", TID)}
    assert out.ends == [SessionEnd("ticket-17", TID)]
    bad = convert_trace(trace_export(**{"fai.task.id": "  "}), run_spans())
    assert [p.reason for p in bad.problems] == ["bad fai.task.id"]
    assert (bad.records, bad.ends) == ([], [])


def test_domain_from_metadata_workflow_and_first_agent():
    rules = (
        DomainRule.parse("agent_name=Triage:support/triage"),
        DomainRule.parse("workflow_name=Fix and deploy:devops"),
    )
    policy = DomainPolicy("general", rules)
    # The first agent by start time is Triage even when its span ends last.
    spans = run_spans()
    spans.append(spans.pop(1))
    out = convert_trace(trace_export(), spans, policy)
    assert {(r.domain, r.kind) for r in out.records} == {("support", "triage")}
    no_triage = [s for s in run_spans() if s["span_data"].get("name") != "Triage"]
    out = convert_trace(trace_export(), no_triage, policy)
    assert {(r.domain, r.kind) for r in out.records} == {("devops", None)}
    out = convert_trace(trace_export(**{"fai.domain": "coding", "fai.kind": "deploy"}),
                        run_spans(), policy)  # fmt: skip
    assert {(r.domain, r.kind) for r in out.records} == {("coding", "deploy")}
    team = DomainPolicy("general", (DomainRule.parse("team=web:frontend"),))
    out = convert_trace(trace_export(team="web"), run_spans(), team)
    assert {r.domain for r in out.records} == {"frontend"}


def test_an_invalid_explicit_domain_refuses_the_trace():
    out = convert_trace(trace_export(**{"fai.domain": "Not Valid"}), run_spans())
    assert [(p.where, p.reason) for p in out.problems] == [("trace", "bad fai.domain")]
    assert (out.records, out.ends, out.units) == ([], [], 15)


@pytest.mark.parametrize(
    ("trace", "reason"),
    [
        ([], "trace is not an object"),
        ({**trace_export(), "object": "trace.span"}, "not a trace"),
        ({**trace_export(), "id": ""}, "trace id missing"),
        ({**trace_export(), "workflow_name": None}, "workflow_name missing"),
        ({**trace_export(), "group_id": 5}, "group_id has the wrong type"),
        ({**trace_export(), "metadata": ["a"]}, "metadata has the wrong type"),
    ],
)  # fmt: skip
def test_malformed_traces_are_refused_whole(trace, reason):
    out = convert_trace(trace, run_spans())
    assert [(p.where, p.reason) for p in out.problems] == [("trace", reason)]
    assert (out.records, out.ends) == ([], [])


def _broken(n: int) -> list[tuple[Any, str]]:
    good = span(n, function("run_tests", "ok"))
    return [
        ("text", "span is not an object"),
        ({**good, "object": "trace"}, "not a span"),
        ({**good, "id": None}, "span id missing"),
        ({**good, "trace_id": "trace_other"}, "span of another trace"),
        ({**good, "span_data": {"name": "x"}}, "span_data missing"),
        ({**good, "error": "boom"}, "error has the wrong type"),
        ({**good, "error": {"message": "x", "data": "y"}}, "error has the wrong type"),
        ({**good, "ended_at": 5}, "ended_at has the wrong type"),
        ({**good, "span_data": {"type": "function", "name": 3}}, "function span without a name"),
        ({**good, "span_data": {"type": "guardrail", "triggered": "yes"}},
         "triggered has the wrong type"),
        ({**good, "span_data": function("///", "ok")}, "bad tool name"),
        ({**good, "started_at": None, "ended_at": "yesterday"}, "no time"),
        ({**good, "ended_at": "1960-01-01T00:00:00+00:00"}, "bad time"),
    ]  # fmt: skip


@pytest.mark.parametrize(("bad", "reason"), _broken(30), ids=[r for _, r in _broken(30)])
def test_a_malformed_span_is_a_problem_and_the_rest_is_kept(bad, reason):
    out = convert_trace(trace_export(), [*run_spans(), bad])
    assert [(p.where, p.reason) for p in out.problems] == [("span 14", reason)]
    assert len(out.records) == 5
    assert out.units == 16


def test_a_trace_without_tool_calls_has_no_end():
    out = convert_trace(trace_export(), [span(1, agent("a"))])
    assert (out.records, out.ends, out.problems, out.units) == ([], [], [], 2)


@pytest.mark.parametrize(
    ("output", "error", "label"),
    [
        ('{"exit_code": 0, "stdout": "1 failed"}', None, "exit=0"),
        ('{"status_code": 404}', None, "http=404"),
        (" {'exit_code': 2, 'ok': True, 'log': 'all passed'}", None, "exit=2"),  # str(dict)
        ("{1, 2}", None, "ok"),
        ("{'status': " + "[" * 200 + "]" * 200 + "}", None, "ok"),
        ("[1, 2]", None, "ok"),
        ("{not json", None, "ok"),
        ("Traceback ...\nKeyError: 'sku'", None, "KeyError"),
        (None, {"message": "Error running tool", "data": {"error": "TimeoutError()"}},
         "TimeoutError error"),
        ("fine", {"message": "Error running tool", "data": None}, "error"),
        ("fine", {"message": "Invalid JSON provided", "data": {}}, "invalid"),
        ("fine", {"message": "", "data": {"tool_name": "x", "n": 3}}, "error"),
    ],
)  # fmt: skip
def test_function_classes(output, error, label):
    exported = span(1, function("t", output), error)
    assert function_outcome(exported).label == label


def test_slim_spans_convert_the_same_and_hold_no_text():
    spans = [*run_spans(), span(20, agent("x"), {"message": "Max turns exceeded", "data": {}})]
    slim = [s for s in map(slim_span, spans) if s is not None]
    assert {s["span_data"]["type"] for s in slim} == USED_SPAN_TYPES
    assert "sk-live" not in json.dumps(slim)
    full = convert_trace(trace_export(), spans)
    reduced = convert_trace(trace_export(), slim)
    assert reduced.records == full.records
    assert reduced.ends == full.ends
    assert full.ignored - reduced.ignored == len(spans) - len(slim)
    assert [slim_span(s) for s in slim] == slim  # idempotent
    broken = {**span(1, function("t", "x")), "trace_id": 5}
    assert slim_span(broken) is broken and check_span(broken) == "trace_id missing"


def test_converting_does_not_mutate_its_input():
    spans, trace = run_spans(), trace_export(team="web")
    before = copy.deepcopy((trace, spans))
    convert_trace(trace, spans)
    [slim_span(s) for s in spans]
    assert (trace, spans) == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-01-05T10:00:00+00:00", 1767607200.0),
        ("2026-01-05T10:00:00Z", 1767607200.0),
        ("2026-01-05T11:00:00+01:00", 1767607200.0),
        ("2026-01-05T10:00:00", 1767607200.0),  # no offset: UTC
        ("yesterday", None),
        (None, None),
        ("9" * 100, None),
    ],
)
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds


def _on(trace_id: str, item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "trace_id": trace_id} if item.get("object") == "trace.span" else item


def test_a_file_of_exports_is_converted_per_trace(tmp_path):
    other = "trace_0000000000000000000000000000000b"
    orphan = "trace_0000000000000000000000000000000c"
    spans = run_spans()
    b_trace = {**trace_export(**{"fai.domain": "devops"}), "id": other}
    lines = [
        trace_export(team="web"),
        *spans[:8],
        _on(other, span(40, function("kubectl", "Error from server (Forbidden)"))),
        *spans[8:],
        b_trace,
        _on(orphan, span(41, function("curl", "HTTP/1.1 204 No Content"))),
        "not json",
        {"object": "response", "id": "resp_1"},
        {"object": "trace", "workflow_name": "no id"},
        _on(other, span(42, function("kubectl", "ok"), error="boom")),
        {**trace_export(**{"fai.domain": "coding"})},  # a later copy of trace A wins
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n"
    path = tmp_path / "exports.jsonl"
    path.write_text(text)
    out = read_agents_export(path, DomainPolicy("support"))
    assert [(p.where, p.reason) for p in out.problems] == [
        ("line 19", "not JSON"),
        ("line 20", "not a trace or span export"),
        ("line 21", "trace id missing"),
        ("line 22", "error has the wrong type"),
    ]
    assert out.units == len(lines)
    assert out.ignored == 7  # 6 spans of types not read, 1 superseded trace object
    by_task = {}
    for r in out.records:
        by_task.setdefault(r.task_id, []).append(
            (r.tool, classify_output(r.output).label, r.domain)
        )
    assert by_task == {
        TID: [
            ("run_tests", "exit=1 failed", "coding"),
            ("deploy", "failed", "coding"),
            ("run_tests", "passed", "coding"),
            ("github_create_pr", "ok", "coding"),
            ("lookup", "ok", "coding"),
        ],
        other: [("kubectl", "denied", "devops")],
        orphan: [("curl", "http=204", "support")],
    }
    assert out.ends == [SessionEnd(TID, "0"), SessionEnd(other, "0"), SessionEnd(orphan, "0")]
    same = convert_trace(trace_export(**{"fai.domain": "coding"}), spans)
    assert out.records[:5] == same.records


def test_a_refused_trace_object_takes_its_spans_with_it():
    lines = [{**trace_export(), "metadata": "x"}, *run_spans()]
    out = read_agents_export("\n".join(map(json.dumps, lines)).encode())
    assert [(p.where, p.reason) for p in out.problems] == [
        ("line 1", "metadata has the wrong type")
    ]
    assert (out.records, out.ends, out.units) == ([], [], 15)
