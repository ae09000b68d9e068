"""One entry point for a telemetry file of any supported format, found by its first bytes.

`read_telemetry(data, "auto", policy)` looks at the start of the input:

| starts with | format |
|---|---|
| a JSON object with `resourceSpans` | `otlp` (OTLP/JSON, one request per line or one document) |
| a JSON object with `hook_event_name` | `claude-code` (recorded hook events, one per line) |
| an object with `object` = `trace` or `trace.span` | `openai-agents` (exported traces, spans) |
| a JSON object with `task_id` or `tool` | `fai` (FAI's own JSON Lines, docs/telemetry.md) |
| anything else that is not text | `otlp` protobuf (an ExportTraceServiceRequest) |

A JSON object that fits none of these is refused by name rather than guessed at.
"""

from __future__ import annotations

import io

from fai_core import jsonlimits
from fai_core.ingest.common import Converted, DomainPolicy, IngestError, Problem
from fai_core.telemetry import MAX_LINE_BYTES, ReadReport, iter_jsonl

FORMATS = ("fai", "otlp", "claude-code", "openai-agents")
#: The largest telemetry file one import reads (split bigger ones).
MAX_IMPORT_BYTES = 256 << 20


def _first_object(data: bytes) -> dict | None:
    """The first JSON object of the input: its first line, or the whole document."""
    text = data.lstrip()
    if not text.startswith(b"{"):
        return None
    first = text.split(b"\n", 1)[0][:MAX_LINE_BYTES]
    for candidate in (first, text[: 64 << 20]):
        try:
            value = jsonlimits.loads(candidate)
        except (ValueError, RecursionError):
            continue
        return value if isinstance(value, dict) else None
    return None


def detect_format(data: bytes) -> str:
    """The format of `data` (see the module doc), or IngestError saying why none fits."""
    stripped = data.lstrip()
    if not stripped:
        raise IngestError("the input is empty")
    if stripped[:1] in (b"{", b"["):
        obj = _first_object(data)
        if obj is None:
            raise IngestError("the input starts like JSON but its first object does not parse")
        if "resourceSpans" in obj or "resource_spans" in obj:
            return "otlp"
        if "hook_event_name" in obj:
            return "claude-code"
        if obj.get("object") in ("trace", "trace.span"):
            return "openai-agents"
        if "task_id" in obj or "tool" in obj:
            return "fai"
        keys = ", ".join(sorted(map(str, obj))[:6])
        raise IngestError(
            f"unknown telemetry format (first object has keys {keys}); give --format "
            f"{'|'.join(FORMATS)}"
        )
    from fai_core.ingest.otlp import looks_like_otlp

    if stripped[:2] == b"\x1f\x8b" or looks_like_otlp(data[: 1 << 16]):
        return "otlp"  # gzip (read_otlp_file unpacks it), or OTLP protobuf
    raise IngestError("not JSON and not OTLP protobuf: unknown telemetry format")


def read_fai(data: bytes, policy: DomainPolicy) -> Converted:
    """FAI's own JSON Lines; records that name no domain get the policy's default."""
    report = ReadReport()
    defaults = {"domain": policy.default}
    converted = Converted()
    converted.records = list(
        iter_jsonl(io.BytesIO(data), skip_bad=True, report=report, defaults=defaults)
    )
    converted.units = len(converted.records) + report.skipped
    converted.problems = [
        Problem(f"line {e.line}", f"invalid {e.field}: {e.detail}") for e in report.errors
    ]
    missing = report.skipped - len(report.errors)
    if missing > 0:
        converted.problems.append(Problem("more lines", f"{missing} more bad lines"))
    return converted


def read_telemetry(
    data: bytes, fmt: str, policy: DomainPolicy, *, now: float = 0.0
) -> tuple[str, Converted]:
    """(format, what it holds) for a whole input. Raises IngestError when the input as a
    whole cannot be read; refused units are `Converted.problems`."""
    if len(data) > MAX_IMPORT_BYTES:
        raise IngestError(f"input is {len(data)} bytes, more than {MAX_IMPORT_BYTES}: split it")
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "fai":
        return fmt, read_fai(data, policy)
    if fmt == "otlp":
        from fai_core.ingest.otlp import read_otlp_file

        return fmt, read_otlp_file(data, policy)
    if fmt == "claude-code":
        from fai_core.ingest.claude_code import read_hook_events

        # Hook events carry no time: they are stamped with the import's, in file order.
        return fmt, read_hook_events(data, policy, now=now)
    if fmt == "openai-agents":
        from fai_core.ingest.openai_agents import read_agents_export

        return fmt, read_agents_export(data, policy)
    raise IngestError(f"unknown format {fmt!r}: one of auto, {', '.join(FORMATS)}")
