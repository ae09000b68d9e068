"""OpenAI Agents SDK traces: the dicts of `trace.export()` and `span.export()`.

A trajectory is one trace: one workflow, usually one `Runner.run`. Its `task_id` is the
trace id and its `attempt` "0", unless the trace's metadata names the task it attempts
(`fai.task.id`, for harnesses that retry one task): then the task is that name and the
attempt is the trace id. The trace's `group_id` is not used: the SDK means it for a
conversation thread, whose traces are successive turns, that is different tasks, not
attempts at one.

Spans, by `span_data.type` (docs/telemetry.md, "OpenAI Agents SDK"):

* `function`: one record per tool call. Tool: `span_data.name`. Class: a span `error`
  makes it a failure, classified from the error's message and text fields (exception
  name, status word; "error" when they say nothing more); else the class of
  `span_data.output` (a JSON object is read by its status fields, text is scanned),
  else `ok`: the tool returned normally. Time: `ended_at` (else `started_at`).
* `agent`: its error (max turns exceeded, a guardrail tripwire, ...) makes the run
  failed; the first agent's name is a domain attribute.
* `guardrail` with `triggered`: the run failed (the SDK stops the run).
* `generation`, `response`, `handoff`, `custom` (also the SDK's `task`/`turn` spans),
  `mcp_tools`, `transcription`, `speech`, `speech_group`, and types newer than this
  module: counted as ignored, not read.

The trace ends with a `SessionEnd` (only when it has tool calls): `failed=True` when an
agent span had an error or a guardrail triggered, else None (a clean run says nothing
of whether the task succeeded; the last tool calls do).

Domain attributes: `workflow_name` (the trace's name), `agent_name` (the first agent
span), and every scalar entry of the trace's `metadata`, where `fai.domain`, `fai.kind`
name the domain explicitly. Function inputs, prompts and completions are never read;
outputs and error texts only by the outcome classifier.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fai_core import jsonlimits
from fai_core.ingest.claude_code import iter_json_lines
from fai_core.ingest.common import (
    TASK_ATTRIBUTE,
    Converted,
    DomainPolicy,
    Problem,
    SessionEnd,
    safe_id,
    tool_name,
    tool_record,
)
from fai_core.introspection import OUTCOME_KEY, Outcome, classify_output
from fai_core.telemetry import MAX_LINE_BYTES, TelemetryError

WORKFLOW_ATTRIBUTE = "workflow_name"
AGENT_ATTRIBUTE = "agent_name"
#: Span types the conversion reads; every other type is counted as ignored.
USED_SPAN_TYPES = frozenset({"function", "agent", "guardrail"})
#: Longest Python-repr output parsed as a dict (literal_eval is slower than JSON).
MAX_LITERAL_CHARS = 65_536


def _problem_in_trace(trace: object) -> str | None:
    if not isinstance(trace, dict):
        return "trace is not an object"
    if trace.get("object", "trace") != "trace":
        return "not a trace"
    if not isinstance(trace.get("id"), str) or not trace["id"]:
        return "trace id missing"
    if not isinstance(trace.get("workflow_name"), str):
        return "workflow_name missing"
    if trace.get("group_id") is not None and not isinstance(trace["group_id"], str):
        return "group_id has the wrong type"
    if trace.get("metadata") is not None and not isinstance(trace["metadata"], dict):
        return "metadata has the wrong type"
    return None


def check_span(span: object, trace_id: str | None = None) -> str | None:
    """Why an exported span is refused (None: it is well formed). Only the fields the
    conversion reads are checked; a used type must have its own fields right."""
    if not isinstance(span, dict):
        return "span is not an object"
    if span.get("object", "trace.span") != "trace.span":
        return "not a span"
    if not isinstance(span.get("id"), str) or not span["id"]:
        return "span id missing"
    if not isinstance(span.get("trace_id"), str):
        return "trace_id missing"
    if trace_id is not None and span["trace_id"] != trace_id:
        return "span of another trace"
    data = span.get("span_data")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return "span_data missing"
    error = span.get("error")
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and (error.get("data") is None or isinstance(error["data"], dict))
    ):
        return "error has the wrong type"
    for key in ("started_at", "ended_at"):
        if span.get(key) is not None and not isinstance(span[key], str):
            return f"{key} has the wrong type"
    kind = data["type"]
    if kind in ("function", "agent") and not isinstance(data.get("name"), str):
        return f"{kind} span without a name"
    if kind == "guardrail" and not isinstance(data.get("triggered", False), bool):
        return "triggered has the wrong type"
    return None


def _failure(outcome: Outcome) -> Outcome:
    return outcome if outcome.failed else replace(outcome, status="error")


def error_outcome(error: Mapping[str, Any]) -> Outcome:
    """The class of a failed span from its SpanError: message plus the text fields of
    `data` (the SDK puts the exception's text in `data.error`); always a failure."""
    data = error.get("data")
    if isinstance(data, dict) and OUTCOME_KEY in data:  # already reduced by `slim_span`
        return _failure(classify_output(data))
    texts = [error.get("message")]
    if isinstance(data, dict):
        texts += list(data.values())
    return _failure(classify_output("\n".join(t for t in texts if isinstance(t, str))))


def _structured(output: object) -> object:
    """A function output that is the text of an object, as that object.

    The SDK exports `str(output)`, so a tool that returns a dict arrives as its Python
    repr (single quotes, True/None); JSON text is read too. Anything else stays text.
    """
    if not (isinstance(output, str) and output.lstrip().startswith("{")):
        return output
    text = output.strip()
    parsers = ((jsonlimits.loads, MAX_LINE_BYTES), (ast.literal_eval, MAX_LITERAL_CHARS))
    for parse, limit in parsers:
        if len(text) <= limit:
            try:
                value = parse(text)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            return value if isinstance(value, dict) else output
    return output


def function_outcome(span: Mapping[str, Any]) -> Outcome:
    """The class of one exported `function` span (see the module doc)."""
    error = span.get("error")
    if error is not None:
        return error_outcome(error)
    raw = span["span_data"].get("output")
    # The SDK exports a function's result as text; only `slim_span` puts a dict here, one
    # holding nothing but the class it reduced. Text that parses into a dict is the
    # tool's own content, which must not set its own class.
    reduced = isinstance(raw, dict) and set(raw) == {OUTCOME_KEY}
    outcome = classify_output(_structured(raw), reduced=reduced)
    return outcome if outcome.label != "unclassified" else Outcome(status="ok")


def slim_span(span: object) -> dict[str, Any] | None:
    """A span export reduced to what `convert_trace` reads, or None for a type it ignores.

    A function span keeps its name and, in place of its output and error text, their
    outcome class: the conversion of the slim span equals that of the full one, and a
    processor that buffers slim spans holds no tool output. A malformed span is returned
    unchanged, to be refused by the conversion.
    """
    if check_span(span) is not None:
        return span  # type: ignore[return-value]
    assert isinstance(span, dict)
    data, error = span["span_data"], span.get("error")
    if data["type"] not in USED_SPAN_TYPES:
        return None
    slim = {key: span.get(key) for key in ("id", "trace_id", "started_at", "ended_at")}
    if data["type"] == "function":
        outcome = function_outcome(span).to_json()
        slim["span_data"] = {"type": "function", "name": data["name"], "output": outcome}
        slim["error"] = None if error is None else {"message": "", "data": outcome}
    elif data["type"] == "agent":
        slim["span_data"] = {"type": "agent", "name": data["name"]}
        slim["error"] = None if error is None else {"message": "", "data": None}
    else:
        slim["span_data"] = {"type": "guardrail", "triggered": data.get("triggered") is True}
        slim["error"] = None
    return slim


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (the SDK writes UTC offsets; a time
    without one is taken as UTC), or None."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    except (ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


def _span_time(span: Mapping[str, Any]) -> float | None:
    ended = parse_time(span.get("ended_at"))
    return ended if ended is not None else parse_time(span.get("started_at"))


def _attributes(
    trace: Mapping[str, Any], agents: list[tuple[float, int, str]]
) -> dict[str, object]:
    metadata = trace.get("metadata") or {}
    attributes: dict[str, object] = {
        str(key): value
        for key, value in metadata.items()
        if isinstance(value, str | int | float | bool)
    }
    attributes[WORKFLOW_ATTRIBUTE] = trace["workflow_name"]
    if agents:
        attributes[AGENT_ATTRIBUTE] = min(agents)[2]
    return attributes


def _identity(trace: Mapping[str, Any]) -> tuple[str | None, str | None]:
    metadata = trace.get("metadata") or {}
    trace_id = safe_id(trace["id"])
    if TASK_ATTRIBUTE in metadata:
        return safe_id(metadata[TASK_ATTRIBUTE]), trace_id
    return trace_id, "0"


def convert_trace(
    trace: object,
    spans: Sequence[object],
    policy: DomainPolicy | None = None,
    *,
    where: str = "trace",
    span_wheres: Sequence[str] | None = None,
) -> Converted:
    """One finished trace and its spans (exported dicts, any order) to records and an end.

    Units are the trace and each span. A malformed span is a Problem (at "span N", or
    `span_wheres[N]`) and the rest is converted; a malformed trace, an unusable task id or
    an invalid explicit `fai.domain` refuses the whole trace (one Problem at `where`,
    nothing imported). Never raises on bad input.
    """
    policy = policy if policy is not None else DomainPolicy()
    out = Converted(units=1 + len(spans))
    reason = _problem_in_trace(trace)
    if reason is not None:
        out.problems.append(Problem(where, reason))
        return out
    assert isinstance(trace, dict)
    task_id, attempt = _identity(trace)
    if task_id is None or attempt is None:
        out.problems.append(Problem(where, f"bad {TASK_ATTRIBUTE}"))
        return out
    wheres = span_wheres if span_wheres is not None else [f"span {i}" for i in range(len(spans))]
    calls, agents, failed = _read_spans(trace["id"], spans, wheres, out)
    try:
        domain, kind = policy.resolve(_attributes(trace, agents))
    except ValueError:
        return Converted(problems=[Problem(where, "bad fai.domain")], units=out.units)
    for where, tool, outcome, time in calls:
        try:
            record = tool_record(
                task_id=task_id,
                attempt=attempt,
                tool=tool,
                outcome=outcome,
                time=time,
                domain=domain,
                kind=kind,
            )
        except TelemetryError as exc:  # a time out of range, a hand-built bad rule
            out.problems.append(Problem(where, f"bad {exc.field}"))
            continue
        out.records.append(record)
    if out.records:
        out.ends.append(SessionEnd(task_id, attempt, failed=True if failed else None))
    return out


def _read_spans(
    trace_id: str, spans: Sequence[object], wheres: Sequence[str], out: Converted
) -> tuple[list[tuple[str, str, Outcome, float]], list[tuple[float, int, str]], bool]:
    """(tool calls, agents with their start, whether the run failed); refusals and
    ignored spans are counted in `out`."""
    calls: list[tuple[str, str, Outcome, float]] = []
    agents: list[tuple[float, int, str]] = []
    failed = False
    for index, (span, where) in enumerate(zip(spans, wheres, strict=True)):
        reason = check_span(span, trace_id)
        if reason is not None:
            out.problems.append(Problem(where, reason))
            continue
        assert isinstance(span, dict)
        data = span["span_data"]
        kind = data["type"]
        if kind == "function":
            tool, time = tool_name(data["name"]), _span_time(span)
            if tool is None:
                out.problems.append(Problem(where, "bad tool name"))
            elif time is None:
                out.problems.append(Problem(where, "no time"))
            else:
                calls.append((where, tool, function_outcome(span), time))
        elif kind == "agent":
            start = parse_time(span.get("started_at"))
            agents.append((math.inf if start is None else start, index, data["name"]))
            failed = failed or span.get("error") is not None
        elif kind == "guardrail":
            failed = failed or data.get("triggered") is True
        else:
            out.ignored += 1
    return calls, agents, failed


def read_agents_export(
    source: bytes | str | os.PathLike[str], policy: DomainPolicy | None = None
) -> Converted:
    """A JSON Lines file of exported traces and spans (one `trace.export()` or
    `span.export()` object per line, any order, traces interleaved), converted per trace.

    Spans are grouped by `trace_id`. A trace whose trace object is missing is converted
    with no attributes but the ids (the policy's default domain applies); a refused trace
    object refuses its spans with it. A later copy of a trace object replaces an earlier
    one. Problems are at "line N". Raises IngestError only when a path cannot be read.
    """
    traces: dict[str, tuple[object, str]] = {}
    groups: dict[str, list[tuple[object, str]]] = {}
    out = Converted()
    for where, item, reason in iter_json_lines(source):
        kind = item.get("object") if isinstance(item, dict) else None
        if reason is None and kind not in ("trace", "trace.span"):
            reason = "not a trace or span export"
        if reason is None and kind == "trace":
            if isinstance(item.get("id"), str) and item["id"]:  # type: ignore[union-attr,index]
                if item["id"] in traces:  # type: ignore[index]
                    out.extend(Converted(units=1, ignored=1))  # the copy it supersedes
                traces[item["id"]] = (item, where)  # type: ignore[index]
                continue
            reason = "trace id missing"
        if reason is None:
            reason = check_span(item)
        if reason is not None:
            out.extend(Converted(problems=[Problem(where, reason)], units=1))
            continue
        slim = slim_span(item)
        if slim is None:
            out.extend(Converted(units=1, ignored=1))
        else:
            groups.setdefault(slim["trace_id"], []).append((slim, where))
    for trace_id in dict.fromkeys([*traces, *groups]):
        spans = groups.get(trace_id, [])
        trace, where = traces.get(trace_id, (None, ""))
        converted = convert_trace(
            trace if trace is not None else {"id": trace_id, "workflow_name": ""},
            [span for span, _ in spans],
            policy,
            where=where or f"trace {trace_id[:40]}",
            span_wheres=[w for _, w in spans],
        )
        converted.units -= trace is None  # no line held that trace
        out.extend(converted)
    return out
