"""What every importer of agent traces shares: its output, its rewards, domains and names.

An importer turns one foreign format (OTLP spans, Claude Code hook events, OpenAI Agents
SDK traces) into FAI's own `TelemetryRecord`s plus `SessionEnd` markers. Three rules hold
for all of them, so that a new format cannot weaken them by accident:

* **No user text is kept.** A record's `input` is None and its `output` is the outcome
  class of the call (`Outcome.to_json()`): exit code, HTTP status, a well-known exception
  name, a status word. Prompts, completions, tool arguments and results are read at most
  once, by the outcome classifier, and never stored, not even in the node's spool.
* **Rewards are derived the same way for every format** (`step_reward`, `terminal_reward`;
  docs/telemetry.md, "Rewards of imported traces"): a small penalty per failed tool call,
  and at the end of the session +1/-1 from an explicit feedback score, else from how the
  run ended, else from the last classified tool call.
* **Refusals are per unit** (a span, an event, a line): `Problem(where, reason)`, with a
  short stable reason so that an import can count them per reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from fai_core.errors import FaiError
from fai_core.experience import CONTROL_RE, DOMAIN_RE
from fai_core.introspection import Outcome, classify_output
from fai_core.telemetry import MAX_ID_CHARS, TOOL_RE, TelemetryRecord

#: Reward of one tool call whose outcome class is a failure; successes and unknowns get 0.
STEP_FAILURE_PENALTY = -0.1
#: Reward added to a session's last step: the session succeeded (+) or failed (-).
TERMINAL_REWARD = 1.0
#: Attribute (span, resource, event field) that names a trace's domain or task kind.
DOMAIN_ATTRIBUTE = "fai.domain"
KIND_ATTRIBUTE = "fai.kind"
#: Attribute that names which task a trace attempts (harnesses that retry one task).
TASK_ATTRIBUTE = "fai.task.id"

_TOOL_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


class IngestError(FaiError, ValueError):
    """A whole input was refused (not JSON, truncated protobuf, too large): nothing of it
    is imported. `where` locates the problem when it can be located (else '')."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.where = where


