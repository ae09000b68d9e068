"""OpenTelemetry traces (OTLP) to tool telemetry, following the GenAI semantic conventions.

Agents instrumented with OpenTelemetry describe each tool call as an `execute_tool` span
and each agent run as an `invoke_agent` span. This module reads such spans from an OTLP
export request (protobuf or JSON, as sent to `/v1/traces` or written by the collector's
file exporter) and turns them into `TelemetryRecord`s and `SessionEnd`s (see `common`).
Decoding is left to `opentelemetry-proto`/`google.protobuf`: a hand-written parser would
drift from the schema, and protobuf's own limits (nesting depth, UTF-8) come for free.

Mapping (docs/telemetry.md, "OpenTelemetry"):

* one tool call per span with `gen_ai.operation.name == "execute_tool"`: tool from
  `gen_ai.tool.name` (else the span name after "execute_tool "), time from the span's
  end. Its outcome class comes only from `error.type`, `process.exit.code`,
  `http.response.status_code`, the opt-in `gen_ai.tool.call.result` (classified, never
  kept) and, last, the span status. Arguments, results and status messages are not kept.
* the session (attempt) of a span is `gen_ai.conversation.id` (on the span, else on its
  trace's `invoke_agent` span), else the trace id; task_id is `fai.task.id`, else the
  session. A top-level `invoke_agent` span ends its trace's session (status ERROR or
  `error.type`: failed; OK: succeeded; UNSET: not said), with feedback from `fai.reward`
  or a `gen_ai.evaluation.result` event scored in [-1, 1]. A session keyed by conversation
  spans several traces, so one trace's root does not end it: it ends on the receiver's
  idle timeout, or at the end of a file import.
* domain and kind: `DomainPolicy.resolve` over the span's attributes, over its
  `invoke_agent` span's, over its resource's (so `service.name` can drive a rule).
* every other span (`chat`, `text_completion`, nested `invoke_agent`, HTTP...) is counted
  as ignored. A span with bad ids or times, an unusable tool name or an invalid
  `fai.domain` is a Problem; the rest of its request is still imported.

Spans of one trace may arrive in several requests (the SDK's batch processor exports a
tool span as soon as it ends, long before its agent span). `TraceSessions` remembers which
session each trace was filed under, so that a live receiver keeps one trace in one session.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import math
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from fai_core import jsonlimits
from fai_core.experience import CONTROL_RE
from fai_core.ingest.common import (
    TASK_ATTRIBUTE,
    Converted,
    DomainPolicy,
    IngestError,
    Problem,
    SessionEnd,
    safe_id,
    tool_name,
    tool_record,
)
from fai_core.introspection import KNOWN_EXCEPTIONS, STATUS_WORDS, Outcome, classify_output
from fai_core.telemetry import TelemetryError, TelemetryRecord

#: Most spans one request may hold; beyond, the whole request is refused (a batch
#: processor sends 512 by default, so only a hostile or broken client gets near this).
MAX_SPANS = 100_000
#: Most spans one file import may hold (a file is converted as a whole, in memory).
MAX_FILE_SPANS = 1_000_000
#: Largest request body `parse_request` decodes by default (after decompression).
MAX_REQUEST_BYTES = 64 << 20
#: Largest file `read_otlp_file` reads by default (after gunzip).
MAX_FILE_BYTES = 256 << 20
#: How many traces a `TraceSessions` remembers (oldest forgotten first).
MAX_REMEMBERED_TRACES = 10_000

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
_CONTENT_TYPES = {JSON: JSON, PROTOBUF: PROTOBUF, "application/protobuf": PROTOBUF}

OPERATION = "gen_ai.operation.name"
CONVERSATION = "gen_ai.conversation.id"
TOOL_NAME = "gen_ai.tool.name"
TOOL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"
EXIT_CODES = ("process.exit.code", "process.exit_code")
HTTP_STATUS = "http.response.status_code"
EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_SCORE = "gen_ai.evaluation.score.value"
REWARD_ATTRIBUTE = "fai.reward"

_ID_FIELDS = {"traceId": 32, "trace_id": 32, "spanId": 16, "span_id": 16}
_ID_FIELDS |= {"parentSpanId": 16, "parent_span_id": 16}
_HEX_RE = re.compile(r"[0-9a-fA-F]*")
_JSON_HEAD_RE = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"(?:resourceSpans|resource_spans)"\s*:')
_ERRORISH_RE = re.compile(r"[A-Z][A-Za-z0-9]*(?:Error|Exception)")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: How deep a structured attribute value is read (the classifier needs only the top).
_MAX_VALUE_DEPTH = 8
#: Longest `gen_ai.tool.call.result` string that is tried as JSON before classifying.
_MAX_RESULT_JSON = 1 << 20
#: Longest chain of parents followed within one input (cycles are cut too).
_MAX_ANCESTRY = 256


# ---------------------------------------------------------------------------- decoding


def media_type(content_type: str) -> str:
    """`JSON` or `PROTOBUF` for a Content-Type header value; IngestError otherwise."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base not in _CONTENT_TYPES:
        raise IngestError(f"unsupported content type {base[:64]!r} (use {PROTOBUF} or {JSON})")
    return _CONTENT_TYPES[base]


