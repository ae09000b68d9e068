"""A live OTLP/HTTP trace receiver: agents export spans to the node as to any collector.

Point an agent's OpenTelemetry exporter at `http://127.0.0.1:PORT/v1/traces` (protobuf or
JSON, optionally gzip) and each accepted request is converted by `fai_core.ingest.otlp`
and handed, synchronously, to a sink (the node's telemetry spool). The node runs on trio;
this server is deliberately a plain thread-per-connection stdlib server, independent of
the node's event loop, so a misbehaving exporter can at worst fill this server's bounded
set of connections, never stall the node.

Every answer is one an OTLP exporter understands (OTLP/HTTP spec, "Failures"): 200 with
`partial_success` for refused spans (not retried), 400/404/405/411/413/415 for requests
that would fail again (not retried), and 429/503 with Retry-After when the receiver or the
sink is busy (retried, after the delay). Limits are in `OtlpLimits`; each refusal is
counted per reason in `OtlpReceiver.stats` and logged at a bounded rate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import queue
import socket
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from fai_core.ingest.common import Converted, DomainPolicy, IngestError, Problem
from fai_core.ingest.otlp import (
    JSON,
    MAX_REMEMBERED_TRACES,
    MAX_SPANS,
    TraceSessions,
    convert_request,
    count_spans,
    media_type,
    parse_request,
    response_bytes,
)
from fai_net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

PATH = "/v1/traces"
#: A refused request's body is read and dropped up to this size before the answer, so
#: that the client, still sending, reads the answer instead of a connection reset.
DRAIN_LIMIT = 64 << 20
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)
#: Longest Retry-After the receiver asks for, in seconds.
MAX_RETRY_AFTER = 300
#: How much a turned-away connection may send before it is closed anyway.
_BUSY_DRAIN = 1 << 20
#: google.rpc.Code of each refusal, for the Status body OTLP asks for.
_GRPC_CODES = {400: 3, 404: 5, 405: 12, 411: 3, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


class Backpressure(Exception):
    """What a sink raises when it cannot take records now (its spool is full, say).

    The client is answered 503 with Retry-After and retries the same spans later. Any
    exception with a numeric `retry_after` attribute is treated alike, so a sink need not
    import this module.
    """

    def __init__(self, retry_after: float = 1.0, message: str = "sink is full") -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class OtlpLimits:
    """Bounds on what one client, or all of them together, can make the receiver do."""

    #: request body as sent (compressed or not); beyond -> 413
    max_body_bytes: int = 4 << 20
    #: body after gzip/deflate; beyond -> 413 (a zip bomb costs at most this)
    max_decompressed_bytes: int = 16 << 20
    #: spans in one request; beyond -> 413
    max_spans: int = MAX_SPANS
    #: token buckets over all clients; empty -> 429 with Retry-After
    requests_per_s: float = 50.0
    request_burst: int = 100
    #: the ingestion target (bench/ingest.py: one core converts ~13k spans/s): an agent
    #: fleet sending more is told to back off before the node's other work starves
    spans_per_s: float = 10_000.0
    span_burst: int = 50_000
    #: parse cost, charged on the decompressed body before it is parsed: protobuf bytes
    #: count once, JSON bytes JSON_COST times (json_format parses ~2 MiB/s of JSON on one
    #: core: a 39 KiB gzip of 13 MiB of JSON holding one span cost 6 s before this bucket)
    parse_bytes_per_s: float = 4 << 20
    parse_burst: int = 128 << 20
    #: connections handled at once; beyond -> 503 at once, without reading the request
    max_connections: int = 16
    #: longest wait for any one read or write on a connection
    socket_timeout_s: float = 10.0
    #: longest time from accepting a connection to having its whole body (slow clients)
    request_timeout_s: float = 30.0
    #: traces whose session is remembered across requests (see `TraceSessions`)
    remembered_traces: int = MAX_REMEMBERED_TRACES

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"OtlpLimits.{spec.name} must be a positive number")
            if not math.isfinite(value):
                raise ValueError(f"OtlpLimits.{spec.name} must be finite")


#: How many protobuf bytes one byte of OTLP/JSON costs to parse (measured ~8x).
JSON_COST = 8


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; thread-safe.

    A take larger than the burst is allowed from a full bucket and leaves it in debt, so
    one big request is never refused for ever, only followed by a longer pause.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, count: float = 1.0) -> float:
        """0.0 if `count` tokens were taken, else the seconds until they would be."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            need = min(count, self.burst)
            if self._tokens >= need:
                self._tokens -= count
                return 0.0
            return (need - self._tokens) / self.rate


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def add(self, **counts: int) -> None:
        with self._lock:
            self._counts.update(counts)

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                name: self._counts[name]
                for name in ("requests", "accepted", "spans", "records", "ends", "problems")
            }
            out["rejected"] = dict(self._rejected)
            return out


