"""Claude Code hook events: the JSON object a hook command receives on stdin.

A trajectory is one user turn of one session: `task_id` is `"{session_id}#{turn}"` (through
`safe_id`), `attempt` is "0". A session's turn counter advances on `UserPromptSubmit`; it
is injected (`HookConverter(turns=...)`) because `fai hook claude-code` runs as a fresh
process per event and keeps the counters in the node's spool. Tool calls made before the
first prompt the hook saw belong to turn 0.

Events, by `hook_event_name` (docs/telemetry.md, "Claude Code hooks"):

* `UserPromptSubmit`: the next turn starts. A previous turn that this converter saw open
  and never saw end (Esc stops a turn without `Stop`) is closed with an end marker that
  says nothing of its fate; across processes the spool's idle timeout does the same.
* `PostToolUse`: one record, the call succeeded by the CLI's own account. Its class comes
  from structured fields only (`interrupted`, `is_error`/`isError`, integer exit or HTTP
  codes, a `status`/`state`/`outcome` word; WebFetch's `code`), else `ok`: on a
  successful call the free text (stdout, stderr, a fetched page) is content, not fate.
* `PostToolUseFailure`: one record whose class is read from `error` (exit code, HTTP
  status, exception name, status word), always a failure; `is_interrupt` is `cancelled`.
* `Stop`, `StopFailure`, `SessionEnd`: the current turn ends. Only `StopFailure` (an API
  error ended the turn) says it failed; the others leave the fate to the tool calls.
* Everything else (`PreToolUse`, `SessionStart`, `SubagentStart`/`SubagentStop`,
  `Notification`, `PreCompact`, `PermissionRequest`, events newer than this module) is
  counted as ignored without being read. Tool calls of sub-agents arrive as their own
  `PostToolUse` events and count in the parent turn.

Events are checked against the hook input types of claude-agent-sdk (`SCHEMAS`; tests
compare them): required keys present, declared keys of the declared JSON type. Keys the
SDK does not declare are tolerated, since the CLI sends more than the SDK types. Only the
keys in `READS` are ever handed to the conversion: `prompt` and `tool_input` are not
among them, and `tool_response`/`error` are read by the outcome classifier alone.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import IO, Any

from fai_core import jsonlimits
from fai_core.ingest.common import (
    Converted,
    DomainPolicy,
    IngestError,
    Problem,
    SessionEnd,
    safe_id,
    tool_name,
    tool_record,
)
from fai_core.introspection import Outcome, classify_output
from fai_core.telemetry import MAX_LINE_BYTES, MAX_TIME, TelemetryError, _binary_lines

#: Domain attributes of a tool call (for `DomainRule`s; `--domain` is the default).
CWD_ATTRIBUTE = "cwd"
#: The last component of `cwd`, e.g. "fai" for /home/ann/src/fai.
PROJECT_ATTRIBUTE = "claude.project"
#: `agent_type` of a main thread started with `--agent`; sub-agents' types are not used,
#: so that one turn keeps one domain.
AGENT_TYPE_ATTRIBUTE = "claude.agent_type"

# Declared JSON types. `object` accepts any value; int excludes booleans.
_BASE: dict[str, tuple[type, bool]] = {
    "hook_event_name": (str, True),
    "session_id": (str, True),
    "transcript_path": (str, True),
    "cwd": (str, True),
    "permission_mode": (str, False),
    "prompt_id": (str, False),
    "effort": (dict, False),
}
_TOOL_CONTEXT: dict[str, tuple[type, bool]] = {"agent_id": (str, False), "agent_type": (str, False)}
_STOP_EXTRAS: dict[str, tuple[type, bool]] = {
    "last_assistant_message": (str, False),
    "background_tasks": (list, False),
    "session_crons": (list, False),
}

#: (type, required) per key of each handled event, as claude-agent-sdk 0.2.189 declares it
#: (UserPromptSubmitHookInput, PostToolUseHookInput, ...). `CLI_ONLY_EVENTS` are missing
#: from the SDK's types; their keys follow the hook input schema of Claude Code 2.1.332.
SCHEMAS: dict[str, dict[str, tuple[type, bool]]] = {
    "UserPromptSubmit": {**_BASE, "prompt": (str, True)},
    "PostToolUse": {
        **_BASE,
        **_TOOL_CONTEXT,
        "tool_name": (str, True),
        "tool_input": (dict, True),
        "tool_response": (object, True),
        "tool_use_id": (str, True),
        "duration_ms": (int, False),
    },
    "PostToolUseFailure": {
        **_BASE,
        **_TOOL_CONTEXT,
        "tool_name": (str, True),
        "tool_input": (dict, True),
        "tool_use_id": (str, True),
        "error": (str, True),
        "is_interrupt": (bool, False),
        "duration_ms": (int, False),
    },
    "Stop": {**_BASE, "stop_hook_active": (bool, True), **_STOP_EXTRAS},
    "StopFailure": {
        **_BASE,
        "error": (str, True),
        "error_details": (str, False),
        "last_assistant_message": (str, False),
    },
    "SessionEnd": {**_BASE, "reason": (str, True)},
}
CLI_ONLY_EVENTS = frozenset({"StopFailure", "SessionEnd"})

_ATTRIBUTION = ("session_id", "cwd", "agent_id", "agent_type")
#: The only keys of each event the conversion reads.
READS: dict[str, frozenset[str]] = {
    "UserPromptSubmit": frozenset({"session_id"}),
    "PostToolUse": frozenset({*_ATTRIBUTION, "tool_name", "tool_response"}),
    "PostToolUseFailure": frozenset({*_ATTRIBUTION, "tool_name", "error", "is_interrupt"}),
    "Stop": frozenset({"session_id"}),
    "StopFailure": frozenset({"session_id"}),
    "SessionEnd": frozenset({"session_id"}),
}

#: Keys of a successful `tool_response` that state a status rather than carry content.
_STRUCTURED_KEYS = (
    "exit_code", "returncode", "exit_status", "exit", "status_code", "http_status",
    "status", "state", "outcome",
)  # fmt: skip
_ERROR_FLAGS = ("is_error", "isError")
_TEXT_KEYS = ("text", "content", "error", "message")
_PATH_SPLIT = re.compile(r"[\\/]+")


def _json_type_ok(value: object, kind: type) -> bool:
    if kind is object:
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_event(event: object) -> tuple[str | None, str | None]:
    """(event name, refusal reason): the reason is None for a valid handled event or one
    this module ignores (whose content is not checked, as it is never read)."""
    if not isinstance(event, dict):
        return None, "not a JSON object"
    name = event.get("hook_event_name")
    if not isinstance(name, str) or not name:
        return None, "missing hook_event_name"
    schema = SCHEMAS.get(name)
    if schema is None:
        return name, None
    for key, (kind, required) in schema.items():
        if key not in event:
            if required:
                return name, f"missing {key}"
        elif not _json_type_ok(event[key], kind):
            return name, f"{key} has the wrong type"
    return name, None


def _failure(outcome: Outcome) -> Outcome:
    """The class of a call known to have failed: a class that does not say so gets "error"."""
    return outcome if outcome.failed else replace(outcome, status="error")


def _texts(value: object, depth: int = 0) -> list[str]:
    """Strings of an error result's text fields (content blocks nest one or two levels)."""
    if isinstance(value, str):
        return [value]
    if depth > 3:
        return []
    if isinstance(value, list):
        return [t for item in value[:64] for t in _texts(item, depth + 1)]
    if isinstance(value, dict):
        return [t for key in _TEXT_KEYS if key in value for t in _texts(value[key], depth + 1)]
    return []


