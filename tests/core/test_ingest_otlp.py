"""OTLP import: real spans from the OpenTelemetry SDK, encoded by the SDK's own OTLP encoder.

The producers are the real ones (TracerProvider, InMemorySpanExporter, `encode_spans`,
protobuf's JSON mapping), so a change in how OpenTelemetry encodes spans shows up here.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from fai_core.ingest.common import DomainPolicy, DomainRule, IngestError, SessionEnd
from fai_core.ingest.otlp import (
    JSON,
    PROTOBUF,
    TraceSessions,
    convert_request,
    looks_like_otlp,
    parse_request,
    read_otlp_file,
    response_bytes,
)
from fai_core.introspection import Outcome, classify_output

POLICY = DomainPolicy(default="general", rules=(DomainRule.parse("service.name=ci-bot:devops"),))
SECRET = "sk-live-do-not-keep"


class Agent:
    """One instrumented process: a tracer whose finished spans are kept in memory."""

    def __init__(self, service: str, **resource: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, **resource})
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test-agent")

    def run(self, tools, *, status=None, evaluation=None, chat=True, **agent_attrs):
        """One agent run: an invoke_agent root, a chat span, one execute_tool per tool.

        `tools` holds (name, attributes, error) triples; returns the trace id in hex.
        """
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "coder"}
        with self.tracer.start_as_current_span("invoke_agent coder", attributes=attrs) as root:
            root.set_attributes(agent_attrs)
            if chat:
                with self.tracer.start_as_current_span(
                    "chat m", attributes={"gen_ai.operation.name": "chat"}
                ):
                    pass
            for name, tool_attrs, error in tools:
                base = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
                with self.tracer.start_as_current_span(
                    f"execute_tool {name}", attributes=base
                ) as span:
                    span.set_attributes(tool_attrs)
                    if error:
                        span.set_status(Status(StatusCode.ERROR, SECRET))
            if evaluation is not None:
                root.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": "task", "gen_ai.evaluation.score.value": evaluation},
                )
            if status is not None:
                root.set_status(Status(status))
            return format(root.get_span_context().trace_id, "032x")

    def request(self) -> ExportTraceServiceRequest:
        return encode_spans(self.exporter.get_finished_spans())

    def spans(self):
        return self.exporter.get_finished_spans()


def collector_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the collector writes it: hex ids, integer enums, one line."""
    obj = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in obj.get("resourceSpans", []):
        for scope in rs.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(obj, separators=(",", ":")).encode()


def outcomes(converted):
    return [(r.tool, classify_output(r.output)) for r in converted.records]


@pytest.fixture
def ci_run():
    agent = Agent("ci-bot")
    trace = agent.run(
        [
            ("bash", {"process.exit.code": 0}, False),
            ("bash", {"process.exit.code": 2}, True),
            ("pytest", {"error.type": "TimeoutError"}, True),
            ("http_get", {"http.response.status_code": 503}, False),
            ("mcp/github search", {"error.type": "AcmeQuotaError"}, True),
            ("lint", {}, True),
        ],
        status=StatusCode.ERROR,
    )
    return agent, trace


def test_sdk_spans_become_records_with_outcome_classes_only(ci_run):
    agent, trace = ci_run
    out = convert_request(parse_request(agent.request().SerializeToString(), PROTOBUF), POLICY)
    assert outcomes(out) == [
        ("bash", Outcome(exit_code=0)),
        ("bash", Outcome(exit_code=2)),
        ("pytest", Outcome(exception="TimeoutError")),
        ("http_get", Outcome(http_status=503)),
        ("mcp_github_search", Outcome(exception="exception")),
        ("lint", Outcome(status="error")),
    ]
    assert [r.reward for r in out.records] == [0.0, -0.1, -0.1, -0.1, -0.1, -0.1]
    assert {(r.task_id, r.attempt, r.domain, r.kind, r.input) for r in out.records} == {
        (trace, trace, "devops", None, None)
    }
    tool_spans = [s for s in agent.spans() if s.name.startswith("execute_tool")]
    assert [r.time for r in out.records] == [s.end_time / 1e9 for s in tool_spans]
    assert out.ends == [SessionEnd(trace, trace, failed=True)]
    assert (out.units, out.ignored, out.problems) == (8, 1, [])
    assert all(SECRET not in r.to_line() and "Acme" not in r.to_line() for r in out.records)