@dataclass(frozen=True, slots=True)
class Problem:
    """One refused unit of an input. `reason` is short and stable (it is counted)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """The end of one trajectory (task_id, attempt), with what the trace says of its fate.

    `failed`: the agent run itself ended in error (True), ended cleanly (False), or the
    trace does not say (None). `feedback`: an explicit score in [-1, 1] from a user or an
    evaluator, which outranks everything else.
    """

    task_id: str
    attempt: str
    failed: bool | None = None
    feedback: float | None = None

    def __post_init__(self) -> None:
        if self.feedback is not None:
            value = self.feedback
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("feedback must be a number in [-1, 1]")
            if not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise ValueError("feedback must be a number in [-1, 1]")

    @property
    def key(self) -> tuple[str, str]:
        """(task_id, attempt): the trajectory this end belongs to, as records name it."""
        return (self.task_id, self.attempt)


@dataclass
class Converted:
    """What an importer made of one input: records, session ends, refusals, and counts."""

    records: list[TelemetryRecord] = field(default_factory=list)
    ends: list[SessionEnd] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: units read (spans, events, lines), whether they became records or not
    units: int = 0
    #: units that are valid but carry no tool call or session boundary (e.g. chat spans)
    ignored: int = 0

    def extend(self, other: Converted) -> None:
        """Add `other`'s records, ends, problems and counts to this one, so an importer can
        convert part by part and report one total."""
        self.records += other.records
        self.ends += other.ends
        self.problems += other.problems
        self.units += other.units
        self.ignored += other.ignored


def step_reward(outcome: Outcome) -> float:
    """The reward of one imported tool call: STEP_FAILURE_PENALTY when its outcome class
    is a failure, else 0, the same for every trace format (see the module doc)."""
    return STEP_FAILURE_PENALTY if outcome.failed else 0.0


def _succeeded(outcome: Outcome) -> bool | None:
    """True/False when the class says how the call went, None when it says nothing."""
    if outcome.failed:
        return False
    return None if outcome.label == "unclassified" else True


def terminal_reward(outcomes: Iterable[Outcome], end: SessionEnd) -> float:
    """The end-of-session reward: feedback, else the run's own fate, else its last word.

    The last classified tool call stands for the result because agents end a task by
    checking it (a test run, a deploy status, a request that now returns 200).
    """
    if end.feedback is not None:
        return TERMINAL_REWARD * float(end.feedback)
    if end.failed is not None:
        return -TERMINAL_REWARD if end.failed else TERMINAL_REWARD
    for outcome in reversed(list(outcomes)):
        verdict = _succeeded(outcome)
        if verdict is not None:
            return TERMINAL_REWARD if verdict else -TERMINAL_REWARD
    return 0.0


def finish_trajectories(
    records: Iterable[TelemetryRecord], ends: Mapping[tuple[str, str], SessionEnd]
) -> list[TelemetryRecord]:
    """Records with each ended trajectory's terminal reward added to its last step.

    Trajectories without an end marker keep their rewards as they are (FAI's own format
    states rewards itself). Order is kept; the last step is the latest in time (ties: the
    last to arrive), as `group_trajectories` orders them.
    """
    records = list(records)
    members: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        key = (record.task_id, record.attempt)
        if key in ends:
            members.setdefault(key, []).append(index)
    for key, indices in members.items():
        indices.sort(key=lambda i: records[i].time)  # stable: ties keep arrival order
        outcomes = [classify_output(records[i].output) for i in indices]
        last = indices[-1]
        bonus = terminal_reward(outcomes, ends[key])
        records[last] = replace(records[last], reward=records[last].reward + bonus)
    return records


def tool_name(name: object) -> str | None:
    """A tool name as patterns may show it ([A-Za-z][A-Za-z0-9_.:-]{0,63}), or None.

    Foreign names may hold '/', spaces or '@' (an MCP server path, 'web search'): those
    become '_'. A name with no letter or digit at all is refused rather than invented.
    """
    if not isinstance(name, str):
        return None
    cleaned = _TOOL_BAD.sub("_", name.strip())[:64]
    if not cleaned or not re.search(r"[A-Za-z0-9]", cleaned):
        return None
    if not cleaned[0].isalpha():
        cleaned = ("t" + cleaned)[:64]
    return cleaned if TOOL_RE.fullmatch(cleaned) else None


def safe_id(value: object) -> str | None:
    """A session, trace or task identifier usable as `task_id`/`attempt`, or None.

    Long or odd identifiers are replaced by a stable hash rather than refused: they only
    need to tell sessions apart, and they never leave the node.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    if (
        len(value) <= MAX_ID_CHARS
        and not CONTROL_RE.search(value)
        and value == value.strip()
        and _utf8(value)  # a lone surrogate (valid in JSON) cannot be stored as text
    ):
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class DomainRule:
    """`attribute=value:domain[/kind]`: traces whose attribute equals value get the domain."""

    attribute: str
    value: str
    domain: str
    kind: str | None = None

    @classmethod
    def parse(cls, text: str) -> DomainRule:
        """A rule from its command-line form, ATTRIBUTE=VALUE:DOMAIN[/KIND]; raises
        ValueError naming the expected form or the bad tag, for the operator to fix."""
        attribute, sep, rest = text.partition("=")
        value, sep2, target = rest.rpartition(":")
        domain, slash, kind = target.partition("/")
        if not (sep and sep2 and attribute and value) or (slash and not kind):
            raise ValueError(f"domain rule {text!r}: expected ATTRIBUTE=VALUE:DOMAIN[/KIND]")
        for label, tag in (("domain", domain), ("kind", kind or None)):
            if tag is not None and not DOMAIN_RE.fullmatch(tag):
                raise ValueError(f"domain rule {text!r}: {label} must match [a-z0-9-]{{1,32}}")
        return cls(attribute, value, domain, kind or None)


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """How a trace gets its domain and kind when it does not carry them.

    Order: the trace's own `fai.domain`/`fai.kind` attributes; else the first rule whose
    attribute matches; else `default` (the import's `--domain`); else "general".
    """

    default: str = "general"
    rules: tuple[DomainRule, ...] = ()

    def __post_init__(self) -> None:
        if not DOMAIN_RE.fullmatch(self.default):
            raise ValueError("default domain must match [a-z0-9-]{1,32}")

    def resolve(self, attributes: Mapping[str, object]) -> tuple[str, str | None]:
        """(domain, kind) for a trace with these attributes (already merged by priority).

        An explicit `fai.domain` that is not a valid tag raises ValueError: guessing would
        file the trace's lessons under a domain nobody asked for.
        """
        domain = attributes.get(DOMAIN_ATTRIBUTE)
        kind = attributes.get(KIND_ATTRIBUTE)
        for name, tag in ((DOMAIN_ATTRIBUTE, domain), (KIND_ATTRIBUTE, kind)):
            if tag is not None and not (isinstance(tag, str) and DOMAIN_RE.fullmatch(tag)):
                raise ValueError(f"{name} must match [a-z0-9-]{{1,32}}")
        if domain is None:
            for rule in self.rules:
                if str(attributes.get(rule.attribute, "\x00")) == rule.value:
                    domain, kind = rule.domain, kind if kind is not None else rule.kind
                    break
        return (domain or self.default), kind  # type: ignore[return-value]


def tool_record(
    *,
    task_id: str,
    attempt: str,
    tool: str,
    outcome: Outcome,
    time: float,
    domain: str,
    kind: str | None,
) -> TelemetryRecord:
    """One imported tool call: no input, the outcome class as output, the step reward."""
    return TelemetryRecord(
        task_id=task_id,
        attempt=attempt,
        tool=tool,
        input=None,
        output=outcome.to_json(),
        reward=step_reward(outcome),
        time=time,
        domain=domain,
        kind=kind,
    )