def _is_http(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def _flagged(value: object) -> bool:
    return isinstance(value, dict) and any(value.get(flag) is True for flag in _ERROR_FLAGS)


def response_outcome(tool: str, response: Any) -> Outcome:
    """The class of a `PostToolUse` call from its `tool_response` (see the module doc)."""
    outcome = Outcome()
    if isinstance(response, dict):
        if response.get("interrupted") is True:  # Bash: killed by Esc or its timeout
            stderr = response.get("stderr")
            found = classify_output(stderr) if isinstance(stderr, str) else Outcome()
            return found if found.status == "timeout" else Outcome(status="cancelled")
        if _flagged(response):
            return _failure(classify_output("\n".join(_texts(response))))
        outcome = classify_output({k: response[k] for k in _STRUCTURED_KEYS if k in response})
        code = response.get("code")  # WebFetch's HTTP status
        if tool == "WebFetch" and outcome.http_status is None and _is_http(code):
            outcome = replace(outcome, http_status=code)
    elif isinstance(response, list) and any(_flagged(block) for block in response):
        return _failure(classify_output("\n".join(_texts(response))))
    return outcome if outcome.label != "unclassified" else Outcome(status="ok")


def failure_outcome(error: str, interrupted: bool) -> Outcome:
    """The class of a `PostToolUseFailure` call from its `error` text."""
    if interrupted:
        return Outcome(status="cancelled")
    return _failure(classify_output(error))


def _project(cwd: str) -> str:
    parts = [p for p in _PATH_SPLIT.split(cwd) if p]
    return parts[-1] if parts else cwd


def _attributes(fields: dict[str, Any]) -> dict[str, object]:
    cwd = fields["cwd"]
    attributes: dict[str, object] = {CWD_ATTRIBUTE: cwd, PROJECT_ATTRIBUTE: _project(cwd)}
    if "agent_type" in fields and "agent_id" not in fields:
        attributes[AGENT_TYPE_ATTRIBUTE] = fields["agent_type"]
    return attributes


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise TypeError("now must be a number of seconds since the Unix epoch")
    if not (math.isfinite(now) and 0.0 <= now <= MAX_TIME):
        raise ValueError(f"now must be finite and within [0, {MAX_TIME:g}]")
    return float(now)


class HookConverter:
    """Converts hook events one at a time, keeping each session's turn in `turns`.

    `turns` maps a session (its `safe_id`) to its current turn, 0 before the first prompt.
    A converter also remembers, in memory, which turns it saw open and closed, so that a
    long-lived one (or `read_hook_events`) closes turns that ended without `Stop` and
    does not repeat an end marker; a one-event process cannot, and relies on the spool.
    """

    def __init__(
        self, policy: DomainPolicy | None = None, turns: MutableMapping[str, int] | None = None
    ) -> None:
        self.policy = policy if policy is not None else DomainPolicy()
        self.turns: MutableMapping[str, int] = turns if turns is not None else {}
        self._open: dict[str, tuple[str, int]] = {}  # session -> (raw session id, turn)
        self._closed: dict[str, int] = {}

    def convert(self, event: object, now: float) -> Converted:
        """One event (a parsed JSON object) at time `now`. Bad events become Problems."""
        name = event.get("hook_event_name") if isinstance(event, dict) else None
        return self._convert(event, _check_now(now), name if isinstance(name, str) else "event")

    def close_open(self) -> Converted:
        """End markers for every turn this converter saw open and not ended."""
        out = Converted()
        for session, (raw, turn) in list(self._open.items()):
            self._end(out, session, raw, turn, None)
        return out

    def _convert(self, event: object, now: float, where: str) -> Converted:
        out = Converted(units=1)
        name, reason = check_event(event)
        if reason is not None:
            out.problems.append(Problem(where, reason))
            return out
        assert isinstance(event, dict) and name is not None
        if name not in SCHEMAS:
            out.ignored = 1
            return out
        fields = {key: event[key] for key in READS[name] if key in event}
        raw = fields["session_id"]
        session = safe_id(raw)
        if session is None:
            out.problems.append(Problem(where, "bad session_id"))
            return out
        turn = self.turns.get(session, 0)
        if name == "UserPromptSubmit":
            if session in self._open:
                self._end(out, session, *self._open[session], None)
            self.turns[session] = turn + 1
            self._open[session] = (raw, turn + 1)
        elif name in ("PostToolUse", "PostToolUseFailure"):
            self._tool_call(out, name, fields, session, turn, now, where)
        else:
            self._end(out, session, raw, turn, True if name == "StopFailure" else None)
        return out

    def _tool_call(
        self,
        out: Converted,
        name: str,
        fields: dict[str, Any],
        session: str,
        turn: int,
        now: float,
        where: str,
    ) -> None:
        tool = tool_name(fields["tool_name"])
        if tool is None:
            out.problems.append(Problem(where, "bad tool_name"))
            return
        try:
            domain, kind = self.policy.resolve(_attributes(fields))
        except ValueError:
            out.problems.append(Problem(where, "bad domain"))
            return
        if name == "PostToolUse":
            outcome = response_outcome(fields["tool_name"], fields["tool_response"])
        else:
            outcome = failure_outcome(fields["error"], fields.get("is_interrupt") is True)
        task_id = safe_id(f"{fields['session_id']}#{turn}")
        assert task_id is not None
        try:
            record = tool_record(
                task_id=task_id,
                attempt="0",
                tool=tool,
                outcome=outcome,
                time=now,
                domain=domain,
                kind=kind,
            )
        except TelemetryError as exc:  # e.g. a DomainRule built by hand with a bad tag
            out.problems.append(Problem(where, f"bad record {exc.field}"))
            return
        out.records.append(record)
        self._open[session] = (fields["session_id"], turn)

    def _end(self, out: Converted, session: str, raw: str, turn: int, failed: bool | None) -> None:
        """An end marker for `turn`, unless this converter already ended it and `failed`
        adds nothing (a second `Stop` after a stop hook let the agent go on)."""
        self._open.pop(session, None)
        if failed is None and self._closed.get(session) == turn:
            return
        self._closed[session] = turn
        task_id = safe_id(f"{raw}#{turn}")
        assert task_id is not None
        out.ends.append(SessionEnd(task_id, "0", failed=failed))


def _open_source(source: bytes | str | os.PathLike[str]) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    try:
        return open(source, "rb")  # the caller closes it
    except OSError as exc:
        raise IngestError(f"cannot read: {exc.strerror or exc}", str(source)) from None


def iter_json_lines(
    source: bytes | str | os.PathLike[str],
) -> Iterator[tuple[str, object, str | None]]:
    """(where, value, refusal reason) per non-blank line of a JSON Lines input (bytes, or a
    path): the reason is None when the line holds JSON. Lines longer than MAX_LINE_BYTES
    cost bounded memory. Raises IngestError when a path cannot be read."""
    with _open_source(source) as stream:
        for number, content in _binary_lines(stream):
            if content is not None and not content.strip():
                continue
            value, reason = _parse_line(content)
            yield f"line {number}", value, reason


def read_hook_events(
    source: bytes | str | os.PathLike[str],
    policy: DomainPolicy | None = None,
    *,
    now: float = 0.0,
) -> Converted:
    """A recorded JSON Lines file of hook events (bytes, or a path), converted as a whole.

    Events carry no time, so every record gets `now` (order within a turn is the file's).
    Bad lines become Problems at "line N"; blank lines are skipped. The file is taken to
    be complete: turns still open at its end are closed. Raises IngestError only when the
    file cannot be read at all.
    """
    now = _check_now(now)
    converter = HookConverter(policy)
    out = Converted()
    for where, event, reason in iter_json_lines(source):
        if reason is not None:
            out.extend(Converted(problems=[Problem(where, reason)], units=1))
        else:
            out.extend(converter._convert(event, now, where))
    out.extend(converter.close_open())
    return out


def _parse_line(content: bytes | None) -> tuple[object, str | None]:
    if content is None:
        return None, f"line longer than {MAX_LINE_BYTES} bytes"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    try:
        return jsonlimits.loads(text, parse_constant=_refuse_constant), None
    except (ValueError, RecursionError):
        return None, "not JSON"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