def test_json_encodings_give_the_same_records(ci_run):
    agent, _ = ci_run
    request = agent.request()
    expected = convert_request(request, POLICY)
    base64_json = json_format.MessageToJson(request).encode()
    for data in (base64_json, collector_json(request)):
        assert b"resourceSpans" in data
        out = convert_request(parse_request(data, "application/json; charset=utf-8"), POLICY)
        assert (out.records, out.ends, out.units) == (expected.records, expected.ends, 8)


def test_domains_from_default_rules_and_explicit_attributes():
    plain = Agent("notebook")
    plain.run([("python", {}, False)])
    assert convert_request(plain.request(), POLICY).records[0].domain == "general"
    assert convert_request(plain.request(), DomainPolicy("data")).records[0].domain == "data"

    explicit = Agent("ci-bot")
    explicit.run(
        [("kubectl", {}, False), ("helm", {"fai.domain": "infra"}, False)],
        **{"fai.domain": "k8s", "fai.kind": "deploy"},
    )
    out = convert_request(explicit.request(), POLICY)
    assert [(r.tool, r.domain, r.kind) for r in out.records] == [
        ("kubectl", "k8s", "deploy"),  # the agent span's attributes outrank the rule
        ("helm", "infra", "deploy"),  # the tool span's own outrank the agent's
    ]

    resource = Agent("svc", **{"fai.domain": "support"})
    resource.run([("ticket", {}, False)])
    assert convert_request(resource.request(), POLICY).records[0].domain == "support"


def test_invalid_domain_refuses_its_spans_not_the_request():
    agent = Agent("ci-bot")
    agent.run(
        [("bash", {}, False), ("git", {"fai.domain": "ok-domain"}, False)],
        **{"fai.domain": "Not A Domain!"},
    )
    out = convert_request(agent.request(), POLICY)
    assert [(r.tool, r.domain) for r in out.records] == [("git", "ok-domain")]
    assert [(p.where, p.reason) for p in out.problems] == [
        ("span 2 (execute_tool bash)", "fai.domain must match [a-z0-9-]{1,32}")
    ]


def test_conversation_sessions_span_traces_and_close_at_file_end():
    agent = Agent("chat-app")
    conv = {"gen_ai.conversation.id": "conv-7", "fai.task.id": "task-42"}
    agent.run([("search", {}, False)], status=StatusCode.ERROR, **conv)
    agent.run(
        [("search", {}, False), ("answer", {}, False)], status=StatusCode.OK, evaluation=0.5, **conv
    )
    request = agent.request()
    live = convert_request(request, POLICY)
    assert {(r.task_id, r.attempt) for r in live.records} == {("task-42", "conv-7")}
    assert len(live.records) == 3
    assert live.ends == []  # one trace's root does not end a conversation

    whole = read_otlp_file(collector_json(request), POLICY)
    assert whole.records == live.records
    assert whole.ends == [SessionEnd("task-42", "conv-7", failed=False, feedback=0.5)]


def test_trace_split_over_requests_stays_one_session():
    """SimpleSpanProcessor exports each span alone, children long before their root."""
    agent = Agent("ci-bot")
    trace = agent.run(
        [("bash", {}, False), ("git", {"process.exit.code": 1}, False)],
        status=StatusCode.OK,
        **{"gen_ai.conversation.id": "conv-9"},
    )
    memory = TraceSessions()
    parts = [
        convert_request(encode_spans([span]), POLICY, sessions=memory) for span in agent.spans()
    ]
    records = [r for part in parts for r in part.records]
    ends = [e for part in parts for e in part.ends]
    assert {(r.task_id, r.attempt) for r in records} == {(trace, trace)}
    assert ends == [SessionEnd(trace, trace, failed=False)]  # the root joins its children


def test_feedback_from_reward_attribute_and_evaluation_events():
    agent = Agent("svc")
    rewarded = agent.run([("a", {}, False)], evaluation=0.9, **{"fai.reward": -1.0})
    scored = agent.run([("b", {}, False)], evaluation=0.25)
    other_scale = agent.run([("c", {}, False)], evaluation=4.0)
    agent.run([("d", {}, False)], **{"fai.reward": 3})
    out = convert_request(agent.request(), POLICY)
    assert out.ends == [
        SessionEnd(rewarded, rewarded, None, -1.0),
        SessionEnd(scored, scored, None, 0.25),
        SessionEnd(other_scale, other_scale, None, None),
    ]
    assert [p.reason for p in out.problems] == ["fai.reward must be a number in [-1, 1]"]
    assert len(out.records) == 4


