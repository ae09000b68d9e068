"""The OTLP/HTTP receiver, driven by the real OpenTelemetry SDK and its OTLP/HTTP exporter.

Every server here binds 127.0.0.1 on an ephemeral port. Hand-written HTTP (http.client,
raw sockets) is used only for what no well-behaved exporter sends: wrong paths, methods,
types, oversized or slow bodies.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import threading
import time

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from fai_core.ingest.common import DomainPolicy, DomainRule, SessionEnd
from fai_core.introspection import Outcome, classify_output
from fai_net.telemetry.otlp_receiver import Backpressure, OtlpLimits, TokenBucket, serve_otlp

POLICY = DomainPolicy(rules=(DomainRule.parse("service.name=ci-bot:devops"),))
PROTO = "application/x-protobuf"


class Sink:
    """Collects what the receiver delivers; optionally fails the first `fail` calls."""

    def __init__(self, fail: int = 0, error: Exception | None = None) -> None:
        self.calls = []
        self.fail = fail
        self.error = error
        self.lock = threading.Lock()

    def __call__(self, converted) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise self.error or Backpressure(retry_after=1)
            self.calls.append(converted)

    @property
    def records(self):
        return [r for c in self.calls for r in c.records]

    @property
    def ends(self):
        return [e for c in self.calls for e in c.ends]


@pytest.fixture
def receiver_factory():
    started = []

    def start(sink=None, limits=None, **kwargs):
        sink = sink if sink is not None else Sink()
        receiver = serve_otlp(0, sink, POLICY, limits or OtlpLimits(), **kwargs)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def run_agent(tracer, tools=(("bash", 0), ("pytest", 1))) -> str:
    """One agent run: invoke_agent root, a chat span, execute_tool spans with exit codes."""
    root_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "coder"}
    with tracer.start_as_current_span("invoke_agent coder", attributes=root_attrs) as root:
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
            pass
        for name, code in tools:
            attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "process.exit.code": code,
            }
            with tracer.start_as_current_span(f"execute_tool {name}", attributes=attrs) as span:
                if code:
                    span.set_status(Status(StatusCode.ERROR))
        root.set_status(Status(StatusCode.OK))
        return format(root.get_span_context().trace_id, "032x")


def provider_for(processor) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "ci-bot"}))
    provider.add_span_processor(processor)
    return provider


def request_bytes(tools=(("bash", 0),)) -> bytes:
    memory = InMemorySpanExporter()
    run_agent(provider_for(SimpleSpanProcessor(memory)).get_tracer("t"), tools)
    return encode_spans(memory.get_finished_spans()).SerializeToString()


def post(receiver, body: bytes, headers=None, path="/v1/traces", method="POST"):
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        all_headers = {"Content-Type": PROTO, **(headers or {})}
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_real_exporter_delivers_records_and_session_end(receiver_factory):
    sink = Sink()
    receiver = receiver_factory(sink)
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=5)
    provider = provider_for(SimpleSpanProcessor(exporter))  # one request per span
    trace = run_agent(provider.get_tracer("agent"))
    provider.shutdown()
    assert [(r.tool, classify_output(r.output)) for r in sink.records] == [
        ("bash", Outcome(exit_code=0)),
        ("pytest", Outcome(exit_code=1)),
    ]
    assert {(r.task_id, r.attempt, r.domain) for r in sink.records} == {(trace, trace, "devops")}
    assert sink.ends == [SessionEnd(trace, trace, failed=False)]
    stats = receiver.stats
    assert (stats["requests"], stats["accepted"], stats["spans"]) == (4, 4, 4)
    assert (stats["records"], stats["ends"], stats["rejected"]) == (2, 1, {})
    assert len(sink.calls) == 3  # the chat span's request held nothing to deliver


@pytest.mark.parametrize("compression", [Compression.Gzip, Compression.Deflate])
def test_compressed_batches(receiver_factory, compression):
    sink = Sink()
    receiver = receiver_factory(sink)
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=5, compression=compression)
    provider = provider_for(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("agent")
    traces = [run_agent(tracer) for _ in range(3)]
    assert provider.force_flush(5_000)
    provider.shutdown()
    assert len(sink.records) == 6
    assert sorted(e.attempt for e in sink.ends) == sorted(traces)
    assert receiver.stats["spans"] == 12


def test_json_requests_get_json_answers(receiver_factory):
    sink = Sink()
    receiver = receiver_factory(sink)
    memory = InMemorySpanExporter()
    run_agent(provider_for(SimpleSpanProcessor(memory)).get_tracer("t"))
    request = encode_spans(memory.get_finished_spans())
    request.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x01"  # bash: refused
    body = json_format.MessageToJson(request).encode()
    status, headers, answer = post(receiver, body, {"Content-Type": "application/json"})
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(answer) == {
        "partialSuccess": {
            "rejectedSpans": "1",
            "errorMessage": "1 span(s) refused: bad span id (1)",
        }
    }
    assert [r.tool for r in sink.records] == ["pytest"]
    assert receiver.stats["problems"] == 1


def test_protobuf_partial_success(receiver_factory):
    receiver = receiver_factory()
    body = request_bytes((("!!!", 0),))
    status, _, answer = post(receiver, body)
    response = ExportTraceServiceResponse.FromString(answer)
    assert status == 200
    assert response.partial_success.rejected_spans == 1
    assert "tool name unusable" in response.partial_success.error_message


@pytest.mark.parametrize(
    ("kwargs", "code", "reason"),
    [
        ({"path": "/v1/metrics"}, 404, "not_found"),
        ({"method": "GET"}, 405, "method"),
        ({"method": "PUT"}, 405, "method"),
        ({"headers": {"Content-Type": "text/plain"}}, 415, "content_type"),
        ({"headers": {"Content-Encoding": "br"}}, 415, "encoding"),
        ({"body": b"\x0a\xff\xff\x01"}, 400, "malformed"),
        ({"body": b"{}", "headers": {"Content-Type": "application/json"}}, 200, None),
        ({"body": b"[]", "headers": {"Content-Type": "application/json"}}, 400, "malformed"),
        ({"body": b"junk", "headers": {"Content-Encoding": "gzip"}}, 400, "malformed"),
    ],
)
def test_refusals(receiver_factory, kwargs, code, reason):
    receiver = receiver_factory()
    body = kwargs.pop("body", request_bytes())
    status, headers, _ = post(receiver, body, **kwargs)
    assert status == code
    assert receiver.stats["rejected"] == ({reason: 1} if reason else {})
    assert headers["Connection"] == "close"
    if code == 405:
        assert headers["Allow"] == "POST"
    if code == 400:  # a google.rpc.Status in the request's encoding
        assert headers["Content-Type"] == kwargs.get("headers", {}).get("Content-Type", PROTO)


def test_status_body_is_a_google_rpc_status(receiver_factory):
    receiver = receiver_factory()
    status, _, answer = post(receiver, b"[]", {"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(answer) == {"code": 3, "message": "OTLP/JSON must be an object"}


def test_content_length_is_required(receiver_factory):
    receiver = receiver_factory()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: " + PROTO.encode()
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # fmt: skip
        assert sock.recv(4096).startswith(b"HTTP/1.1 411 ")
    assert receiver.stats["rejected"] == {"length_required": 1}


def test_size_limits(receiver_factory):
    limits = OtlpLimits(max_body_bytes=2_000, max_decompressed_bytes=5_000, max_spans=3)
    receiver = receiver_factory(limits=limits)
    assert post(receiver, b"\x00" * 2_001)[0] == 413
    bomb = gzip.compress(b"\x00" * 100_000)
    assert len(bomb) < 2_000
    assert post(receiver, bomb, {"Content-Encoding": "gzip"})[0] == 413
    four_spans = request_bytes((("a", 0), ("b", 0)))
    status, _, answer = post(receiver, four_spans)
    assert (status, answer) == (413, request_status(413, "4 spans exceed 3"))
    assert receiver.stats["rejected"] == {"too_large": 3}
    assert post(receiver, request_bytes((("a", 0),)))[0] == 200  # three spans pass


def request_status(code, message):
    from fai_net.telemetry.otlp_receiver import status_body

    return status_body(code, message, PROTO)[0]


def test_oversized_body_from_the_real_exporter_gets_413_not_a_reset(receiver_factory, caplog):
    receiver = receiver_factory(limits=OtlpLimits(max_body_bytes=500))
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=5)
    memory = InMemorySpanExporter()
    run_agent(provider_for(SimpleSpanProcessor(memory)).get_tracer("t"))
    with caplog.at_level(logging.ERROR):
        assert exporter.export(memory.get_finished_spans()) == SpanExportResult.FAILURE
    assert "code: 413" in caplog.text  # answered, read, and not retried
    assert receiver.stats["rejected"] == {"too_large": 1}


def test_request_rate_limit_answers_429_with_retry_after(receiver_factory):
    receiver = receiver_factory(limits=OtlpLimits(requests_per_s=0.5, request_burst=2))
    body = request_bytes()
    assert [post(receiver, body)[0] for _ in range(2)] == [200, 200]
    status, headers, _ = post(receiver, body)
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert receiver.stats["rejected"] == {"rate_limited": 1}


def test_span_rate_limit(receiver_factory):
    receiver = receiver_factory(limits=OtlpLimits(spans_per_s=1, span_burst=3))
    body = request_bytes((("a", 0), ("b", 0), ("c", 0), ("d", 0)))  # six spans
    assert post(receiver, body)[0] == 200  # a full bucket lets a big batch through...
    status, headers, _ = post(receiver, body)
    assert status == 429  # ...and the debt makes the next one wait
    assert int(headers["Retry-After"]) >= 5


def test_token_bucket_refills_with_time():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.take(2) == 0.0
    assert bucket.take(10) == pytest.approx(2.0)  # 4 tokens needed (the burst) from 0


def test_backpressure_is_503_and_the_real_exporter_retries(receiver_factory):
    class SpoolFull(Exception):
        retry_after = 7.2

    receiver = receiver_factory(Sink(fail=1, error=SpoolFull()))
    status, headers, _ = post(receiver, request_bytes())
    assert (status, headers["Retry-After"]) == (503, "8")
    for odd, expected in ((float("nan"), "1"), (-3, "1"), (1e12, "300")):
        receiver = receiver_factory(Sink(fail=1, error=Backpressure(retry_after=odd)))
        assert post(receiver, request_bytes())[1]["Retry-After"] == expected

    sink = Sink(fail=1)  # Backpressure(retry_after=1) once, then accepts
    receiver = receiver_factory(sink)
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=10)
    memory = InMemorySpanExporter()
    run_agent(provider_for(SimpleSpanProcessor(memory)).get_tracer("t"))
    started = time.monotonic()
    assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
    assert time.monotonic() - started >= 0.9  # it honoured Retry-After: 1
    assert [r.tool for r in sink.records] == ["bash", "pytest"]
    assert receiver.stats["rejected"] == {"backpressure": 1}


def test_sink_errors_are_500_and_logged_at_a_bounded_rate(receiver_factory, caplog):
    receiver = receiver_factory(Sink(fail=3, error=RuntimeError("disk on fire")))
    body = request_bytes()
    with caplog.at_level(logging.INFO, logger="fai_net.telemetry.otlp_receiver"):
        codes = [post(receiver, body)[0] for _ in range(3)]
    assert codes == [500, 500, 500]
    assert caplog.text.count("disk on fire") == 1
    assert receiver.stats["rejected"] == {"sink_error": 3}


def _slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\n")
    sock.sendall(b"Content-Length: 100\r\n")  # ...and the rest never comes
    return sock


def _wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_slow_client_does_not_block_others_and_is_cut(receiver_factory):
    limits = OtlpLimits(socket_timeout_s=5, request_timeout_s=0.5)
    sink = Sink()
    receiver = receiver_factory(sink, limits=limits)
    started = time.monotonic()
    slow = _slow_client(receiver.port)
    _wait_for(lambda: receiver.active_connections == 1)
    assert post(receiver, request_bytes())[0] == 200
    assert len(sink.records) == 1
    assert "timeout" not in receiver.stats["rejected"]  # served while the slow one still hung
    slow.settimeout(4)
    assert slow.recv(100) == b""  # cut by the request deadline...
    assert time.monotonic() - started < 4  # ...well before the 5 s socket timeout
    slow.close()
    _wait_for(lambda: receiver.stats["rejected"].get("timeout") == 1)


def test_connection_limit_turns_away_with_503(receiver_factory):
    receiver = receiver_factory(limits=OtlpLimits(max_connections=1))
    slow = _slow_client(receiver.port)
    _wait_for(lambda: receiver.active_connections == 1)
    status, headers, _ = post(receiver, request_bytes())
    assert (status, headers["Retry-After"]) == (503, "1")
    slow.close()
    _wait_for(lambda: receiver.active_connections == 0)
    assert post(receiver, request_bytes())[0] == 200
    assert receiver.stats["rejected"] == {"busy": 1, "incomplete": 1}  # the slow one gave up


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_refuses_non_loopback_hosts(host):
    with pytest.raises(ValueError, match=r"loopback|IP address"):
        serve_otlp(0, Sink(), POLICY, host=host)


def test_localhost_binds_loopback_and_stop_is_idempotent(receiver_factory):
    receiver = receiver_factory(host="localhost")
    assert receiver.url == f"http://127.0.0.1:{receiver.port}/v1/traces"
    receiver.stop()
    receiver.stop()
    with pytest.raises(ConnectionRefusedError, match=r"Connection refused"):
        socket.create_connection(("127.0.0.1", receiver.port), timeout=1).close()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_connections"):
        OtlpLimits(max_connections=0)
    with pytest.raises(ValueError, match="spans_per_s"):
        OtlpLimits(spans_per_s=float("inf"))


def test_ipv6_loopback(receiver_factory):
    try:
        receiver = receiver_factory(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert receiver.url == f"http://[::1]:{receiver.port}/v1/traces"
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=5)
    memory = InMemorySpanExporter()
    run_agent(provider_for(SimpleSpanProcessor(memory)).get_tracer("t"))
    assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
    assert receiver.stats["records"] == 2


def test_parse_cost_is_charged_before_parsing_a_compressed_json_bomb(receiver_factory):
    """A few KiB of gzip can inflate to MiBs of JSON that cost seconds to parse; the
    parse budget is charged on the inflated size (JSON x8) before any parsing."""
    import gzip

    limits = OtlpLimits(parse_bytes_per_s=1_000, parse_burst=1 << 20)
    receiver = receiver_factory(limits=limits)
    padding = '{"key": "p", "value": {"stringValue": "' + "x" * (300 << 10) + '"}}'
    bomb = ('{"resourceSpans": [{"resource": {"attributes": [' + padding + "]}}]}").encode()
    body = gzip.compress(bomb)
    assert len(body) < 4 << 10
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert post(receiver, body, headers)[0] == 200  # a full bucket takes one
    status, response_headers, _ = post(receiver, body, headers)
    assert status == 429 and int(response_headers["Retry-After"]) >= 60
    assert receiver.stats["rejected"] == {"rate_limited": 1}
