"""FaiTracingProcessor driven by the OpenAI Agents SDK itself: real traces and spans, a
real `Runner.run` with a scripted model, no network (ours is the only processor)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, Runner, function_tool
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.tracing import (
    SpanError,
    agent_span,
    custom_span,
    function_span,
    generation_span,
    guardrail_span,
    set_trace_provider,
    trace,
)
from agents.tracing import setup as tracing_setup
from agents.tracing.provider import DefaultTraceProvider
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from fai_core.ingest.common import Converted, DomainPolicy, DomainRule, SessionEnd
from fai_core.introspection import classify_output
from fai_net.telemetry.openai_agents import FaiTracingProcessor

SECRET = "sk-live-123 for Ann Smith"


@pytest.fixture
def install():
    """A fresh trace provider whose only processor is the one under test.

    Replacing the provider's processors removes the SDK's exporter to OpenAI, so nothing
    leaves the test; `set_disabled(False)` beats OPENAI_AGENTS_DISABLE_TRACING, which the
    provider would otherwise read from the environment.
    """
    previous = tracing_setup.GLOBAL_TRACE_PROVIDER
    provider = DefaultTraceProvider()
    provider.set_disabled(False)
    set_trace_provider(provider)
    yield lambda processor: provider.set_processors([processor])
    provider.set_processors([])
    if previous is not None:
        set_trace_provider(previous)


def collecting(policy: DomainPolicy | None = None, **kwargs: Any):
    got: list[Converted] = []
    return FaiTracingProcessor(got.append, policy, **kwargs), got


def labels(converted: Converted) -> list[tuple[str, str]]:
    return [(r.tool, classify_output(r.output).label) for r in converted.records]


class Scripted(Model):
    """A model that answers from a script: no client, no network."""

    def __init__(self, turns: list[list[Any]]) -> None:
        self.turns = list(turns)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return ModelResponse(output=self.turns.pop(0), usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any):
        raise NotImplementedError


def tool_call(name: str, arguments: dict[str, Any], call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        name=name,
        arguments=json.dumps(arguments),
        call_id=call_id,
        id=f"fc_{call_id}",
        status="completed",
    )


def message(text: str) -> ResponseOutputMessage:
    content = [ResponseOutputText(type="output_text", text=text, annotations=[])]
    return ResponseOutputMessage(
        type="message", id="msg_1", role="assistant", status="completed", content=content
    )


@function_tool
def run_tests(path: str) -> str:
    """Run the test suite under `path`."""
    return f"exit code 1\n1 failed, 3 passed ({SECRET})"


@function_tool
def deploy(env: str) -> str:
    """Deploy to `env`."""
    raise PermissionError(SECRET)


def test_a_runner_run_reaches_the_sink(install):
    processor, got = collecting(DomainPolicy("general"))
    install(processor)
    model = Scripted(
        [
            [
                tool_call("run_tests", {"path": "tests"}, "c1"),
                tool_call("deploy", {"env": "p"}, "c2"),
            ],
            [message("Tests fail and deploy was refused.")],
        ]
    )
    shop = Agent(name="Shop assistant", instructions="help", tools=[run_tests, deploy], model=model)

    async def main() -> None:
        with trace("Fix and deploy", group_id="thread_42", metadata={"fai.domain": "coding"}):
            await Runner.run(shop, f"please fix it, {SECRET}")

    asyncio.run(main())
    [converted] = got
    assert sorted(labels(converted)) == [("deploy", "failed"), ("run_tests", "exit=1 failed")]
    trace_id = converted.records[0].task_id
    assert trace_id.startswith("trace_")
    assert {(r.task_id, r.attempt, r.domain) for r in converted.records} == {
        (trace_id, "0", "coding")
    }
    assert converted.ends == [SessionEnd(trace_id, "0", failed=None)]
    assert converted.problems == []
    assert converted.ignored >= 2  # the SDK's task and turn spans
    assert SECRET not in json.dumps([r.to_json() for r in converted.records])
    stats = processor.stats
    assert (stats.traces, stats.records, stats.ends, stats.errors) == (1, 2, 1, 0)


def test_spans_made_by_hand(install):
    rules = (DomainRule.parse("agent_name=Planner:devops/plan"),)
    processor, got = collecting(DomainPolicy("general", rules))
    install(processor)
    with trace("Plan infra") as current, agent_span("Planner", tools=["terraform"]) as planner:
        with function_span("terraform", input=SECRET) as ok:
            ok.span_data.output = {"exit_code": 0, "stdout": SECRET}  # exported as str(dict)
        with function_span("terraform") as bad:
            bad.set_error(
                SpanError(message="Error running tool", data={"error": "ConnectionRefusedError: x"})
            )
        with custom_span("note", {"text": SECRET}), generation_span(input=[{"c": SECRET}]):
            pass
        planner.set_error(SpanError(message="Max turns exceeded", data={"max_turns": 3}))
    [converted] = got
    assert labels(converted) == [
        ("terraform", "exit=0"),
        ("terraform", "ConnectionRefusedError error"),
    ]
    assert {(r.domain, r.kind) for r in converted.records} == {("devops", "plan")}
    assert converted.ends == [SessionEnd(current.trace_id, "0", failed=True)]
    assert (converted.units, converted.ignored) == (6, 2)


def test_a_tripped_guardrail_fails_the_run(install):
    processor, got = collecting()
    install(processor)
    with trace("Answer"):
        with function_span("search") as call:
            call.span_data.output = "3 results"
        with guardrail_span("no_pii", triggered=True):
            pass
    assert got[0].ends[0].failed is True


def test_spans_are_reduced_when_they_end(install):
    processor, _ = collecting()
    install(processor)
    with trace("Hold"):
        with function_span("lookup", input=SECRET) as call:
            call.span_data.output = SECRET + " not found"
        with generation_span(input=[{"content": SECRET}]):
            pass
        held = json.dumps([(e.trace, list(e.spans)) for e in processor._open.values()])
        assert "lookup" in held and "not-found" in held
        assert SECRET not in held


def test_bounds_drop_the_oldest_and_count(install):
    processor, got = collecting(max_open_traces=2, max_spans=2)
    install(processor)
    first = trace("first")
    first.start()
    with trace("second"):
        with trace("third"), trace("fourth"):  # opening these drops "first", "second"
            for n in range(3):
                with function_span(f"step{n}"):
                    pass
        with function_span("late"):  # its trace was dropped: no partial trajectory
            pass
    first.finish()
    stats = processor.stats
    assert (stats.dropped_traces, stats.dropped_spans) == (2, 2)  # "step0" and "late"
    assert [[r.tool for r in c.records] for c in got] == [["step1", "step2"]]
    assert processor._open == {}


def test_failures_never_reach_the_agent(install, caplog):
    def broken_sink(converted: Converted) -> None:
        raise RuntimeError("spool full")

    processor = FaiTracingProcessor(broken_sink)
    install(processor)
    caplog.set_level(logging.WARNING, logger="fai_net.telemetry.openai_agents")
    for _ in range(3):
        with trace("run"), function_span("t"):
            pass
    processor.on_span_end(None)  # type: ignore[arg-type]  # a broken caller, too
    assert processor.stats.errors == 4
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(logged) == 2  # one per kind of failure and interval
    assert "spool full" not in caplog.text  # exception text may carry user data


def test_shutdown_hands_over_unfinished_traces_without_an_end(install):
    processor, got = collecting()
    install(processor)
    running = trace("long run")
    running.start(mark_as_current=True)
    with function_span("fetch") as call:
        call.span_data.output = "HTTP/1.1 200 OK"
    processor.shutdown()
    running.finish(reset_current=True)  # after the shutdown: nothing more is delivered
    [converted] = got
    assert labels(converted) == [("fetch", "http=200 ok")]
    assert converted.ends == []
    assert processor._open == {}


def test_disabled_tracing_gives_nothing(install):
    processor, got = collecting()
    install(processor)
    from agents.tracing import set_tracing_disabled

    set_tracing_disabled(True)
    with trace("off"), function_span("t"):
        pass
    assert got == [] and processor.stats.spans == 0


def test_for_data_dir_appends_to_the_node_spool(install, tmp_path):
    from fai_net.telemetry.spool import Spool

    processor = FaiTracingProcessor.for_data_dir(tmp_path, DomainPolicy("coding"))
    install(processor)
    with trace("Fix"), function_span("run_tests") as call:
        call.span_data.output = "2 passed"
    processor.shutdown()
    with Spool.open(tmp_path / "telemetry.sqlite") as spool:
        closed = spool.closed(["coding"])
    assert [(r.tool, classify_output(r.output).label) for r in closed.records] == [
        ("run_tests", "passed")
    ]
    assert len(closed.ends) == 1
    with pytest.raises(FileNotFoundError):
        FaiTracingProcessor.for_data_dir(tmp_path / "missing")