def test_outcome_sources_and_precedence():
    agent = Agent("svc")
    agent.run(
        [
            ("a", {"error.type": "java.net.UnknownHostException"}, False),
            ("b", {"error.type": "timeout"}, True),
            ("c", {"error.type": "_OTHER"}, False),
            ("d", {"process.exit_code": "3"}, False),
            (
                "e",
                {"gen_ai.tool.call.result": '{"exit_code": 1, "stderr": "' + SECRET + '"}'},
                False,
            ),
            ("f", {"gen_ai.tool.call.result": f"Traceback...\nKeyError: '{SECRET}'"}, False),
            ("g", {"http.response.status_code": 200, "gen_ai.tool.call.result": "HTTP 500"}, False),
            ("h", {"http.response.status_code": 99999, "process.exit.code": 7.5}, False),
            ("i", {"error.type": "503", "http.response.status_code": 502}, True),
        ],
        chat=False,
    )
    out = convert_request(agent.request(), POLICY)
    assert outcomes(out) == [
        ("a", Outcome(exception="exception")),
        ("b", Outcome(status="timeout")),
        ("c", Outcome(status="error")),
        ("d", Outcome(exit_code=3)),
        ("e", Outcome(exit_code=1)),
        ("f", Outcome(exception="KeyError")),
        ("g", Outcome(http_status=200)),
        ("h", Outcome()),
        ("i", Outcome(http_status=503)),
    ]
    assert all(SECRET not in r.to_line() for r in out.records)


def _mutated(request, index, change):
    copy = ExportTraceServiceRequest.FromString(request.SerializeToString())
    spans = [s for rs in copy.resource_spans for ss in rs.scope_spans for s in ss.spans]
    change(spans[index], spans)
    return copy


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s, _: setattr(s, "trace_id", bytes(16)), "bad trace id"),
        (lambda s, _: setattr(s, "span_id", b"\x01\x02"), "bad span id"),
        (lambda s, _: setattr(s, "parent_span_id", b"\x01"), "bad parent span id"),
        (lambda s, _: setattr(s, "end_time_unix_nano", 0), "missing start or end time"),
        (
            lambda s, _: setattr(s, "end_time_unix_nano", s.start_time_unix_nano - 1),
            "span ends before it starts",
        ),
        (lambda s, all_: setattr(s, "span_id", all_[0].span_id), "duplicate span"),
    ],
)
def test_bad_spans_are_problems_and_the_rest_is_kept(change, reason):
    agent = Agent("svc")
    agent.run([("first", {}, False), ("second", {}, False)], chat=False)
    out = convert_request(_mutated(agent.request(), 1, change), POLICY)
    assert [(p.where, p.reason) for p in out.problems] == [("span 2 (execute_tool second)", reason)]
    assert [r.tool for r in out.records] == ["first"]
    assert out.units == 3


def test_unusable_tool_name_is_a_problem():
    agent = Agent("svc")
    agent.run([("!!!", {}, False)], chat=False)
    out = convert_request(agent.request(), POLICY, where_prefix="req 4: ")
    assert [str(p) for p in out.problems] == [
        "req 4: span 1 (execute_tool !!!): tool name unusable"
    ]
    assert out.records == []


def test_tool_name_falls_back_to_the_span_name():
    agent = Agent("svc")
    with agent.tracer.start_as_current_span(
        "execute_tool web search", attributes={"gen_ai.operation.name": "execute_tool"}
    ):
        pass
    assert [r.tool for r in convert_request(agent.request(), POLICY).records] == ["web_search"]


def test_too_many_spans_refuses_the_whole_request(ci_run):
    agent, _ = ci_run
    with pytest.raises(IngestError, match="8 spans exceed the limit of 7"):
        convert_request(agent.request(), POLICY, max_spans=7)


