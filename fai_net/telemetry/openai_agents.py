"""A tracing processor that feeds an OpenAI Agents SDK agent's tool calls to a FAI node.

    from agents.tracing import add_trace_processor
    add_trace_processor(FaiTracingProcessor.for_data_dir("~/.fai", DomainPolicy("support")))

The SDK calls a processor synchronously from the agent's own code, so this one must cost
little and never fail the agent: every hook catches everything, counts it in `stats` and
logs at a bounded rate. Each span is reduced when it ends (`slim_span`): what is held
until its trace ends is the tool's name and its outcome class, never its input, output,
prompt or completion. When a trace ends it is converted (`convert_trace`) and handed to
the sink, by default the node's telemetry spool.

Memory is bounded: at most `max_open_traces` traces wait for their end and at most
`max_spans` used spans per trace are kept; past either bound the oldest is dropped and
counted (`dropped_traces`, `dropped_spans`). A dropped trace stays dropped: spans that
still arrive for it are counted, not delivered as a partial trajectory.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.tracing import Span, Trace, TracingProcessor

from fai_core.ingest.common import Converted, DomainPolicy
from fai_core.ingest.openai_agents import convert_trace, slim_span
from fai_net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_OPEN_TRACES = 64
MAX_SPANS_PER_TRACE = 2_000

Sink = Callable[[Converted], object]


@dataclass
class _Pending:
    trace: dict[str, Any] | None
    spans: deque[dict[str, Any]]
    ignored: int = 0


@dataclass
class TracingStats:
    """What a processor did, counted because its hooks never raise: the only way to see
    lost or refused data is to read these."""

    traces: int = 0
    spans: int = 0
    records: int = 0
    ends: int = 0
    problems: int = 0
    dropped_traces: int = 0
    dropped_spans: int = 0
    #: exceptions caught in a hook (ours or the sink's): the data of that trace is lost
    errors: int = 0
    problem_reasons: dict[str, int] = field(default_factory=dict)


class FaiTracingProcessor(TracingProcessor):
    """Collects each trace's spans and hands the converted trace to `sink` at its end."""

    def __init__(
        self,
        sink: Sink,
        policy: DomainPolicy | None = None,
        *,
        max_open_traces: int = MAX_OPEN_TRACES,
        max_spans: int = MAX_SPANS_PER_TRACE,
        log_interval_s: float = 60.0,
    ) -> None:
        if max_open_traces < 1 or max_spans < 1:
            raise ValueError("max_open_traces and max_spans must be at least 1")
        self._sink = sink
        self._policy = policy if policy is not None else DomainPolicy()
        self._max_open = max_open_traces
        self._max_spans = max_spans
        self._open: OrderedDict[str, _Pending] = OrderedDict()
        self._dropped: OrderedDict[str, None] = OrderedDict()  # recently evicted traces
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log, log_interval_s)
        self._closers: list[Callable[[], object]] = []
        self.stats = TracingStats()

    @classmethod
    def for_data_dir(
        cls, data_dir: str | Path, policy: DomainPolicy | None = None, **kwargs: Any
    ) -> FaiTracingProcessor:
        """A processor that appends to the node's spool, `<data_dir>/telemetry.sqlite`.

        The spool is shared with the node and other writers (SQLite, WAL); the node need
        not be running. Spans from any thread go through one connection, in turn.
        """
        from fai_net.telemetry.spool import SpoolWriter

        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"no FAI data directory at {directory}")
        writer = SpoolWriter(directory / "telemetry.sqlite")
        processor = cls(writer, policy, **kwargs)
        processor._closers.append(writer.close)
        return processor

    # The SDK's hooks. Each one is a guarded call into its `_` twin.

    def on_trace_start(self, trace: Trace) -> None:
        """Open the trace's entry and keep its metadata (which may name the domain and
        task) until the trace ends."""
        self._guard("trace_start", self._trace_start, trace)

    def on_trace_end(self, trace: Trace) -> None:
        """Convert the trace's kept spans and hand them to the sink, with its end marker."""
        self._guard("trace_end", self._trace_end, trace)

    def on_span_start(self, span: Span[Any]) -> None:
        """Nothing to do: a span is read when it ends, with its result and error."""

    def on_span_end(self, span: Span[Any]) -> None:
        """Reduce the span to its tool and outcome class and keep that until its trace ends."""
        self._guard("span_end", self._span_end, span)

    def force_flush(self) -> None:
        """Nothing is queued: a trace is handed to the sink as soon as it ends."""

    def shutdown(self, timeout: float | None = None) -> None:
        """Hand over the traces that never ended (records without an end marker: the spool
        closes them when idle), then release the sink."""
        del timeout
        with self._lock:
            pending = list(self._open.items())
            self._open.clear()
        for trace_id, entry in pending:
            self._guard("shutdown", self._deliver, trace_id, entry, False)
        for close in self._closers:
            self._guard("close", close)

    def _guard(self, where: str, func: Callable[..., object], *args: object) -> None:
        try:
            func(*args)
        except Exception as exc:  # the agent must never see our failures
            with self._lock:
                self.stats.errors += 1
            self._log.warning(
                f"error:{where}", "FAI tracing processor: %s failed: %s", where, type(exc).__name__
            )

    def _entry(self, trace_id: str) -> _Pending:
        """The pending entry of `trace_id` (lock held), opening one and evicting the
        oldest open trace when there are too many."""
        entry = self._open.get(trace_id)
        if entry is None:
            entry = self._open[trace_id] = _Pending(None, deque(maxlen=self._max_spans))
            while len(self._open) > self._max_open:
                evicted, _ = self._open.popitem(last=False)
                self._dropped[evicted] = None
                if len(self._dropped) > 4 * self._max_open:
                    self._dropped.popitem(last=False)
                self.stats.dropped_traces += 1
                self._log.warning(
                    "dropped_trace", "FAI tracing processor: too many open traces, dropped one"
                )
        return entry

    def _trace_start(self, trace: Trace) -> None:
        exported = trace.export()
        if exported is None:  # tracing disabled: a no-op trace
            return
        with self._lock:
            self._entry(trace.trace_id).trace = exported

    def _span_end(self, span: Span[Any]) -> None:
        exported = span.export()
        if exported is None:
            return
        slim = slim_span(exported)
        with self._lock:
            self.stats.spans += 1
            if span.trace_id in self._dropped:
                self.stats.dropped_spans += 1
                return
            entry = self._entry(span.trace_id)
            if slim is None:
                entry.ignored += 1
                return
            if len(entry.spans) == entry.spans.maxlen:
                self.stats.dropped_spans += 1
            entry.spans.append(slim)

    def _trace_end(self, trace: Trace) -> None:
        exported = trace.export()
        if exported is None:
            return
        with self._lock:
            entry = self._open.pop(trace.trace_id, None)
            if trace.trace_id in self._dropped:  # dropped while open: stays dropped
                del self._dropped[trace.trace_id]
                return
        entry = entry or _Pending(None, deque())
        entry.trace = exported  # metadata may have changed since the start
        self._deliver(trace.trace_id, entry, True)

    def _deliver(self, trace_id: str, entry: _Pending, ended: bool) -> None:
        trace = entry.trace or {"id": trace_id, "workflow_name": "", "metadata": None}
        converted = convert_trace(trace, list(entry.spans), self._policy)
        converted.units += entry.ignored
        converted.ignored += entry.ignored
        if not ended:
            converted.ends.clear()
        with self._lock:
            self.stats.traces += 1
            self.stats.records += len(converted.records)
            self.stats.ends += len(converted.ends)
            self.stats.problems += len(converted.problems)
            for problem in converted.problems:
                reasons = self.stats.problem_reasons
                reasons[problem.reason] = reasons.get(problem.reason, 0) + 1
        if converted.problems:
            self._log.warning(
                "problems",
                "FAI tracing processor: %d span(s) of a trace refused, first: %s",
                len(converted.problems),
                converted.problems[0].reason,
            )
        if converted.records or converted.ends:
            self._sink(converted)
