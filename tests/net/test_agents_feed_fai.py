"""Real agents feed a real node: OTLP over HTTP from the OpenTelemetry SDK, Claude Code
hook events through `fai hook claude-code`, OpenAI Agents SDK traces through
FaiTracingProcessor, and trace files through `fai experiences import-telemetry`.

Node a runs the OTLP receiver; node b only listens. What a extracts from the traces must
reach b's library through gossip like any other experience, and no prompt, argument or
tool output may ever be written anywhere under a's data directory.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from fai_net.cli.telemetry import claude_code_hook
from tests.support.fleet import ROOT, temporary_fleet, wait_for

SECRET = "sk-live-7f3a9 Ann Smith's prompt"


@pytest.fixture(scope="module")
def fleet():
    with temporary_fleet() as f:
        f.add(
            "a",
            ("coding",),
            seeds=[],
            **{"otlp-port": "0", "telemetry-domain": "coding", "telemetry-idle": "600"},
        )
        f.add("b", ("coding",), seeds=[f["a"].addr])
        wait_for(lambda: f["b"].call("status")["peers"] >= 1, 30, "b to connect to a")
        yield f


def telemetry(node) -> dict:
    return node.call("status")["telemetry"]


def own_texts(node, source_of) -> set[str]:
    items = node.call("export", domain="coding", limit=1000)["items"]
    return {i["text"] for i in items if i["source"] == source_of.info["public_key"]}


def agent_sessions(tracer, n: int = 8, tag: str = "") -> None:
    """n sessions of a coding agent, as the GenAI conventions describe them: even ones
    read before editing and pass their tests, odd ones edit blind and fail."""
    for i in range(n):
        good = i % 2 == 0
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "coder"}
        with tracer.start_as_current_span("invoke_agent coder", attributes=attrs):
            tools = [f"read_file{tag}", "edit_file", "run_tests"] if good else ["edit_file"]
            tools += [] if good else ["run_tests"]
            for tool in tools:
                call = {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": tool,
                    "gen_ai.tool.call.arguments": json.dumps({"path": SECRET}),
                }
                with tracer.start_as_current_span(f"execute_tool {tool}", attributes=call) as s:
                    if tool == "run_tests":
                        s.set_attribute("process.exit.code", 0 if good else 1)
                        if not good:
                            s.set_attribute("error.type", "AssertionError")
                            s.set_status(Status(StatusCode.ERROR))


def tracer_to(processor, service: str = "coder-agent"):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("agent")


def no_secret_under(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_otel_sdk_exporter_feeds_a_node_whose_lessons_reach_another(fleet):
    a, b = fleet["a"], fleet["b"]
    port = a.info["otlp_port"]
    assert isinstance(port, int) and port > 0
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=10)
    provider, tracer = tracer_to(BatchSpanProcessor(exporter, max_export_batch_size=7))
    agent_sessions(tracer)
    assert provider.force_flush(30_000)
    provider.shutdown()

    stats = wait_for(
        lambda: (t := telemetry(a))["experiences"] >= 1 and t, 40, "a to extract experiences"
    )
    assert stats["otlp"]["spans"] == 8 + 4 * 3 + 4 * 2  # roots and tool calls
    assert stats["otlp"]["records"] == 4 * 3 + 4 * 2 and stats["pooled_groups"] == 2
    assert stats["by_domain"] == {"coding": stats["experiences"]}
    mine = own_texts(a, a)
    assert any("read_file" in text and "run_tests" in text for text in mine), mine
    # gossip: b merges what a learnt from its agent, with a as the source
    wait_for(lambda: own_texts(b, a) >= mine, 60, "b to merge a's lessons")
    no_secret_under(a.data_dir)
    assert a.call("status")["telemetry"]["spool"]["steps"] == 0  # all consumed


def test_an_otlp_json_file_as_the_sdk_serialises_it_imports_with_auto(fleet, tmp_path):
    a = fleet["a"]
    memory = InMemorySpanExporter()
    _, tracer = tracer_to(SimpleSpanProcessor(memory), "file-agent")
    agent_sessions(tracer, tag="_v2")
    request = encode_spans(memory.get_finished_spans())
    path = tmp_path / "traces.json"
    path.write_text(json_format.MessageToJson(request))
    cmd = ("experiences", "import-telemetry", str(path), "--json")
    unsubscribed = json.loads(fai(*cmd, node=a).stdout)  # the traces name no domain
    assert unsubscribed["skipped_unsubscribed"] == {"general": unsubscribed["experiences"]}
    report = json.loads(fai(*cmd, "--domain", "coding", node=a).stdout)
    assert report["format"] == "otlp" and report["records"] == 20
    assert report["experiences"] >= 1 and report["added"] == report["experiences"], json.dumps(
        report
    )
    assert report["extraction"]["pooled_groups"] == 2
    assert any("read_file_v2" in t for t in own_texts(a, a))

    before = a.call("status")["library_size"]
    # hostile and broken inputs: clear refusals, nothing imported
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(request.SerializeToString()[:-7])
    bad = fai("experiences", "import-telemetry", str(truncated), "--format", "otlp", node=a)
    assert bad.returncode == 2 and bad.stderr.startswith("fai: error: "), bad.stderr
    empty = tmp_path / "empty.json"
    empty.write_text('{"resourceSpans": []}')
    none = fai("experiences", "import-telemetry", str(empty), node=a)
    assert none.returncode == 2
    deep = tmp_path / "deep.json"
    deep.write_text('{"resourceSpans": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert fai("experiences", "import-telemetry", str(deep), node=a).returncode == 2
    assert a.call("status")["library_size"] == before


def test_strict_refuses_a_file_with_one_bad_span_and_the_default_reports_it(fleet, tmp_path):
    a = fleet["a"]
    memory = InMemorySpanExporter()
    _, tracer = tracer_to(SimpleSpanProcessor(memory))
    agent_sessions(tracer, tag="_v3")
    spans = json.loads(json_format.MessageToJson(encode_spans(memory.get_finished_spans())))
    tool_spans = spans["resourceSpans"][0]["scopeSpans"][0]["spans"]
    tool_spans[0]["endTimeUnixNano"] = "1"  # ends before it starts
    path = tmp_path / "one-bad.json"
    path.write_text(json.dumps(spans))
    before = a.call("status")["library_size"]
    cmd = ("experiences", "import-telemetry", str(path), "--domain", "coding")
    strict = fai(*cmd, "--strict", node=a)
    assert strict.returncode == 2 and "nothing imported" in strict.stderr
    assert a.call("status")["library_size"] == before
    lenient = fai(*cmd, node=a)
    assert lenient.returncode == 0
    assert "1 x " in lenient.stderr and "span 1 (" in lenient.stderr, lenient.stderr


def hook(node, event: object, *extra: str) -> tuple[int, str, str]:
    """One Claude Code hook call, in process (the CLI path is run once, below)."""
    args = argparse.Namespace(
        data_dir=str(node.data_dir),
        config=None,
        domain="coding",
        domain_rule=[],
        recall=0,
        feedback=False,
    )
    for flag in extra:
        if flag == "--feedback":
            args.feedback = True
        elif flag.startswith("--recall="):
            args.recall = int(flag.split("=")[1])
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stderr
    sys.stderr = err
    try:
        code = claude_code_hook(args, stdin=io.BytesIO(raw), stdout=out)
    finally:
        sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def cc(sid: str, name: str, **fields) -> dict:
    return {
        "session_id": sid,
        "transcript_path": f"/home/ann/.claude/projects/shop/{sid}.jsonl",
        "cwd": "/home/ann/src/shop",
        "permission_mode": "default",
        "hook_event_name": name,
        **fields,
    }


def turn(sid: str, good: bool, n: int) -> list[dict]:
    bash = {"command": f"pytest -q  # {SECRET}", "description": "Run the tests"}
    events = [cc(sid, "UserPromptSubmit", prompt=f"{SECRET}: fix the cart total")]
    if good:
        grep = {"stdout": "cart.py:12", "stderr": "", "interrupted": False, "isImage": False}
        events.append(
            cc(sid, "PostToolUse", tool_name="Grep", tool_input={"pattern": SECRET},
               tool_response=grep, tool_use_id=f"toolu_g{n}")
        )  # fmt: skip
    edit = {"filePath": "cart.py", "oldString": "9", "newString": "10"}
    events.append(
        cc(sid, "PostToolUse", tool_name="Edit", tool_input={"file_path": "cart.py"},
           tool_response=edit, tool_use_id=f"toolu_e{n}")
    )  # fmt: skip
    if good:
        out = {"stdout": "4 passed", "stderr": "", "interrupted": False, "isImage": False}
        events.append(
            cc(sid, "PostToolUse", tool_name="Bash", tool_input=bash, tool_response=out,
               tool_use_id=f"toolu_b{n}")
        )  # fmt: skip
    else:
        events.append(
            cc(sid, "PostToolUseFailure", tool_name="Bash", tool_input=bash,
               error=f"Exit code 1\n1 failed: {SECRET}", tool_use_id=f"toolu_b{n}")
        )  # fmt: skip
    events.append(cc(sid, "Stop", stop_hook_active=False, last_assistant_message=SECRET))
    return events


def test_claude_code_hook_events_become_experiences_and_recall_comes_back(fleet):
    a = fleet["a"]
    before = telemetry(a)["experiences"]
    for n in range(8):
        for event in turn(f"sess-{n % 2}", good=n % 2 == 0, n=n):
            code, out, err = hook(a, event)
            assert (code, out, err) == (0, "", ""), err
    wait_for(lambda: telemetry(a)["experiences"] > before, 40, "a to learn from the hook events")
    texts = own_texts(a, a)
    assert any("Grep" in t for t in texts), texts
    no_secret_under(a.data_dir)

    # --recall on the next prompt puts a's lessons in the agent's context ...
    lesson = next(t for t in texts if "Grep" in t)
    sid = "sess-recall"
    prompt = cc(sid, "UserPromptSubmit", prompt=lesson)
    code, out, err = hook(a, prompt, "--recall=3")
    assert code == 0, err
    context = json.loads(out)["hookSpecificOutput"]
    assert context["hookEventName"] == "UserPromptSubmit"
    assert "Grep" in context["additionalContext"]
    # ... and --feedback at Stop reports how the turn went on what was recalled
    ok = {"stdout": "4 passed", "stderr": "", "interrupted": False, "isImage": False}
    passing = cc(sid, "PostToolUse", tool_name="Bash", tool_input={"command": "pytest"},
                 tool_response=ok, tool_use_id="toolu_r1")  # fmt: skip
    assert hook(a, passing)[0] == 0
    assert hook(a, cc(sid, "Stop", stop_hook_active=False), "--feedback")[0] == 0
    found = a.call("recall", task=lesson, k=3)
    assert any(e["utility"] > 0.5 for e in found["experiences"]), found


def test_a_broken_hook_event_never_blocks_the_agent(fleet, tmp_path):
    """The real command, as Claude Code runs it: exit 0 and a message on stderr."""
    a = fleet["a"]
    cmd = [sys.executable, "-m", "fai_net.cli", "hook", "claude-code", "--domain", "coding"]
    for data, expected in (
        (b"{not json", "not JSON"),
        (json.dumps({"hook_event_name": "PostToolUse"}).encode(), "missing"),
        (json.dumps([1, 2]).encode(), "not a JSON object"),
    ):
        proc = subprocess.run(
            [*cmd, "--data-dir", str(a.data_dir)],
            input=data,
            capture_output=True,
            timeout=30,
            cwd=ROOT,
        )
        assert proc.returncode == 0 and proc.stdout == b""
        assert expected in proc.stderr.decode(), proc.stderr
    missing = subprocess.run(
        [*cmd, "--data-dir", str(tmp_path / "nowhere")],
        input=json.dumps(cc("s", "Stop")).encode(),
        capture_output=True,
        timeout=30,
        cwd=ROOT,
    )
    assert missing.returncode == 0 and b"not a node data directory" in missing.stderr


def test_openai_agents_sdk_traces_reach_the_node(fleet):
    pytest.importorskip("agents")
    from agents.tracing import SpanError, function_span, set_trace_provider, trace
    from agents.tracing import setup as tracing_setup
    from agents.tracing.provider import DefaultTraceProvider

    from fai_core.ingest.common import DomainPolicy
    from fai_net.telemetry.openai_agents import FaiTracingProcessor

    a = fleet["a"]
    before = telemetry(a)["experiences"]
    processor = FaiTracingProcessor.for_data_dir(a.data_dir, DomainPolicy("coding"))
    previous = tracing_setup.GLOBAL_TRACE_PROVIDER
    provider = DefaultTraceProvider()
    provider.set_disabled(False)
    provider.set_processors([processor])
    set_trace_provider(provider)
    try:
        for n in range(8):
            with trace(f"Fix bug {n}", metadata={"fai.domain": "coding"}):
                if n % 2 == 0:
                    with function_span("lookup_docs", input=SECRET) as span:
                        span.span_data.output = '{"status": "ok"}'
                with function_span("apply_patch", input=SECRET) as span:
                    if n % 2:
                        span.set_error(SpanError(message="patch failed", data={"exit_code": 1}))
                    else:
                        span.span_data.output = '{"exit_code": 0}'
    finally:
        processor.shutdown()
        provider.set_processors([])
        if previous is not None:
            set_trace_provider(previous)
    wait_for(lambda: telemetry(a)["experiences"] > before, 40, "a to learn from the SDK's traces")
    assert any("lookup_docs" in t for t in own_texts(a, a))
    no_secret_under(a.data_dir)


def fai(*args: str, node) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fai_net.cli", *args, "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_single_attempt_sessions_in_fais_format_yield_experiences(fleet, tmp_path):
    """Real agents run each task once: 8 tasks, one attempt each, still form groups."""
    a = fleet["a"]
    lines = []
    for n in range(8):
        good = n % 2 == 0
        tools = ["lint_sql", "run_query"] if good else ["run_query"]
        for i, tool in enumerate(tools):
            last = i == len(tools) - 1
            output = ("exit code 0" if good else "exit code 1") if last else "ok"
            reward = (1.0 if good else -1.0) if last else 0.0
            lines.append(
                {"task_id": f"q{n}", "domain": "coding", "tool": tool, "input": SECRET,
                 "output": output, "reward": reward, "time": 1_767_225_600.0 + n * 10 + i}
            )  # fmt: skip
    path = tmp_path / "single.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:4]))
    few = fai("experiences", "import-telemetry", str(path), node=a)
    assert few.returncode == 0
    assert "no experiences: 3 single-attempt session(s) wait for comparable ones" in few.stdout
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    full = json.loads(fai("experiences", "import-telemetry", str(path), "--json", node=a).stdout)
    assert full["records"] == 12 and full["extraction"]["tasks"] == 8
    assert full["extraction"]["pooled_groups"] == 2 and full["added"] >= 1
    assert any("lint_sql" in t for t in own_texts(a, a))
    path.write_text("{not json\n" * 3)
    unknown = fai("experiences", "import-telemetry", str(path), node=a)
    assert unknown.returncode == 2 and "does not parse" in unknown.stderr
    broken = fai("experiences", "import-telemetry", str(path), "--format", "fai", node=a)
    assert broken.returncode == 2 and "no tool call could be read" in broken.stderr
    assert "3 x invalid line: not JSON" in broken.stderr, broken.stderr