def _deep_json(depth: int) -> bytes:
    value = '{"stringValue":"x"}'
    for _ in range(depth):
        value = '{"kvlistValue":{"values":[{"key":"k","value":' + value + "}]}}"
    span = (
        '{"traceId":"' + "ab" * 16 + '","spanId":"' + "cd" * 8 + '","name":"s",'
        '"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{"key":"a","value":'
        + value
        + "}]}"
    )
    return ('{"resourceSpans":[{"scopeSpans":[{"spans":[' + span + "]}]}]}").encode()


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"\x0a\xff\xff\xff\x0f", PROTOBUF, "malformed OTLP protobuf"),
        (b"\xff" * 64, PROTOBUF, "malformed OTLP protobuf"),
        (b"not json", JSON, "malformed JSON"),
        (b'{"resourceSpans": [', JSON, "malformed JSON"),
        (b"[1, 2]", JSON, "must be an object"),
        (b'{"resourceMetrics": []}', JSON, "no resourceSpans"),
        (b'{"resourceSpans": {"a": 1}}', JSON, "wrong OTLP/JSON shape"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', JSON, "shape"),
        (b'{"resourceSpans": [], "x": NaN}', JSON, "NaN is not valid JSON"),
        (b'{"resourceSpans": [], "x": 1e999}', JSON, "out of range"),
        (b'{"resourceSpans": [], "x": ' + b"9" * 5000 + b"}", JSON, "malformed JSON"),
        (b'{"resourceSpans": "\xff"}', JSON, "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, "nested too deeply"),
        (_deep_json(150), JSON, "nested too deeply"),
        (b"{}", "text/plain", "unsupported content type"),
    ],
)
def test_malformed_requests_are_refused_whole(data, content_type, message):
    with pytest.raises(IngestError, match=message):
        parse_request(data, content_type)


def test_protobuf_limits(ci_run):
    agent, _ = ci_run
    data = agent.request().SerializeToString()
    for cut in (1, 7, len(data) // 2):
        with pytest.raises(IngestError, match="malformed OTLP protobuf"):
            parse_request(data[:-cut], PROTOBUF)
    with pytest.raises(IngestError, match="exceeds 100 bytes"):
        parse_request(data, PROTOBUF, max_bytes=100)
    deep = _mutated(agent.request(), 0, lambda s, _: None)
    value = deep.resource_spans[0].scope_spans[0].spans[0].attributes.add().value
    for _ in range(150):
        value = value.kvlist_value.values.add().value
    with pytest.raises(IngestError, match="malformed OTLP protobuf"):
        parse_request(deep.SerializeToString(), PROTOBUF)
    assert count_all(parse_request(b"", PROTOBUF)) == 0  # an empty request is valid OTLP


def count_all(request):
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def test_response_bytes_round_trip():
    proto = ExportTraceServiceResponse.FromString(response_bytes(3, "bad span id", PROTOBUF))
    assert (proto.partial_success.rejected_spans, proto.partial_success.error_message) == (
        3,
        "bad span id",
    )
    as_json = json.loads(response_bytes(3, "bad span id", JSON))
    assert as_json == {"partialSuccess": {"rejectedSpans": "3", "errorMessage": "bad span id"}}
    assert response_bytes(0, "", PROTOBUF) == b""
    assert json.loads(response_bytes(0, "", JSON)) == {}


# ------------------------------------------------------------------------------ files


def _two_runs():
    agent = Agent("ci-bot")
    first = agent.run([("bash", {"process.exit.code": 1}, True)], status=StatusCode.ERROR)
    spans = list(agent.spans())
    second = agent.run([("make", {}, False)])
    return agent, first, second, encode_spans(spans), encode_spans(agent.spans()[len(spans) :])


def test_file_layouts_all_give_the_same_import(tmp_path):
    agent, first, second, part1, part2 = _two_runs()
    expected_ends = [SessionEnd(first, first, failed=True), SessionEnd(second, second)]
    proto1, proto2 = part1.SerializeToString(), part2.SerializeToString()
    whole = encode_spans(agent.spans())
    layouts = {
        "jsonl": collector_json(part1) + b"\n" + collector_json(part2) + b"\n",
        "pretty": json_format.MessageToJson(whole, indent=2).encode(),
        "binary": whole.SerializeToString(),
        "framed": b"".join(len(p).to_bytes(4, "big") + p for p in (proto1, proto2)),
        "framed-json": b"".join(
            len(p).to_bytes(4, "big") + p for p in (collector_json(part1), collector_json(part2))
        ),
    }
    layouts["gzip"] = gzip.compress(layouts["jsonl"])
    for name, data in layouts.items():
        path = tmp_path / f"traces.{name}"
        path.write_bytes(data)
        out = read_otlp_file(path, POLICY)
        assert [r.tool for r in out.records] == ["bash", "make"], name
        assert out.ends == expected_ends, name  # the second run had no status: failed=None
        assert out.problems == [], name


def test_file_problems_carry_line_numbers():
    _, _, _, part1, part2 = _two_runs()
    data = collector_json(part1) + b"\n{not json\n\n" + b'{"resourceMetrics": []}\n'
    out = read_otlp_file(data + collector_json(part2), POLICY)
    assert [str(p) for p in out.problems] == [
        "line 2: malformed JSON: Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1)",
        "line 4: not an OTLP trace request: no resourceSpans",
    ]
    assert [r.tool for r in out.records] == ["bash", "make"]

    bad_tool = _mutated(part1, 1, lambda s, _: setattr(s, "span_id", b"\x01"))
    out = read_otlp_file(collector_json(part2) + b"\n" + collector_json(bad_tool), POLICY)
    assert [p.where for p in out.problems] == ["line 2: span 5 (execute_tool bash)"]


def test_json_file_layout_is_told_apart_robustly():
    _, _, _, part1, part2 = _two_runs()
    cut_first = collector_json(part1)[:-10] + b"\n" + collector_json(part2) + b"\n"
    out = read_otlp_file(cut_first, POLICY)
    assert [p.where for p in out.problems] == ["line 1"]
    assert [r.tool for r in out.records] == ["make"]
    metrics = json.dumps({"resourceMetrics": [{"scopeMetrics": []}]}, indent=2).encode()
    with pytest.raises(IngestError, match=r"^not an OTLP trace request: no resourceSpans$"):
        read_otlp_file(metrics, POLICY)


def test_framed_file_with_truncated_tail():
    _, _, _, part1, part2 = _two_runs()
    proto1, proto2 = part1.SerializeToString(), part2.SerializeToString()
    data = len(proto1).to_bytes(4, "big") + proto1 + len(proto2).to_bytes(4, "big") + proto2[:5]
    out = read_otlp_file(data, POLICY)
    assert [str(p) for p in out.problems] == ["message 2: truncated message"]
    assert [r.tool for r in out.records] == ["bash"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"\n \n", "empty file"),
        (b"{not json\n{nor this\n", "malformed JSON"),
        (b'{"resourceSpans": []}\n', "no spans in file"),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "zstd"),
        (b"\x00\x00\x00\x05\x28\xb5\x2f\xfd\x00", "zstd"),
        (b"\x00\x00\xff\xff" + b"\x0a" * 10, "truncated message"),
        (b"\x0a\x05\x0a\x03\x0a\x01", "malformed OTLP protobuf"),
        (gzip.compress(b"x" * 100)[:-6], "truncated gzip"),
        (b"\x1f\x8b" + b"\0" * 30, "malformed gzip"),
    ],
)
def test_unreadable_files_are_refused(data, message):
    with pytest.raises(IngestError, match=message):
        read_otlp_file(data, POLICY)


