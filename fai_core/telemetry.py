"""Tool telemetry: the raw material of experience extraction, which never leaves the node.

A harness records one `TelemetryRecord` per tool call (paper eq. 5, plus the fields needed
to tell trajectories apart). Records arrive through this API or as JSON Lines; the format
is specified in docs/telemetry.md. Validation is strict because the records are the one
place raw user data sits: a record that is malformed is refused with its line number
rather than guessed at, and nothing downstream ever needs to look at `input` or `output`
except the outcome classifier in `fai_core.introspection`.

A trajectory is every record of one (task_id, attempt), in time order. Trajectories of
one task are kept in the order their attempts started, which is the order GRPO groups
are cut in (see `fai_core.grpo` and docs/telemetry.md, "Iterations").
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from fai_core import jsonlimits
from fai_core.errors import FaiError
from fai_core.experience import CONTROL_RE, DOMAIN_RE

#: Longest accepted JSONL line, newline excluded. Bounds the memory one bad line can cost.
MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 128
MAX_REWARD = 1e9
#: 9999-12-31T23:59:59Z: later times are certainly unit mistakes (ms or ns for seconds).
MAX_TIME = 253_402_300_799.0
#: How many individual errors a skip-and-count read keeps for the caller to show.
MAX_REPORTED_ERRORS = 100

TOOL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")

FIELDS = ("task_id", "attempt", "domain", "kind", "tool", "input", "output", "reward", "time")
_REQUIRED = frozenset({"task_id", "tool", "input", "output", "reward", "time"})


class TelemetryError(FaiError, ValueError):
    """A telemetry record or line was refused. `line` is 1-based, None for API records."""

    def __init__(self, field: str, detail: str, line: int | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}invalid telemetry {field}: {detail}")
        self.field = field
        self.detail = detail
        self.line = line

    def at_line(self, line: int) -> TelemetryError:
        """The same error located at `line`, so a record check can be reported against
        the JSONL line it came from."""
        return TelemetryError(self.field, self.detail, line)


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise TelemetryError(name, f"must be a string of 1..{MAX_ID_CHARS} characters")
    if CONTROL_RE.search(value) or value != value.strip():
        raise TelemetryError(name, "must not contain control characters or outer spaces")


def _check_json_value(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TelemetryError(name, f"must be a JSON value: {exc}") from None


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TelemetryError(name, "must be a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise TelemetryError(name, f"must be finite and within [{low:g}, {high:g}]")
    return number


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One tool call. Construction validates; invalid values raise TelemetryError.

    `input` and `output` are any JSON values. They are kept only so that the outcome
    classifier can read status fields out of `output`; no extracted pattern, prompt or
    log line ever contains them.
    """

    task_id: str
    tool: str
    input: Any
    output: Any
    reward: float
    time: float
    attempt: str = "0"
    domain: str = "general"
    kind: str | None = None

    def __post_init__(self) -> None:
        _check_id("task_id", self.task_id)
        _check_id("attempt", self.attempt)
        if not isinstance(self.tool, str) or not TOOL_RE.fullmatch(self.tool):
            raise TelemetryError("tool", "must match [A-Za-z][A-Za-z0-9_.:-]{0,63}")
        if not isinstance(self.domain, str) or not DOMAIN_RE.fullmatch(self.domain):
            raise TelemetryError("domain", "must match [a-z0-9-]{1,32}")
        if self.kind is not None and (
            not isinstance(self.kind, str) or not DOMAIN_RE.fullmatch(self.kind)
        ):
            raise TelemetryError("kind", "must be null or match [a-z0-9-]{1,32}")
        object.__setattr__(
            self, "reward", _check_number("reward", self.reward, -MAX_REWARD, MAX_REWARD)
        )
        object.__setattr__(self, "time", _check_number("time", self.time, 0.0, MAX_TIME))
        try:  # one serialisation checks both values (importers make records by the 10k)
            line = self.to_line()
        except (TypeError, ValueError, RecursionError):
            _check_json_value("input", self.input)  # says which field is not JSON
            _check_json_value("output", self.output)
            raise
        if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise TelemetryError("record", f"serialized record exceeds {MAX_LINE_BYTES} bytes")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object in the wire field names (`kind` left out when
        None): the object one JSONL telemetry line holds."""
        out = {name: getattr(self, name) for name in FIELDS}
        if self.kind is None:
            del out["kind"]
        return out

    def to_line(self) -> str:
        """The record as one JSONL line (no newline)."""
        return json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, obj: object) -> TelemetryRecord:
        """A record from a parsed JSON object; raises TelemetryError on unknown or missing
        fields, or any value the record's checks refuse."""
        if not isinstance(obj, dict):
            raise TelemetryError("record", "a line must hold a JSON object")
        unknown = sorted(set(obj) - set(FIELDS))
        if unknown:
            raise TelemetryError("record", f"unknown field(s) {unknown}")
        missing = sorted(_REQUIRED - set(obj))
        if missing:
            raise TelemetryError("record", f"missing field(s) {missing}")
        return cls(**obj)


