"""Turning a scored group of trajectories into one shareable pattern, without user data.

Privacy is structural here. Raw telemetry is reduced once, by `view_group`, to a
`GroupView`: tool names, outcome classes, rewards and advantages. Introspectors (the
deterministic one below, the LLM one in `fai_net.telemetry.introspect_http`, or any other) only
ever receive that view, so none of them can copy a user's input or output into a pattern
or a prompt, however it is written.

Outcome classes come from `output` only, and only in forms that cannot carry user text:
integer exit and HTTP codes, exception names from a fixed list of well-known names
(any other `...Error`/`...Exception` name becomes the word "exception", since a custom
class name can itself be user data), and status words from a closed vocabulary.
`input` is never read.
"""

from __future__ import annotations

import builtins
import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fai_core.errors import FaiError
from fai_core.experience import (
    CONTROL_RE,
    MAX_TEXT_BYTES,
    MAX_WORDS,
    normalize_text,
    text_problem,
)
from fai_core.grpo import GroupScore
from fai_core.telemetry import Trajectory

#: How much of a long text output the classifier scans: its head and its tail (tracebacks
#: end with the exception line).
SCAN_CHARS = 32_768

KNOWN_EXCEPTIONS = frozenset(
    {
        name
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    | {
        # Python standard library and common packages
        "JSONDecodeError", "HTTPError", "URLError", "SSLError", "CalledProcessError",
        "TimeoutExpired", "ConnectTimeout", "ReadTimeout", "IntegrityError",
        "OperationalError", "ProgrammingError", "DatabaseError", "ValidationError",
        "ParserError", "EmptyDataError", "MergeError", "UnicodeDecodeError",
        "ModuleNotFoundError", "YAMLError", "ScannerError", "TemplateNotFound",
        # JVM / JavaScript
        "NullPointerException", "IllegalArgumentException", "IllegalStateException",
        "ClassNotFoundException", "IOException", "ReferenceError", "RangeError",
        # infrastructure conditions
        "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "OOMKilled",
        "Evicted", "DeadlineExceeded", "Throttling", "AccessDenied", "NoSuchKey",
    }
)  # fmt: skip

_NAME_RE = re.compile(r"\b[A-Z][A-Za-z0-9]{2,47}\b")
_ERRORISH_RE = re.compile(r"[A-Z][A-Za-z0-9]*(?:Error|Exception)")
_EXIT_RE = re.compile(
    r"\b(?:exit(?:ed)?(?:\s+with)?(?:\s+(?:code|status))?|return\s*code|returncode)"
    r"\s*[:=]?\s*(-?\d{1,3})\b",
    re.IGNORECASE,
)
_HTTP_RE = re.compile(r"\b(?:HTTP/\d(?:\.\d)?|status(?:\s+code)?|HTTP)\s*[:=]?\s*([1-5]\d\d)\b")
_WORD_RE = re.compile(r"[a-z]+")

#: Closed status vocabulary: spelling found in output -> class written in patterns.
STATUS_WORDS = {
    "ok": "ok", "success": "ok", "successful": "ok", "succeeded": "ok", "done": "ok",
    "passed": "passed", "pass": "passed", "failed": "failed", "fail": "failed",
    "failure": "failed", "failing": "failed", "error": "error", "errors": "error",
    "timeout": "timeout", "denied": "denied", "forbidden": "denied",
    "unauthorized": "denied", "conflict": "conflict", "rejected": "rejected",
    "approved": "approved", "resolved": "resolved", "escalated": "escalated",
    "reopened": "reopened", "cancelled": "cancelled", "canceled": "cancelled",
    "skipped": "skipped", "empty": "empty", "partial": "partial", "merged": "merged",
    "deployed": "deployed", "healthy": "healthy", "unhealthy": "unhealthy",
    "degraded": "degraded", "flaky": "flaky", "valid": "valid", "invalid": "invalid",
}  # fmt: skip
_STATUS_PAIRS = {("timed", "out"): "timeout", ("not", "found"): "not-found",
                 ("rolled", "back"): "rolled-back"}  # fmt: skip
#: When several status words occur, the most telling wins (failures before successes).
STATUS_PRIORITY = (
    "timeout", "denied", "not-found", "conflict", "rejected", "invalid", "failed", "error",
    "unhealthy", "degraded", "rolled-back", "cancelled", "reopened", "escalated", "partial",
    "empty", "flaky", "skipped", "passed", "valid", "resolved", "approved", "merged",
    "deployed", "healthy", "ok",
)  # fmt: skip
FAILURE_STATUSES = frozenset(STATUS_PRIORITY[: STATUS_PRIORITY.index("flaky") + 1])

_EXIT_KEYS = ("exit_code", "returncode", "exit_status", "exit")
_HTTP_KEYS = ("status_code", "http_status")
_STATUS_KEYS = ("status", "state", "result", "outcome")
_ERROR_KEYS = ("error", "exception", "error_type", "stderr")
#: An `output` holding this key is an outcome class already reduced by an importer.
OUTCOME_KEY = "fai.outcome"


class IntrospectionError(FaiError):
    """An introspector could not produce a pattern for a group (the group is skipped)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome class of one tool call. Every field is safe to share."""

    exception: str | None = None
    exit_code: int | None = None
    http_status: int | None = None
    status: str | None = None

    @property
    def failed(self) -> bool:
        """True when any field says the call went wrong (an exception, a nonzero exit, an
        HTTP status >= 400, a failure status word): what step rewards penalise."""
        return (
            self.exception is not None
            or (self.exit_code is not None and self.exit_code != 0)
            or (self.http_status is not None and self.http_status >= 400)
            or self.status in FAILURE_STATUSES
        )

    def to_json(self) -> dict[str, Any]:
        """The class alone, as a tool `output` that `classify_output` reads back unchanged.

        Importers of foreign trace formats store this instead of the tool's real output,
        so the telemetry spool on disk holds no user text at all.
        """
        fields = {
            "exception": self.exception,
            "exit_code": self.exit_code,
            "http_status": self.http_status,
            "status": self.status,
        }
        return {OUTCOME_KEY: {k: v for k, v in fields.items() if v is not None}}

    @classmethod
    def from_fields(cls, fields: object) -> Outcome:
        """An Outcome from `to_json`'s inner object; values outside the classes are dropped."""
        if not isinstance(fields, dict):
            return cls()
        exception = fields.get("exception")
        if not isinstance(exception, str) or (
            exception not in KNOWN_EXCEPTIONS and exception != "exception"
        ):
            exception = None
        status = fields.get("status")
        status = status if isinstance(status, str) else None
        return cls(
            exception=exception,
            exit_code=_small_int(fields.get("exit_code"), -128, 255),
            http_status=_small_int(fields.get("http_status"), 100, 599),
            status=status if status in STATUS_PRIORITY else None,
        )

    @property
    def label(self) -> str:
        """A short text of the class (e.g. 'SyntaxError exit=2'), or 'unclassified': what
        the deterministic introspector writes into patterns."""
        parts = [
            self.exception,
            None if self.exit_code is None else f"exit={self.exit_code}",
            None if self.http_status is None else f"http={self.http_status}",
            self.status,
        ]
        return " ".join(p for p in parts if p) or "unclassified"


def _scan(text: str) -> str:
    return text if len(text) <= 2 * SCAN_CHARS else text[:SCAN_CHARS] + "\n" + text[-SCAN_CHARS:]


def _exception_in(text: str) -> str | None:
    generic = False
    for match in _NAME_RE.finditer(text):
        name = match.group(0)
        if name in KNOWN_EXCEPTIONS:
            return name
        generic = generic or bool(_ERRORISH_RE.fullmatch(name))
    return "exception" if generic else None


def _status_in(text: str) -> str | None:
    words = _WORD_RE.findall(text.lower())
    found = {STATUS_WORDS[w] for w in words if w in STATUS_WORDS}
    found |= {_STATUS_PAIRS[p] for p in itertools.pairwise(words) if p in _STATUS_PAIRS}
    return next((s for s in STATUS_PRIORITY if s in found), None)


def _small_int(value: object, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def classify_output(output: Any, *, reduced: bool = True) -> Outcome:
    """The outcome class of a tool's output (see the module doc for what is extracted).

    `reduced=False` for raw tool content (a fetched page, a function's result): there a
    `fai.outcome` key is text like any other, or a tool's output could set its own class.
    """
    if isinstance(output, bool):
        return Outcome(status="ok" if output else "failed")
    if isinstance(output, str):
        text = _scan(output)
        exit_match = _EXIT_RE.search(text)
        http_match = _HTTP_RE.search(text)
        return Outcome(
            exception=_exception_in(text),
            exit_code=_small_int(int(exit_match.group(1)), -128, 255) if exit_match else None,
            http_status=int(http_match.group(1)) if http_match else None,
            status=_status_in(text),
        )
    if not isinstance(output, dict):
        return Outcome()
    if reduced and OUTCOME_KEY in output:
        return Outcome.from_fields(output[OUTCOME_KEY])
    exit_code = next(
        (c for k in _EXIT_KEYS if (c := _small_int(output.get(k), -128, 255)) is not None), None
    )
    http = next(
        (c for k in _HTTP_KEYS if (c := _small_int(output.get(k), 100, 599)) is not None), None
    )
    status = None
    for key in _STATUS_KEYS:
        value = output.get(key)
        if http is None and _small_int(value, 100, 599) is not None:
            http = value
        elif isinstance(value, str) and status is None:
            status = _status_in(_scan(value))
    exception = None
    for key in _ERROR_KEYS:
        value = output.get(key)
        if isinstance(value, str) and value:
            text = _scan(value)
            exception = exception or _exception_in(text)
            status = status or _status_in(text)
    return Outcome(exception, exit_code, http, status)


@dataclass(frozen=True, slots=True)
class StepView:
    """One step as an introspector sees it: the tool, its outcome class and its reward,
    never the tool's input or output."""

    tool: str
    outcome: Outcome
    reward: float


@dataclass(frozen=True, slots=True)
class TrajectoryView:
    """One attempt of a group as an introspector sees it: its steps, return, GRPO
    advantage and whether it succeeded."""

    steps: tuple[StepView, ...]
    total_reward: float
    advantage: float
    success: bool

    @property
    def tools(self) -> tuple[str, ...]:
        """The tools called, in order, for comparing what the best and worst attempt did."""
        return tuple(step.tool for step in self.steps)


@dataclass(frozen=True, slots=True)
class GroupView:
    """Everything an introspector may know about a group. Holds no raw input or output."""

    domain: str
    kind: str | None
    iteration: int
    trajectories: tuple[TrajectoryView, ...]
    best: int
    worst: int
    success_rate: float
    quality: float

    def to_json(self) -> dict[str, Any]:
        """A compact, JSON-ready form (what an LLM introspector puts in its prompt)."""
        return {
            "domain": self.domain,
            "task_kind": self.kind,
            "attempts": [
                {
                    "rank": "best" if i == self.best else "worst" if i == self.worst else "mid",
                    "return": round(t.total_reward, 4),
                    "advantage": round(t.advantage, 3),
                    "success": t.success,
                    "steps": [[s.tool, s.outcome.label, round(s.reward, 4)] for s in t.steps],
                }
                for i, t in enumerate(self.trajectories)
            ],
            "success_rate": self.success_rate,
        }


def view_group(
    trajectories: Sequence[Trajectory],
    score: GroupScore,
    domain: str,
    kind: str | None,
    iteration: int,
    success_threshold: float = 0.0,
) -> GroupView:
    """The privacy boundary: raw trajectories in, a view with outcome classes out."""
    views = tuple(
        TrajectoryView(
            steps=tuple(
                StepView(s.tool, classify_output(s.output), s.reward) for s in trajectory.steps
            ),
            total_reward=score.returns[i],
            advantage=score.advantages[i],
            success=score.returns[i] > success_threshold,
        )
        for i, trajectory in enumerate(trajectories)
    )
    return GroupView(
        domain, kind, iteration, views, score.best, score.worst, score.success_rate, score.quality
    )


@runtime_checkable
class Introspector(Protocol):
    """Writes one pattern (<= 32 words) for a group, or returns None to skip it.

    May raise IntrospectionError; the optimizer then skips the group and counts it.
    """

    def introspect(self, group: GroupView) -> str | None:
        """The lesson the group teaches, as one pattern, or None when there is none worth
        stating (the group is then skipped)."""


def fit_pattern(text: str) -> str | None:
    """`text` normalized and cut to a valid pattern (<= 32 words, <= 1024 bytes), or None."""
    if not isinstance(text, str):
        return None
    cleaned = CONTROL_RE.sub(" ", unicodedata.normalize("NFC", text))
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        return None
    kept: list[str] = []
    size = -1
    for word in normalize_text(cleaned).split(" "):
        size += len(word.encode("utf-8")) + 1
        if not word or len(kept) == MAX_WORDS or size > MAX_TEXT_BYTES:
            break
        kept.append(word)
    result = " ".join(kept)
    return result if result and text_problem(result) is None else None


def _runs(tools: Sequence[str]) -> list[str]:
    """Consecutive repeats folded: (a, a, b) -> ["a x2", "b"]."""
    out: list[tuple[str, int]] = []
    for tool in tools:
        if out and out[-1][0] == tool:
            out[-1] = (tool, out[-1][1] + 1)
        else:
            out.append((tool, 1))
    return [tool if n == 1 else f"{tool} x{n}" for tool, n in out]


def _sequence(tools: Sequence[str], cap: int) -> str:
    runs = _runs(tools)
    if len(runs) > cap:
        runs = [*runs[: cap - 1], "...", runs[-1]] if cap > 1 else [runs[-1]]
    return ", ".join(runs)


def _signature(view: TrajectoryView) -> tuple[tuple[str, str], ...]:
    return tuple((s.tool, s.outcome.label) for s in view.steps)


def _first_failure(view: TrajectoryView) -> StepView:
    return next((s for s in view.steps if s.outcome.failed), view.steps[-1])


class DeterministicIntrospector:
    """Contrasts the best and the worst attempt of a group. Same view, same words.

    The pattern names the task kind (or domain), the tools only the best attempt used
    (and where), the tools only the worst used, and both tool sequences with the outcome
    they ended in (for the worst: its first failing step), e.g.:

    "fix-failing-test: use read_file before edit_file; best run_tests, read_file, edit_file,
    run_tests ended exit=0 passed; worst edit_file, run_tests hit SyntaxError exit=2 invalid"

    How often the group succeeded is left to the quality score, so that the same lesson
    learnt in several groups yields the same text, hence the same experience id. When
    the best and the worst attempt look identical (same tools, same outcome classes) the
    introspector returns None: any explanation would be invented.
    """

    def introspect(self, group: GroupView) -> str | None:
        """The pattern described above, from the best and worst attempt, or None when they
        look identical."""
        best = group.trajectories[group.best]
        worst = group.trajectories[group.worst]
        if not best.steps or not worst.steps:
            return None
        if _signature(best) == _signature(worst):
            return None  # nothing observable differs: any explanation would be invented
        label = group.kind or group.domain
        only_best = list(dict.fromkeys(t for t in best.tools if t not in worst.tools))
        only_worst = list(dict.fromkeys(t for t in worst.tools if t not in best.tools))
        advice = []
        if only_best:
            first = only_best[0]
            later = best.tools[best.tools.index(first) + 1 :]
            after = next((t for t in later if t != first), None)
            advice.append(f"use {', '.join(only_best[:3])}")
            if after is not None and len(only_best) == 1:
                advice[-1] += f" before {after}"
        if only_worst:
            advice.append(f"avoid {', '.join(only_worst[:2])}")
        if not advice:
            advice.append("same tools, order and retries decide")
        failure = _first_failure(worst)
        for cap in (6, 4, 3, 2, 1):
            clauses = [
                f"{label}: {' and '.join(advice)}",
                f"best {_sequence(best.tools, cap)} ended {best.steps[-1].outcome.label}",
                f"worst {_sequence(worst.tools, cap)} hit {failure.outcome.label}"
                + (f" at {failure.tool}" if failure is not worst.steps[-1] else ""),
            ]
            text = normalize_text("; ".join(clauses))
            if len(text.split(" ")) <= MAX_WORDS and len(text.encode()) <= MAX_TEXT_BYTES:
                return text
        return fit_pattern(text)