def test_file_size_limits(tmp_path):
    _, _, _, part1, _ = _two_runs()
    data = collector_json(part1)
    with pytest.raises(IngestError, match="exceeds 100 bytes"):
        read_otlp_file(data, POLICY, max_bytes=100)
    bomb = gzip.compress(b" " * 10_000)
    with pytest.raises(IngestError, match="decompressed file exceeds 1000 bytes"):
        read_otlp_file(bomb, POLICY, max_bytes=1000)
    with pytest.raises(IngestError, match="cannot read"):
        read_otlp_file(tmp_path / "missing.jsonl", POLICY)


def test_looks_like_otlp():
    _, _, _, part1, _ = _two_runs()
    proto = part1.SerializeToString()
    framed = len(proto).to_bytes(4, "big") + proto
    pretty = json_format.MessageToJson(part1, indent=2).encode()
    heads = (collector_json(part1)[:64], pretty[:64], proto, proto[:300], framed, framed[:300])
    for head in heads:
        assert looks_like_otlp(head), head[:20]
    fai = b'{"task_id": "t", "tool": "bash", "input": null, "output": 0, "reward": 0, "time": 1}'
    hooks = b'{"session_id": "abc", "hook_event_name": "PostToolUse"}'
    others = (fai, hooks, b"\nplain text\n", b"\n\n" + b"a" * 40, b"", gzip.compress(proto))
    for head in (*others, proto[:12], framed[:16]):  # a cut inside the Resource: unknown
        assert not looks_like_otlp(head), head[:20]