def parse_line(
    line: str | bytes,
    line_number: int | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> TelemetryRecord:
    """One JSONL line (without its newline) to a record; errors carry `line_number`.

    `defaults` fills fields the line leaves out (an import's `--domain`).
    """
    try:
        if isinstance(line, bytes):
            if len(line) > MAX_LINE_BYTES:
                raise TelemetryError("line", f"longer than {MAX_LINE_BYTES} bytes")
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TelemetryError("line", f"not UTF-8: {exc.reason}") from None
        elif len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise TelemetryError("line", f"longer than {MAX_LINE_BYTES} bytes")
        try:
            obj = jsonlimits.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise TelemetryError("line", f"not JSON: {exc}") from None
        if defaults and isinstance(obj, dict):
            obj = {**defaults, **obj}
        return TelemetryRecord.from_json(obj)
    except TelemetryError as exc:
        raise exc.at_line(line_number) if line_number is not None else exc from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class ReadReport:
    """What a read produced. `skipped` counts refused lines; `errors` keeps the first ones."""

    records: list[TelemetryRecord] = field(default_factory=list)
    skipped: int = 0
    errors: list[TelemetryError] = field(default_factory=list)
    lines: int = 0


def _binary_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, content) per line; content None when the line is over the size limit.

    Reads at most MAX_LINE_BYTES + 1 bytes at a time, so an endless line costs bounded
    memory: its remainder is skipped up to the next newline.
    """
    number = 0
    while True:
        chunk = stream.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if chunk.endswith(b"\n"):
            yield number, chunk[:-1].removesuffix(b"\r")
            continue
        if len(chunk) <= MAX_LINE_BYTES:  # last line, no newline at end of file
            yield number, chunk.removesuffix(b"\r")
            return
        while True:  # oversize: drop the rest of this line
            rest = stream.readline(MAX_LINE_BYTES + 1)
            if not rest or rest.endswith(b"\n"):
                break
        yield number, None
        if not rest:
            return


def iter_jsonl(
    source: str | os.PathLike[str] | IO[bytes] | IO[str],
    *,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[TelemetryRecord]:
    """Stream records from a JSONL file, path or stream. Blank lines are ignored.

    A bad line raises TelemetryError with its 1-based line number, unless `skip_bad`: then
    it is counted in `report.skipped` (and the first MAX_REPORTED_ERRORS kept) and reading
    goes on.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield from iter_jsonl(stream, skip_bad=skip_bad, report=report, defaults=defaults)
        return
    report = report if report is not None else ReadReport()
    stream: IO[bytes]
    if isinstance(source, io.TextIOBase):
        stream = io.BytesIO(source.read().encode("utf-8", "surrogatepass"))
    else:
        stream = source  # type: ignore[assignment]
    for number, content in _binary_lines(stream):
        report.lines = number
        try:
            if content is None:
                raise TelemetryError("line", f"longer than {MAX_LINE_BYTES} bytes", number)
            if not content.strip():
                continue
            record = parse_line(content, number, defaults)
        except TelemetryError as exc:
            if not skip_bad:
                raise
            report.skipped += 1
            if len(report.errors) < MAX_REPORTED_ERRORS:
                report.errors.append(exc)
            continue
        yield record


def read_jsonl(
    source: str | os.PathLike[str] | IO[bytes] | IO[str], *, skip_bad: bool = False
) -> ReadReport:
    """All records of a JSONL source, with the skip count when `skip_bad` is set."""
    report = ReadReport()
    report.records = list(iter_jsonl(source, skip_bad=skip_bad, report=report))
    return report


def write_jsonl(
    records: Iterable[TelemetryRecord], target: str | os.PathLike[str] | IO[str]
) -> int:
    """Write records one per line (UTF-8, LF). Returns the number written."""
    if isinstance(target, str | os.PathLike):
        with open(target, "w", encoding="utf-8", newline="\n") as stream:
            return write_jsonl(records, stream)
    count = 0
    for record in records:
        target.write(record.to_line() + "\n")
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class Trajectory:
    """Every step of one attempt at one task, in time order (ties keep arrival order)."""

    task_id: str
    attempt: str
    steps: tuple[TelemetryRecord, ...]

    @property
    def total_reward(self) -> float:
        """The trajectory return r_i: the plain sum of its step rewards (no discount)."""
        return math.fsum(step.reward for step in self.steps)

    @property
    def start(self) -> float:
        """Time of the first step: attempts at a task are ordered by it."""
        return self.steps[0].time

    @property
    def end(self) -> float:
        """Time of the last step, e.g. for stamping the experiences of a group."""
        return self.steps[-1].time


@dataclass(frozen=True, slots=True)
class TaskTrajectories:
    """All attempts at one task, ordered by start time (ties: by attempt label)."""

    task_id: str
    domain: str
    kind: str | None
    trajectories: tuple[Trajectory, ...]


def group_trajectories(records: Iterable[TelemetryRecord]) -> list[TaskTrajectories]:
    """Records -> tasks -> trajectories. Tasks come out in order of their first record.

    Every record of one task must carry the same domain and kind: a task that claims two
    domains is a harness bug, and guessing would file its pattern under the wrong tag.
    """
    tasks: dict[str, dict[str, list[TelemetryRecord]]] = {}
    labels: dict[str, tuple[str, str | None]] = {}
    for record in records:
        seen = labels.setdefault(record.task_id, (record.domain, record.kind))
        if seen != (record.domain, record.kind):
            raise TelemetryError(
                "task_id",
                f"task {record.task_id!r} has records with (domain, kind) {seen} and "
                f"{(record.domain, record.kind)}",
            )
        tasks.setdefault(record.task_id, {}).setdefault(record.attempt, []).append(record)
    out = []
    for task_id, attempts in tasks.items():
        trajectories = [
            Trajectory(task_id, attempt, tuple(sorted(steps, key=lambda r: r.time)))
            for attempt, steps in attempts.items()
        ]
        trajectories.sort(key=lambda t: (t.start, t.attempt))
        domain, kind = labels[task_id]
        out.append(TaskTrajectories(task_id, domain, kind, tuple(trajectories)))
    return out