def _status_class() -> Any:
    """google.rpc.Status, built in a private pool: the error body OTLP/HTTP specifies,
    without depending on googleapis-common-protos (nor clashing with it if loaded)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="fai/otlp_receiver_status.proto", package="google.rpc", syntax="proto3"
    )
    message = proto.message_type.add(name="Status")
    message.field.add(name="code", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    message.field.add(
        name="message", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_Status = _status_class()


def status_body(http_code: int, message: str, media: str | None) -> tuple[bytes, str]:
    """(body, content type) of a refusal: a Status in the request's encoding, or text."""
    if media is None:
        return message.encode("utf-8"), "text/plain; charset=utf-8"
    status = _Status(code=_GRPC_CODES.get(http_code, 2), message=message)
    if media == JSON:
        return json_format.MessageToJson(status, indent=None).encode("utf-8"), JSON
    return status.SerializeToString(), media


def _summary(problems: list[Problem]) -> str:
    """The partial-success message: how many spans were refused and why (reasons only)."""
    if not problems:
        return ""
    counts = Counter(problem.reason for problem in problems)
    reasons = ", ".join(f"{reason} ({n})" for reason, n in counts.most_common(5))
    return f"{len(problems)} span(s) refused: {reasons}"[:500]


def _retry_seconds(delay: float) -> int:
    """Retry-After in whole seconds (RFC 9110), within [1, MAX_RETRY_AFTER]: a sink's odd
    value (NaN, negative, huge) cannot make clients hammer us or give up for a day."""
    if not math.isfinite(delay):
        return MAX_RETRY_AFTER if delay > 0 else 1
    return min(MAX_RETRY_AFTER, max(1, math.ceil(delay)))


class _BodyTooLarge(Exception):
    pass


def _inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """gzip (concatenated members too) or zlib-wrapped deflate, never beyond `limit`."""
    wbits = 31 if encoding == "gzip" else 15
    out = bytearray()
    while data:
        engine = zlib.decompressobj(wbits=wbits)
        out += engine.decompress(data, limit + 1 - len(out))
        if len(out) > limit or engine.unconsumed_tail:
            raise _BodyTooLarge
        if not engine.eof:
            raise zlib.error("truncated compressed body")
        data = engine.unused_data
    return bytes(out)