def parse_request(
    data: bytes, content_type: str, *, max_bytes: int = MAX_REQUEST_BYTES
) -> ExportTraceServiceRequest:
    """One OTLP trace export request, decoded, or IngestError saying why not.

    JSON follows the OTLP/JSON rules: ids in hex (base64 is accepted too), unknown fields
    ignored (a newer producer must not be refused for fields we do not read).
    """
    kind = media_type(content_type)
    if len(data) > max_bytes:
        raise IngestError(f"request of {len(data)} bytes exceeds {max_bytes} bytes")
    if kind == PROTOBUF:
        return _parse_protobuf(data)
    return _parse_json(data)


def _parse_protobuf(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise IngestError(f"malformed OTLP protobuf: {_short(exc)}") from None
    return request


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:32]} is out of range")
    return number


def _parse_json(data: bytes) -> ExportTraceServiceRequest:
    try:
        text = data.decode("utf-8-sig")
        obj = jsonlimits.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise IngestError("JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IngestError(f"malformed JSON: {_short(exc)}") from None
    if not isinstance(obj, dict):
        raise IngestError("OTLP/JSON must be an object")
    if obj and not ({"resourceSpans", "resource_spans"} & obj.keys()):
        raise IngestError("not an OTLP trace request: no resourceSpans")
    _hex_ids_to_base64(obj)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(obj, request, ignore_unknown_fields=True)
    except RecursionError:
        raise IngestError("JSON nested too deeply") from None
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise IngestError(f"wrong OTLP/JSON shape: {_short(exc)}") from None
    return request


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    """Rewrite hex span and trace ids (OTLP/JSON) as base64 (protobuf's JSON mapping).

    Only ids at their schema places are touched. A hex id has 32 or 16 characters and a
    base64 one 24/22 or 12/11, so the two cannot be mistaken for one another.
    """
    for resource_spans in _items(obj, ("resourceSpans", "resource_spans")):
        for scope_spans in _items(resource_spans, ("scopeSpans", "scope_spans")):
            for span in _items(scope_spans, ("spans",)):
                _fix_ids(span)
                for link in _items(span, ("links",)):
                    _fix_ids(link)


def _items(obj: dict[str, Any], keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The objects in the list under any of `keys` (anything else is left to the parser)."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            yield from (item for item in value if isinstance(item, dict))


def _fix_ids(span: dict[str, Any]) -> None:
    for key, width in _ID_FIELDS.items():
        value = span.get(key)
        if isinstance(value, str) and len(value) == width and _HEX_RE.fullmatch(value):
            span[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _short(exc: BaseException) -> str:
    text = CONTROL_RE.sub(" ", str(exc) or type(exc).__name__)
    return text[:200]


def response_bytes(rejected: int, message: str, content_type: str) -> bytes:
    """The body of a 200 answer: an ExportTraceServiceResponse in the request's encoding.

    `rejected` spans and `message` go into `partial_success`, which OTLP clients log
    (they do not retry it: the refused spans would be refused again).
    """
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(response, indent=None).encode("utf-8")
    return response.SerializeToString()


def count_spans(request: ExportTraceServiceRequest) -> int:
    """Spans in an export request, counted without converting anything, so a receiver can
    refuse an oversized request or rate-limit by spans before doing the work."""
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


# ------------------------------------------------------------------------- attributes


def _plain(value: AnyValue, depth: int = 0) -> Any:
    """An attribute value as plain Python (bytes dropped, nesting cut at a fixed depth)."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if depth >= _MAX_VALUE_DEPTH:
        return None
    if kind == "array_value":
        return [_plain(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value, depth + 1) for kv in value.kvlist_value.values}
    return None


def _raw(attributes: Any) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in attributes}


class _Attrs(Mapping[str, Any]):
    """Attribute layers, first wins, converted on access (rules read only a few keys)."""

    def __init__(self, *layers: dict[str, AnyValue]) -> None:
        self._layers = layers

    def __getitem__(self, key: str) -> Any:
        for layer in self._layers:
            if key in layer:
                return _plain(layer[key])
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter({key: None for layer in self._layers for key in layer})

    def __len__(self) -> int:
        return len(set().union(*self._layers))


# ------------------------------------------------------------------------- conversion


class SessionKey(NamedTuple):
    """The (task_id, attempt) a span's records are filed under, and whether the attempt
    is a conversation id rather than the trace id."""

    task_id: str
    attempt: str
    #: keyed by gen_ai.conversation.id (may span traces), not by the trace itself
    conversation: bool


class TraceSessions:
    """Which session each trace was filed under, across the requests of one receiver.

    The first span of a trace that is seen fixes its session; later spans of the trace
    (its `invoke_agent` root, typically, which ends last) join it, even when they carry
    a conversation id the earlier spans did not. Bounded: the oldest traces are forgotten.
    """

    def __init__(self, max_traces: int = MAX_REMEMBERED_TRACES) -> None:
        self.max_traces = max_traces
        self._keys: OrderedDict[str, SessionKey] = OrderedDict()

    def get(self, trace: str) -> SessionKey | None:
        """The session `trace` was filed under, or None if it is new (or forgotten)."""
        return self._keys.get(trace)

    def remember(self, trace: str, key: SessionKey) -> SessionKey:
        """File `trace` under `key` unless it already has a session, and return the one
        that holds, so later spans of a trace join the session its first span fixed."""
        known = self._keys.setdefault(trace, key)
        self._keys.move_to_end(trace)
        while len(self._keys) > self.max_traces:
            self._keys.popitem(last=False)
        return known

    def __len__(self) -> int:
        return len(self._keys)


class _Refused(Exception):
    """One span is refused; `reason` becomes its Problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Span:
    where: str
    span: Span
    trace: str
    parent: bytes
    own: dict[str, AnyValue]
    resource: dict[str, AnyValue]
    operation: Any


@dataclass
class _Result:
    converted: Converted = field(default_factory=Converted)
    #: the latest root of each conversation session: how it would end, were it over
    pending: dict[tuple[str, str], tuple[int, SessionEnd]] = field(default_factory=dict)


def _where(prefix: str, number: int, name: str) -> str:
    label = CONTROL_RE.sub("?", name)[:64]
    return f"{prefix}span {number} ({label})"


def _check_span(span: Span) -> None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise _Refused("bad trace id")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise _Refused("bad span id")
    if len(span.parent_span_id) not in (0, 8):
        raise _Refused("bad parent span id")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start or not end:
        raise _Refused("missing start or end time")
    if end < start:
        raise _Refused("span ends before it starts")


class _Index:
    """The spans of one input by id, and each trace's `invoke_agent` spans."""

    def __init__(self, parts: list[tuple[str, ExportTraceServiceRequest]], out: Converted):
        self.spans: list[_Span] = []
        self.by_id: dict[tuple[str, bytes], _Span] = {}
        self.agents: dict[str, list[_Span]] = {}
        number = 0
        for prefix, request in parts:
            for rs in request.resource_spans:
                resource = _raw(rs.resource.attributes)
                for scope in rs.scope_spans:
                    for span in scope.spans:
                        number += 1
                        out.units += 1
                        where = _where(prefix, number, span.name)
                        try:
                            self._add(where, span, resource)
                        except _Refused as exc:
                            out.problems.append(Problem(where, exc.reason))

    def _add(self, where: str, span: Span, resource: dict[str, AnyValue]) -> None:
        _check_span(span)
        trace = span.trace_id.hex()
        if (trace, span.span_id) in self.by_id:
            raise _Refused("duplicate span")
        own = _raw(span.attributes)
        operation = _plain(own[OPERATION]) if OPERATION in own else None
        parent = span.parent_span_id if any(span.parent_span_id) else b""
        entry = _Span(where, span, trace, parent, own, resource, operation)
        self.spans.append(entry)
        self.by_id[(trace, span.span_id)] = entry
        if operation == "invoke_agent":
            self.agents.setdefault(trace, []).append(entry)

    def _ancestors(self, entry: _Span) -> Iterator[_Span | None]:
        """Parents upwards; None when the chain leaves this input (or loops)."""
        seen = {entry.span.span_id}
        parent = entry.parent
        for _ in range(_MAX_ANCESTRY):
            if not parent:
                return
            found = self.by_id.get((entry.trace, parent))
            if found is None or parent in seen:
                yield None
                return
            seen.add(parent)
            yield found
            parent = found.parent
        yield None

    def agent_of(self, entry: _Span) -> _Span | None:
        """The `invoke_agent` span a span belongs to: its nearest such ancestor, else the
        trace's top-most one in this input (intermediate spans may not have arrived)."""
        if entry.operation == "invoke_agent":
            return entry
        for ancestor in self._ancestors(entry):
            if ancestor is not None and ancestor.operation == "invoke_agent":
                return ancestor
        agents = self.agents.get(entry.trace, [])
        return next((a for a in agents if not a.parent), agents[0] if agents else None)

    def is_top_level(self, entry: _Span) -> bool:
        """No `invoke_agent` above it, and its ancestry is known up to the trace root."""
        for ancestor in self._ancestors(entry):
            if ancestor is None or ancestor.operation == "invoke_agent":
                return False
        return True


def _attrs(index: _Index, entry: _Span) -> _Attrs:
    """Span attributes over its agent span's over its resource's."""
    agent = index.agent_of(entry)
    if agent is None or agent is entry:
        return _Attrs(entry.own, entry.resource)
    return _Attrs(entry.own, agent.own, entry.resource)


def _session(entry: _Span, attrs: Mapping[str, Any], memory: TraceSessions) -> SessionKey:
    """The (task_id, attempt) of a span's trajectory; see `TraceSessions` for `memory`."""
    own = entry.operation != "invoke_agent" and (
        CONVERSATION in entry.own or TASK_ATTRIBUTE in entry.own
    )
    if not own and (known := memory.get(entry.trace)) is not None:
        return known
    conversation = safe_id(attrs.get(CONVERSATION))
    attempt = conversation or entry.trace
    key = SessionKey(safe_id(attrs.get(TASK_ATTRIBUTE)) or attempt, attempt, bool(conversation))
    return key if own else memory.remember(entry.trace, key)


def _convert(
    parts: list[tuple[str, ExportTraceServiceRequest]],
    policy: DomainPolicy,
    memory: TraceSessions,
    max_spans: int,
) -> _Result:
    total = sum(count_spans(request) for _, request in parts)
    if total > max_spans:
        raise IngestError(f"{total} spans exceed the limit of {max_spans}")
    result = _Result()
    out = result.converted
    index = _Index(parts, out)
    ends: dict[tuple[str, str], tuple[int, SessionEnd]] = {}
    for entry in index.spans:
        try:
            if entry.operation == "execute_tool":
                out.records.append(_tool_call(index, entry, policy, memory))
            elif entry.operation == "invoke_agent" and index.is_top_level(entry):
                key = _session(entry, _attrs(index, entry), memory)
                end = _session_end(entry, key)
                target = result.pending if key.conversation else ends
                _keep_latest(target, end, entry.span.end_time_unix_nano)
            else:
                out.ignored += 1
        except _Refused as exc:
            out.problems.append(Problem(entry.where, exc.reason))
    out.ends = [end for _, end in ends.values()]
    return result


def _keep_latest(
    target: dict[tuple[str, str], tuple[int, SessionEnd]], end: SessionEnd, time: int
) -> None:
    if end.key not in target or target[end.key][0] <= time:
        target[end.key] = (time, end)


def _tool_call(
    index: _Index, entry: _Span, policy: DomainPolicy, memory: TraceSessions
) -> TelemetryRecord:
    name = _plain(entry.own[TOOL_NAME]) if TOOL_NAME in entry.own else None
    if name is None:
        name = entry.span.name.removeprefix("execute_tool ")
    tool = tool_name(name)
    if tool is None:
        raise _Refused("tool name unusable")
    attrs = _attrs(index, entry)
    try:
        domain, kind = policy.resolve(attrs)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    key = _session(entry, attrs, memory)
    try:
        return tool_record(
            task_id=key.task_id,
            attempt=key.attempt,
            tool=tool,
            outcome=_tool_outcome(entry.span.status.code, entry.own),
            time=entry.span.end_time_unix_nano / 1e9,
            domain=domain,
            kind=kind,
        )
    except TelemetryError as exc:
        raise _Refused(f"invalid record: {exc.field}") from None


def _small_int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,4}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _error_type(value: Any) -> Outcome:
    """The class of an `error.type` value. Custom names are not kept (a class name can
    itself be user data): a well-known exception name, an HTTP status code (what HTTP
    instrumentations write), a status word, else "exception" or status "error"."""
    if not isinstance(value, str) or not value.strip():
        return Outcome()
    value = value.strip()
    name = value.rsplit(".", 1)[-1]  # java.net.UnknownHostException, builtins.KeyError
    if name in KNOWN_EXCEPTIONS:
        return Outcome(exception=name)
    if (code := _small_int(value, 100, 599)) is not None:
        return Outcome(http_status=code)
    if (word := STATUS_WORDS.get(value.lower())) is not None:
        return Outcome(status=word)
    return (
        Outcome(exception="exception") if _ERRORISH_RE.fullmatch(name) else Outcome(status="error")
    )


def _result_outcome(own: dict[str, AnyValue]) -> Outcome:
    if TOOL_RESULT not in own:
        return Outcome()
    value = _plain(own[TOOL_RESULT])
    if isinstance(value, str) and len(value) <= _MAX_RESULT_JSON and value[:1] in ("{", "["):
        with contextlib.suppress(ValueError, RecursionError):
            value = jsonlimits.loads(value, parse_constant=_reject_constant)
    try:
        return classify_output(value, reduced=False)  # the tool's own result: untrusted
    except RecursionError:
        return Outcome()


def _tool_outcome(status_code: int, own: Mapping[str, AnyValue]) -> Outcome:
    """The outcome class of one `execute_tool` span, from its own attributes only.

    Field by field, the first source that gives it: `error.type`, then the exit code and
    HTTP status attributes, then what the classifier finds in `gen_ai.tool.call.result`.
    The span status comes last: ERROR gives status "error" when nothing else says the call
    failed, OK gives "ok" when nothing else is known, UNSET gives nothing.
    """
    error = _error_type(_plain(own[ERROR_TYPE])) if ERROR_TYPE in own else Outcome()
    exit_code = next(
        (
            code
            for key in EXIT_CODES
            if key in own and (code := _small_int(_plain(own[key]), -128, 255)) is not None
        ),
        None,
    )
    http = _small_int(_plain(own[HTTP_STATUS]), 100, 599) if HTTP_STATUS in own else None
    found = _result_outcome(own)
    outcome = Outcome(
        exception=error.exception or found.exception,
        exit_code=_first(error.exit_code, exit_code, found.exit_code),
        http_status=_first(error.http_status, http, found.http_status),
        status=error.status or found.status,
    )
    if status_code == Status.STATUS_CODE_ERROR and not outcome.failed:
        return replace(outcome, status="error")
    if status_code == Status.STATUS_CODE_OK and outcome.label == "unclassified":
        return Outcome(status="ok")
    return outcome


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _session_end(entry: _Span, key: SessionKey) -> SessionEnd:
    """How a top-level agent run ended: ERROR (or `error.type`) failed, OK succeeded,
    UNSET does not say; feedback from `fai.reward` or an evaluation event on the span."""
    code = entry.span.status.code
    if code == Status.STATUS_CODE_ERROR or ERROR_TYPE in entry.own:
        failed: bool | None = True
    else:
        failed = False if code == Status.STATUS_CODE_OK else None
    return SessionEnd(key.task_id, key.attempt, failed, _feedback(entry))


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and -1.0 <= value <= 1.0 else None


def _feedback(entry: _Span) -> float | None:
    """`fai.reward` if set (an invalid one refuses the span), else the latest evaluation
    event's score when it lies in [-1, 1] (other scales, e.g. 1..5, are not feedback)."""
    if REWARD_ATTRIBUTE in entry.own:
        score = _score(_plain(entry.own[REWARD_ATTRIBUTE]))
        if score is None:
            raise _Refused("fai.reward must be a number in [-1, 1]")
        return score
    latest: tuple[int, float] | None = None
    for event in entry.span.events:
        if event.name != EVALUATION_EVENT:
            continue
        values = _raw(event.attributes)
        score = _score(_plain(values[EVALUATION_SCORE])) if EVALUATION_SCORE in values else None
        if score is not None and (latest is None or event.time_unix_nano >= latest[0]):
            latest = (event.time_unix_nano, score)
    return None if latest is None else latest[1]


def convert_request(
    request: ExportTraceServiceRequest,
    policy: DomainPolicy,
    *,
    where_prefix: str = "",
    sessions: TraceSessions | None = None,
    max_spans: int = MAX_SPANS,
) -> Converted:
    """Records and session ends of one export request; refused spans become Problems.

    Sessions keyed by conversation are not ended here (see the module doc). Pass the same
    `sessions` for every request of one stream, so that a trace split over several
    requests stays one trajectory. A request of more than `max_spans` spans is refused
    whole (IngestError).
    """
    memory = sessions if sessions is not None else TraceSessions()
    return _convert([(where_prefix, request)], policy, memory, max_spans).converted


# ------------------------------------------------------------------------------ files


def read_otlp_file(
    source: str | os.PathLike[str] | bytes,
    policy: DomainPolicy,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_spans: int = MAX_FILE_SPANS,
) -> Converted:
    """A whole OTLP trace file: records, and an end for every session in it.

    Accepted layouts: JSON Lines (one export request per line, as the collector's file
    exporter writes with `format: json`), one JSON document (pretty-printed or not), one
    binary ExportTraceServiceRequest, and the file exporter's `format: proto` layout (each
    message preceded by its length as a 4-byte big-endian unsigned integer). A gzip file
    is read through gzip. zstd (the file exporter's `compression: zstd`, which compresses
    each message on its own) is refused with a clear error: it is not in Python's
    standard library.

    The file is complete, so every session with records that no trace root ended gets an
    end here: a conversation ends as its latest top-level agent span ended, any other
    session with `failed=None`. A bad line or message is a Problem ("line 3: ..."); a file
    with nothing readable raises IngestError.
    """
    data = _read_bounded(source, max_bytes)
    parts, problems = _file_parts(data, max_bytes)
    if not parts:
        detail = f": {problems[0]}" if problems else ""
        raise IngestError(f"no readable OTLP data{detail}")
    if sum(count_spans(request) for _, request in parts) == 0:
        raise IngestError("no spans in file")
    result = _convert(parts, policy, TraceSessions(max_traces=max_spans), max_spans)
    out = result.converted
    out.problems[:0] = problems
    out.units += len(problems)
    ended = {end.key for end in out.ends}
    for record in out.records:
        key = (record.task_id, record.attempt)
        if key not in ended:
            ended.add(key)
            pending = result.pending.get(key)
            out.ends.append(pending[1] if pending else SessionEnd(*key))
    return out


def _read_bounded(source: str | os.PathLike[str] | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise IngestError(f"cannot read {os.fspath(source)!r}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise IngestError(f"file exceeds {max_bytes} bytes")
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip(data, max_bytes)
    if not data.strip():
        raise IngestError("empty file")
    return data


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    out = bytearray()
    try:
        while data:
            engine = zlib.decompressobj(wbits=31)
            out += engine.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes or engine.unconsumed_tail:
                raise IngestError(f"decompressed file exceeds {max_bytes} bytes")
            if not engine.eof:
                raise IngestError("truncated gzip file")
            data = engine.unused_data
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise IngestError(f"malformed gzip file: {exc}") from None
    return bytes(out)


def _file_parts(
    data: bytes, max_bytes: int
) -> tuple[list[tuple[str, ExportTraceServiceRequest]], list[Problem]]:
    """Split a file into export requests (each with its location prefix) and Problems."""
    if data.startswith(_ZSTD_MAGIC):
        raise IngestError("zstd-compressed file: not supported, decompress it first")
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return _json_parts(data, max_bytes)
    if data[:1] == b"\x0a":  # field 1 (resource_spans), length-delimited: one message
        return [("", parse_request(data, PROTOBUF, max_bytes=max_bytes))], []
    return _framed_parts(data, max_bytes)


def _json_parts(
    data: bytes, max_bytes: int
) -> tuple[list[tuple[str, ExportTraceServiceRequest]], list[Problem]]:
    """One JSON document if the whole file parses as one, else JSON Lines."""
    lines = data.split(b"\n")
    try:
        return [("", parse_request(data, JSON, max_bytes=max_bytes))], []
    except IngestError as exc:
        several = sum(1 for line in lines if line.strip()) > 1
        if not (several and exc.reason.startswith("malformed JSON")):
            raise
    parts: list[tuple[str, ExportTraceServiceRequest]] = []
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parts.append((f"line {number}: ", parse_request(line, JSON, max_bytes=max_bytes)))
        except IngestError as exc:
            problems.append(Problem(f"line {number}", exc.reason))
    return parts, problems


def _framed_parts(
    data: bytes, max_bytes: int
) -> tuple[list[tuple[str, ExportTraceServiceRequest]], list[Problem]]:
    """The file exporter's `format: proto`: <uint32 big-endian length><message>, repeated."""
    parts: list[tuple[str, ExportTraceServiceRequest]] = []
    problems: list[Problem] = []
    offset, number = 0, 0
    while offset < len(data):
        number += 1
        size = int.from_bytes(data[offset : offset + 4], "big")
        payload = data[offset + 4 : offset + 4 + size]
        if offset + 4 > len(data) or len(payload) < size:
            problems.append(Problem(f"message {number}", "truncated message"))
            break
        offset += 4 + size
        if payload.startswith(_ZSTD_MAGIC):
            raise IngestError(
                "zstd-compressed messages (file exporter `compression: zstd`): not supported,"
                " write the file without compression"
            )
        kind = JSON if payload.lstrip()[:1] == b"{" else PROTOBUF
        try:
            parts.append((f"message {number}: ", parse_request(payload, kind, max_bytes=max_bytes)))
        except IngestError as exc:
            problems.append(Problem(f"message {number}", exc.reason))
    return parts, problems


# -------------------------------------------------------------------------- detection


def looks_like_otlp(head: bytes) -> bool:
    """Whether the first bytes of an input look like OTLP traces (for format detection).

    JSON: an object whose first key is resourceSpans. Protobuf (bare or length-prefixed):
    a request that parses and holds a span; if `head` cuts the first message short, its
    leading Resource must parse and carry attributes (every SDK sets service.name).
    """
    if _JSON_HEAD_RE.match(head):
        return True
    if head[:1] == b"\x0a":
        return _proto_head(head, cut=True)
    if len(head) > 5 and head[4:5] == b"\x0a":  # the file exporter's length prefix
        size = int.from_bytes(head[:4], "big")
        return _proto_head(head[4 : 4 + size], cut=len(head) < 4 + size)
    return False


def _proto_head(data: bytes, *, cut: bool) -> bool:
    """A request holding a span; or, when `data` may be cut short, one that starts with a
    ResourceSpans whose Resource parses (request field 1 -> resource field 1)."""
    try:
        return count_spans(ExportTraceServiceRequest.FromString(data)) > 0
    except (DecodeError, RecursionError, ValueError):
        if not cut:
            return False
    _, at = _varint(data, 1)
    if at == 1 or data[at : at + 1] != b"\x0a":
        return False
    length, start = _varint(data, at + 1)
    if length is None or start + length > len(data):
        return False
    try:
        resource = Resource.FromString(data[start : start + length])
    except (DecodeError, RecursionError, ValueError):
        return False
    return len(resource.attributes) > 0 and all(kv.key for kv in resource.attributes)


def _varint(data: bytes, at: int) -> tuple[int | None, int]:
    """A protobuf varint at `at` (value, next offset); (None, at) if absent or cut."""
    value, shift = 0, 0
    for index in range(at, min(len(data), at + 10)):
        value |= (data[index] & 0x7F) << shift
        shift += 7
        if data[index] < 0x80:
            return value, index + 1
    return None, at