class _Reject(Exception):
    """Answer the request with `code` (counted under `reason`) and stop handling it."""

    def __init__(self, code: int, reason: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # for Expect: 100-continue; every answer still closes
    server_version = "fai-otlp"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.limits.socket_timeout_s
        super().setup()
        self._media: str | None = None
        self._length: int | None = None
        self._body_read = False

    def log_message(self, format: str, *args: Any) -> None:
        self.server.ratelog("http", logging.DEBUG, "OTLP receiver: " + format, *args)

    def do_POST(self) -> None:
        self._handle(post=True)

    def do_GET(self) -> None:
        self._handle(post=False)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _handle(self, post: bool) -> None:
        stats = self.server.stats
        stats.add(requests=1)
        text = self.headers.get("Content-Length", "").strip()
        self._length = int(text) if text.isdigit() and len(text) <= 12 else None
        with contextlib.suppress(IngestError):
            self._media = media_type(self.headers.get("Content-Type", ""))
        try:
            if urlsplit(self.path).path != PATH:
                raise _Reject(404, "not_found", f"unknown path; traces go to {PATH}")
            if not post:
                raise _Reject(405, "method", "only POST is supported")
            wait = self.server.request_bucket.take(1)
            if wait:
                raise _Reject(429, "rate_limited", "too many requests", retry_after=wait)
            self._accept(self._request())
        except _Reject as refusal:
            stats.reject(refusal.reason)
            self._refuse(refusal)

    def _request(self) -> Any:
        """The decoded request, or _Reject: headers first, so refusals cost no parsing."""
        limits = self.server.limits
        length = self._content_length()
        if self._media is None:
            ctype = self.headers.get("Content-Type", "")
            raise _Reject(415, "content_type", f"unsupported content type {ctype[:64]!r}")
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise _Reject(415, "encoding", "Content-Encoding must be gzip, deflate or none")
        if length > limits.max_body_bytes:
            raise _Reject(413, "too_large", f"body exceeds {limits.max_body_bytes} bytes")
        body = self._read(length)
        try:
            if encoding != "identity":
                body = _inflate(body, encoding, limits.max_decompressed_bytes)
            cost = len(body) * (JSON_COST if self._media == JSON else 1)
            wait = self.server.parse_bucket.take(cost)
            if wait:
                raise _Reject(429, "rate_limited", "too many bytes to parse", retry_after=wait)
            return parse_request(body, self._media, max_bytes=limits.max_decompressed_bytes)
        except _BodyTooLarge:
            raise _Reject(413, "too_large", "decompressed body too large") from None
        except zlib.error as exc:
            raise _Reject(400, "malformed", f"bad {encoding} body: {exc}") from None
        except IngestError as exc:
            raise _Reject(400, "malformed", exc.reason) from None

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Reject(411, "length_required", "chunked bodies are not accepted")
        text = self.headers.get("Content-Length")
        if text is None:
            raise _Reject(411, "length_required", "Content-Length is required")
        if self._length is None:
            raise _Reject(400, "malformed", "bad Content-Length")
        return self._length

    def _read(self, length: int) -> bytes:
        """The whole body, or a silent close when the client stops sending."""
        chunks, missing = [], length
        while missing:
            try:
                chunk = self.rfile.read(min(missing, 1 << 16))
            except OSError:
                chunk = b""
            if not chunk:
                self.server.stats.reject("incomplete")
                self.close_connection = True
                raise ConnectionAbortedError("client sent less than Content-Length")
            chunks.append(chunk)
            missing -= len(chunk)
        self._body_read = True
        self.server.body_read(self.connection)
        return b"".join(chunks)

    def _accept(self, request: Any) -> None:
        server, limits = self.server, self.server.limits
        spans = count_spans(request)
        if spans > limits.max_spans:
            raise _Reject(413, "too_large", f"{spans} spans exceed {limits.max_spans}")
        wait = server.span_bucket.take(spans)
        if wait:
            raise _Reject(429, "rate_limited", "too many spans", retry_after=wait)
        with server.deliver_lock:
            try:
                converted = convert_request(
                    request, server.policy, sessions=server.sessions, max_spans=limits.max_spans
                )
            except IngestError as exc:
                raise _Reject(400, "malformed", exc.reason) from None
            if converted.records or converted.ends:
                self._deliver(converted)
        server.stats.add(
            accepted=1,
            spans=spans,
            records=len(converted.records),
            ends=len(converted.ends),
            problems=len(converted.problems),
        )
        body = response_bytes(len(converted.problems), _summary(converted.problems), self._media)
        self._reply(200, body, self._media or JSON)

    def _deliver(self, converted: Converted) -> None:
        try:
            self.server.sink(converted)
        except Exception as exc:
            retry_after = getattr(exc, "retry_after", None)
            if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
                raise _Reject(503, "backpressure", "receiver busy", retry_after) from None
            self.server.ratelog("sink", logging.ERROR, "OTLP receiver: sink failed: %r", exc)
            raise _Reject(500, "sink_error", "internal error") from None

    def _refuse(self, refusal: _Reject) -> None:
        if refusal.code >= 500 or refusal.code == 429:
            self.server.ratelog(refusal.reason, logging.INFO, "OTLP receiver: %s", refusal.message)
        self._drain()
        body, content_type = status_body(refusal.code, refusal.message, self._media)
        headers = {}
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(_retry_seconds(refusal.retry_after))
        if refusal.code == 405:
            headers["Allow"] = "POST"
        self._reply(refusal.code, body, content_type, headers)

    def _drain(self) -> None:
        """Read and drop an unread body, so the client sees our answer, not a reset."""
        if self._body_read or self._length is None or self._length > DRAIN_LIMIT:
            return
        missing = self._length
        try:
            while missing and (chunk := self.rfile.read(min(missing, 1 << 16))):
                missing -= len(chunk)
        except OSError:
            pass
        self._body_read = True

    def _reply(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):  # the client went away or stalled
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    """Thread per connection, at most `max_connections` at once, each with a deadline."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for a slow client's thread
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        limits: OtlpLimits,
        sink: Callable[[Converted], None],
        policy: DomainPolicy,
    ) -> None:
        self.limits = limits
        self.sink = sink
        self.policy = policy
        self.stats = _Stats()
        self.sessions = TraceSessions(limits.remembered_traces)
        #: conversion and delivery, one request at a time: the sink need not be
        #: thread-safe, and sees requests in the order their traces were keyed
        self.deliver_lock = threading.Lock()
        self.request_bucket = TokenBucket(limits.requests_per_s, limits.request_burst)
        self.span_bucket = TokenBucket(limits.spans_per_s, limits.span_burst)
        self.parse_bucket = TokenBucket(limits.parse_bytes_per_s, limits.parse_burst)
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log)
        self._active = 0
        self._deadlines: dict[socket.socket, float] = {}
        self._turned_away: queue.Queue[socket.socket | None] = queue.Queue(maxsize=64)
        self.closing = threading.Event()
        super().__init__(address, _Handler)

    def ratelog(self, key: str, level: int, msg: str, *args: Any) -> None:
        with self._lock:  # RateLimitedLog keeps plain dicts: one thread at a time
            self._log.log(level, key, msg, *args)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An unexpected error in a handler: logged at a bounded rate, not to stderr."""
        error = sys.exc_info()[1]
        self.ratelog("handler", logging.WARNING, "OTLP receiver: handler error: %r", error)

    @property
    def active(self) -> int:
        return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            busy = self._active >= self.limits.max_connections
            if not busy:
                self._active += 1
                self._deadlines[request] = time.monotonic() + self.limits.request_timeout_s
        if busy:
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._active -= 1
            self._deadlines.pop(request, None)

    def wake_turn_away(self) -> None:
        self.closing.set()
        with contextlib.suppress(queue.Full):
            self._turned_away.put_nowait(None)

    def body_read(self, request: Any) -> None:
        """The request is in: its deadline no longer applies (the sink may take time)."""
        with self._lock:
            self._deadlines.pop(request, None)

    def _turn_away(self, request: socket.socket) -> None:
        """Hand a connection beyond the limit to the turn-away thread (the accepting thread
        must not block); if even its queue is full, just close it."""
        self.stats.reject("busy")
        try:
            self._turned_away.put_nowait(request)
        except queue.Full:
            self.shutdown_request(request)

    def turn_away_loop(self) -> None:
        """503 + Retry-After to each connection beyond the limit, then a short drain of
        what it sends, so that it reads the answer instead of a connection reset."""
        while not self.closing.is_set():
            conn = self._turned_away.get()
            if conn is None:  # stop() wakes the loop
                break
            try:
                conn.settimeout(0.2)
                conn.sendall(_BUSY_ANSWER)
                conn.shutdown(socket.SHUT_WR)
                deadline, drained = time.monotonic() + 0.5, 0
                while drained < _BUSY_DRAIN and time.monotonic() < deadline:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    drained += len(chunk)
            except OSError:
                pass
            finally:
                conn.close()

    def service_actions(self) -> None:
        """Between accepts: cut connections that have not delivered a request in time."""
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
            for conn in late:
                del self._deadlines[conn]
        for conn in late:
            self.stats.reject("timeout")
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Server6(_Server):
    address_family = socket.AF_INET6


class OtlpReceiver:
    """A running receiver. `port` is the bound port; `stop()` ends it (idempotent)."""

    def __init__(self, server: _Server, host: str) -> None:
        self._server = server
        self.host = host
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"otlp-receiver:{self.port}",
        )  # fmt: skip
        self._turn_away = threading.Thread(
            target=server.turn_away_loop, daemon=True, name=f"otlp-turn-away:{self.port}"
        )
        self._stopped = False
        self._thread.start()
        self._turn_away.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: requests, accepted, spans, records, ends, problems, rejected[reason]."""
        return self._server.stats.snapshot()

    @property
    def active_connections(self) -> int:
        return self._server.active

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.wake_turn_away()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._turn_away.join(timeout=1)

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_host(host: str, allow_remote: bool) -> str:
    """The address to bind; anything but loopback needs `allow_remote` (no auth here)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"OTLP receiver host {host!r} must be an IP address") from None
    if not address.is_loopback and not allow_remote:
        raise ValueError(
            f"OTLP receiver host {host!r} is not loopback: the receiver has no authentication;"
            " pass allow_remote=True to expose it anyway"
        )
    return host


def serve_otlp(
    port: int,
    sink: Callable[[Converted], None],
    policy: DomainPolicy,
    limits: OtlpLimits = OtlpLimits(),
    host: str = "127.0.0.1",
    *,
    allow_remote: bool = False,
) -> OtlpReceiver:
    """Start a receiver on `host:port` (port 0: any free port, see `.port`).

    `sink` gets the Converted (records and session ends) of each accepted request that
    holds any: in the handling thread, one call at a time, before the client is answered
    (so an exception reaches the client). It raises `Backpressure` (or anything with a
    numeric `retry_after`) to have the client retry later; any other exception is a 500
    (not retried by OTLP clients: those spans are lost) and is logged.
    """
    bind = _bind_host(host, allow_remote)
    server_class = _Server6 if ":" in bind else _Server
    server = server_class((bind, port), limits=limits, sink=sink, policy=policy)
    return OtlpReceiver(server, bind)
