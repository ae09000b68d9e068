"""Claude Code hook events: turns, records, ends and refusals, checked against the SDK's
own hook input types so that a renamed event or key in claude-agent-sdk breaks a test."""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from fai_core.ingest.claude_code import (
    CLI_ONLY_EVENTS,
    READS,
    SCHEMAS,
    HookConverter,
    failure_outcome,
    read_hook_events,
    response_outcome,
)
from fai_core.ingest.common import (
    DomainPolicy,
    DomainRule,
    IngestError,
    SessionEnd,
    finish_trajectories,
)
from fai_core.introspection import Outcome, classify_output
from fai_core.telemetry import MAX_LINE_BYTES, group_trajectories

sdk = pytest.importorskip("claude_agent_sdk.types")

#: hook_event_name -> the SDK's TypedDict for it
SDK_INPUTS: dict[str, type] = {
    get_args(get_type_hints(cls)["hook_event_name"])[0]: cls for cls in get_args(sdk.HookInput)
}
#: Events the CLI sends that claude-agent-sdk 0.2.189 has no input type for (keys beyond
#: BaseHookInput, from the CLI's hook input schema).
CLI_ONLY_KEYS = {
    "SessionStart": {"source", "model", "agent_type"},
    "SessionEnd": {"reason"},
    "StopFailure": {"error", "error_details", "last_assistant_message"},
}

NOW = 1_767_225_600.0
SHOP = "/home/ann/src/shop"
SID_A = "0b9e4c6e-55f1-4a53-9a41-8f2b7f0f6a01"
SID_B = "5d1f0f8a-2c3e-4b7a-8d9e-1a2b3c4d5e6f"
SECRETS = ("fix the failing test", "sk-live-123", "raise ValueError", "it is failing upstream")


def ev(sid: str, cwd: str, name: str, **fields: Any) -> dict[str, Any]:
    project = cwd.replace("/", "-")
    return {
        "session_id": sid,
        "transcript_path": f"/home/ann/.claude/projects/{project}/{sid}.jsonl",
        "cwd": cwd,
        "permission_mode": "default",
        "hook_event_name": name,
        **fields,
    }


def bash(command: str) -> dict[str, Any]:
    return {"command": command, "description": "Run a command"}


def post(sid, cwd, tool, tool_input, response, **extra):
    return ev(
        sid,
        cwd,
        "PostToolUse",
        tool_name=tool,
        tool_input=tool_input,
        tool_response=response,
        tool_use_id=f"toolu_{abs(hash((tool, json.dumps(response)))) % 10**8:08d}",
        **extra,
    )


def fail(sid, cwd, tool, tool_input, error, **extra):
    return ev(
        sid,
        cwd,
        "PostToolUseFailure",
        tool_name=tool,
        tool_input=tool_input,
        tool_use_id="toolu_f" + str(len(error)),
        error=error,
        **extra,
    )


def ok_bash(stdout: str, stderr: str = "") -> dict[str, Any]:
    return {"stdout": stdout, "stderr": stderr, "interrupted": False, "isImage": False}


def session_a() -> list[dict[str, Any]]:
    """Three turns: a fixed test, a failed deploy cut short by Esc, an API error."""
    a = SID_A
    return [
        ev(a, SHOP, "SessionStart", source="startup", model="claude-sonnet-4-5"),
        ev(a, SHOP, "UserPromptSubmit", prompt="fix the failing test in tests/test_cart.py"),
        ev(a, SHOP, "PreToolUse", tool_name="Bash", tool_input=bash("pytest -q"),
           tool_use_id="toolu_pre1"),
        fail(a, SHOP, "Bash", bash("pytest -q tests/test_cart.py"),
             "Exit code 1\nFAILED tests/test_cart.py::test_total - AssertionError: assert 9 == 10"
             "\n1 failed, 3 passed in 0.12s"),
        post(a, SHOP, "Read", {"file_path": f"{SHOP}/cart.py"},
             {"type": "text", "file": {"filePath": f"{SHOP}/cart.py",
                                       "content": "raise ValueError('error: failed')",
                                       "numLines": 1, "startLine": 1, "totalLines": 1}},
             duration_ms=3),
        post(a, SHOP, "Edit", {"file_path": f"{SHOP}/cart.py", "old_string": "9",
                               "new_string": "10"},
             {"filePath": f"{SHOP}/cart.py", "oldString": "9", "newString": "10",
              "originalFile": "sk-live-123", "structuredPatch": [], "userModified": False,
              "replaceAll": False}),
        post(a, SHOP, "Bash", bash("pytest -q"),
             ok_bash("4 passed in 0.10s", "warning: error in plugin, it is failing upstream"),
             prompt_id="7f1c"),
        ev(a, SHOP, "Stop", stop_hook_active=False, last_assistant_message="Fixed.",
           background_tasks=[], session_crons=[]),
        ev(a, SHOP, "UserPromptSubmit", prompt="now deploy it"),
        fail(a, SHOP, "Bash", bash("git push prod"),
             "Exit code 128\ngit@prod: Permission denied (publickey)."),
        post(a, SHOP, "WebFetch", {"url": "https://status.example.com", "prompt": "is it up?"},
             {"bytes": 512, "code": 200, "codeText": "OK", "result": "deploys have failed",
              "durationMs": 80, "url": "https://status.example.com"}),
        post(a, SHOP, "mcp__github__create_pull_request", {"title": "deploy"},
             {"content": [{"type": "text", "text": "HTTP 422 Unprocessable: validation failed"}],
              "isError": True}),
        fail(a, SHOP, "Bash", bash("./deploy.sh"),
             "[Request interrupted by user for tool use]", is_interrupt=True),
        ev(a, SHOP, "Notification", message="Claude is waiting for your input",
           notification_type="idle_prompt"),
        ev(a, SHOP, "UserPromptSubmit", prompt="never mind, summarise instead"),
        ev(a, SHOP, "StopFailure", error="rate_limit", error_details="429 Too Many Requests"),
        ev(a, SHOP, "SessionEnd", reason="prompt_input_exit"),
    ]  # fmt: skip


def session_b() -> list[dict[str, Any]]:
    """An --agent session: a call before the first prompt, a sub-agent that times out,
    and a turn left open when the recording ends."""
    b, repo = SID_B, "/srv/infra"
    sub = {"agent_id": "a7c1", "agent_type": "general-purpose"}
    return [
        post(b, repo, "Grep", {"pattern": "TODO"},
             {"mode": "files_with_matches", "numFiles": 2, "filenames": ["a", "b"]},
             agent_type="code-reviewer"),
        ev(b, repo, "UserPromptSubmit", prompt="review the terraform plan"),
        ev(b, repo, "SubagentStart", **sub),
        post(b, repo, "Bash", bash("terraform plan"),
             {"stdout": "", "stderr": "Command timed out after 2m 0.0s", "interrupted": True,
              "isImage": False}, **sub),
        ev(b, repo, "SubagentStop", stop_hook_active=False,
           agent_transcript_path="/tmp/a7c1.jsonl", **sub),
        post(b, repo, "Task", {"description": "plan", "prompt": "run the plan"},
             {"status": "completed", "content": [{"type": "text", "text": "plan timed out"}],
              "totalDurationMs": 120000}, agent_type="code-reviewer"),
        ev(b, repo, "PreCompact", trigger="auto", custom_instructions=None),
    ]  # fmt: skip


def jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _conforms(value: object, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, UnionType):
        return any(_conforms(value, arg) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin is not None:
        return isinstance(value, origin)
    if is_typeddict(hint):
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _hint_type(hint: Any) -> type:
    """The JSON type our schema should declare for an SDK annotation."""
    origin = get_origin(hint)
    if hint is Any:
        return object
    if origin is Literal:
        return type(get_args(hint)[0])
    if origin is not None:
        return origin
    return dict if is_typeddict(hint) else hint


@pytest.mark.parametrize("event", session_a() + session_b(), ids=lambda e: e["hook_event_name"])
def test_recorded_events_follow_the_sdk_types(event):
    name = event["hook_event_name"]
    if name not in SDK_INPUTS:
        allowed = set(get_type_hints(sdk.BaseHookInput)) | {"hook_event_name"}
        assert set(event) <= allowed | CLI_ONLY_KEYS[name]
        return
    cls = SDK_INPUTS[name]
    hints = get_type_hints(cls)
    assert set(event) <= set(hints), f"{name}: keys the SDK does not declare"
    assert cls.__required_keys__ <= set(event), f"{name}: required keys missing"
    for key, value in event.items():
        assert _conforms(value, hints[key]), f"{name}.{key} = {value!r}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_and_reads_match_the_sdk(name):
    schema = SCHEMAS[name]
    assert READS[name] <= set(schema)
    assert not READS[name] & {"tool_input", "prompt", "last_assistant_message"}
    if name in CLI_ONLY_EVENTS:
        # Update SCHEMAS from the SDK's type once it has one (this assert then fails).
        assert name not in SDK_INPUTS
        assert set(get_type_hints(sdk.BaseHookInput)) <= set(schema)
        return
    cls = SDK_INPUTS[name]
    hints = get_type_hints(cls)
    assert set(schema) == set(hints)
    assert {k for k, (_, required) in schema.items() if required} == set(cls.__required_keys__)
    assert {k: t for k, (t, _) in schema.items()} == {k: _hint_type(h) for k, h in hints.items()}


def test_handled_and_ignored_events_are_sdk_event_names():
    sdk_names = {get_args(lit)[0] for lit in get_args(sdk.HookEvent)}
    assert set(SCHEMAS) - CLI_ONLY_EVENTS <= sdk_names
    assert {"PreToolUse", "SubagentStop", "SubagentStart", "Notification"} <= sdk_names


def test_a_recorded_file_becomes_turns_records_and_ends():
    events = session_a() + session_b()
    policy = DomainPolicy("coding", (DomainRule.parse("claude.project=infra:devops/review"),))
    out = read_hook_events(jsonl(events), policy, now=NOW)
    assert out.problems == []
    assert out.units == len(events)
    ignored = {"SessionStart", "PreToolUse", "Notification", "SubagentStart", "SubagentStop",
               "PreCompact"}  # fmt: skip
    assert out.ignored == sum(e["hook_event_name"] in ignored for e in events)
    got = [(r.task_id, r.tool, classify_output(r.output).label, r.domain, r.kind)
           for r in out.records]  # fmt: skip
    assert got == [
        (f"{SID_A}#1", "Bash", "AssertionError exit=1 failed", "coding", None),
        (f"{SID_A}#1", "Read", "ok", "coding", None),
        (f"{SID_A}#1", "Edit", "ok", "coding", None),
        (f"{SID_A}#1", "Bash", "ok", "coding", None),
        (f"{SID_A}#2", "Bash", "exit=128 denied", "coding", None),
        (f"{SID_A}#2", "WebFetch", "http=200", "coding", None),
        (f"{SID_A}#2", "mcp__github__create_pull_request", "http=422 failed", "coding", None),
        (f"{SID_A}#2", "Bash", "cancelled", "coding", None),
        (f"{SID_B}#0", "Grep", "ok", "devops", "review"),
        (f"{SID_B}#1", "Bash", "timeout", "devops", "review"),
        (f"{SID_B}#1", "Task", "ok", "devops", "review"),
    ]
    assert all(r.attempt == "0" and r.time == NOW and r.input is None for r in out.records)
    assert [r.reward for r in out.records] == [-0.1, 0, 0, 0, -0.1, 0, -0.1, -0.1, 0, -0.1, 0]
    assert out.ends == [
        SessionEnd(f"{SID_A}#1", "0"),  # Stop
        SessionEnd(f"{SID_A}#2", "0"),  # next prompt closes the turn Esc cut short
        SessionEnd(f"{SID_A}#3", "0", failed=True),  # StopFailure; SessionEnd adds nothing
        SessionEnd(f"{SID_B}#0", "0"),  # first prompt closes the calls before it
        SessionEnd(f"{SID_B}#1", "0"),  # end of the file
    ]
    # Terminal rewards: turn 1 ended on a passing run, turn 2 on a cancelled deploy.
    finished = finish_trajectories(out.records, {e.key: e for e in out.ends})
    assert finished[3].reward == pytest.approx(1.0)
    assert finished[7].reward == pytest.approx(-1.1)
    group_trajectories(finished)  # one domain per turn, sub-agents included
    lines = "\n".join(r.to_line() for r in out.records)
    assert not any(secret in lines for secret in SECRETS)


def test_one_process_per_event_keeps_turns_in_the_injected_mapping():
    """What `fai hook claude-code` does: a new converter per event, turns on disk."""
    turns: dict[str, int] = {}
    records, ends = [], []
    for event in session_a():
        out = HookConverter(DomainPolicy("coding"), turns).convert(event, NOW)
        assert out.problems == []
        records += out.records
        ends += out.ends
    whole = read_hook_events(jsonl(session_a()), DomainPolicy("coding"), now=NOW)
    assert records == whole.records
    assert turns == {SID_A: 3}
    # No memory across processes: the turn cut short by Esc waits for the spool's idle
    # timeout, and SessionEnd repeats an end that says nothing new.
    assert ends == [
        SessionEnd(f"{SID_A}#1", "0"),
        SessionEnd(f"{SID_A}#3", "0", failed=True),
        SessionEnd(f"{SID_A}#3", "0"),
    ]


def test_a_long_lived_converter_does_not_repeat_an_end():
    converter = HookConverter()
    stop = ev(SID_A, SHOP, "Stop", stop_hook_active=False)
    assert len(converter.convert(stop, NOW).ends) == 1
    again = dict(stop, stop_hook_active=True)
    assert converter.convert(again, NOW).ends == []
    assert converter.convert(ev(SID_A, SHOP, "StopFailure", error="unknown"), NOW).ends == [
        SessionEnd(f"{SID_A}#0", "0", failed=True)
    ]


@pytest.mark.parametrize(
    ("tool", "response", "label"),
    [
        ("Bash", ok_bash("3 failed"), "ok"),  # success event: stdout is content
        ("Bash", {**ok_bash(""), "interrupted": True}, "cancelled"),
        ("Bash", {**ok_bash("", "Command timed out after 2m"), "interrupted": True}, "timeout"),
        ("Bash", {**ok_bash(""), "returnCodeInterpretation": "No matches found"}, "ok"),
        ("mcp__db__query", {"status_code": 503, "result": "fine"}, "http=503"),
        ("mcp__db__query", {"status": "failed"}, "failed"),
        ("mcp__db__query", {"isError": True, "content": "KeyError: 'x'"}, "KeyError"),
        ("mcp__db__query", [{"type": "text", "text": "done", "is_error": True}], "error"),
        ("mcp__db__query", [{"type": "text", "text": "rows: 3"}], "ok"),
        ("WebFetch", {"code": 404, "result": "page"}, "http=404"),
        ("Other", {"code": 404}, "ok"),
        ("Other", "Traceback ... ValueError", "ok"),
        ("Other", None, "ok"),
    ],
)
def test_success_classes(tool, response, label):
    outcome = response_outcome(tool, response)
    assert outcome.label == label
    assert classify_output(outcome.to_json()) == outcome


@pytest.mark.parametrize(
    ("error", "interrupt", "label"),
    [
        ("Exit code 2\nModuleNotFoundError: x", False, "ModuleNotFoundError exit=2"),
        ("Request failed with status code 404", False, "http=404 failed"),
        ("File has not been read yet. Read it first.", False, "error"),
        ("Exit code 1\n3 passed", False, "exit=1 passed"),
        ("whatever", True, "cancelled"),
    ],
)  # fmt: skip
def test_failure_classes(error, interrupt, label):
    outcome = failure_outcome(error, interrupt)
    assert outcome.label == label
    assert outcome.failed


BAD = [
    ([1, 2], "not a JSON object"),
    ({"session_id": SID_A}, "missing hook_event_name"),
    ({**ev(SID_A, SHOP, "Stop")}, "missing stop_hook_active"),
    (ev(SID_A, SHOP, "Stop", stop_hook_active="no"), "stop_hook_active has the wrong type"),
    ({k: v for k, v in post(SID_A, SHOP, "Bash", {}, {}).items() if k != "tool_response"},
     "missing tool_response"),
    (post(SID_A, SHOP, "Bash", "pytest", {}), "tool_input has the wrong type"),
    (post(SID_A, SHOP, "Bash", {}, {}, duration_ms=True), "duration_ms has the wrong type"),
    (post(SID_A, SHOP, "///", {}, {}), "bad tool_name"),
    (post(" ", SHOP, "Bash", {}, {}), "bad session_id"),
    ({k: v for k, v in ev(SID_A, SHOP, "UserPromptSubmit").items()}, "missing prompt"),
    (ev(SID_A, SHOP, "SessionEnd"), "missing reason"),
    ({**fail(SID_A, SHOP, "Bash", {}, "x"), "cwd": 7}, "cwd has the wrong type"),
]  # fmt: skip


@pytest.mark.parametrize(("event", "reason"), BAD, ids=[r for _, r in BAD])
def test_malformed_events_are_problems_and_change_nothing(event, reason):
    turns = {SID_A: 4}
    converter = HookConverter(DomainPolicy(), turns)
    out = converter.convert(event, NOW)
    assert [p.reason for p in out.problems] == [reason]
    assert (out.records, out.ends, out.units, out.ignored) == ([], [], 1, 0)
    assert turns == {SID_A: 4}
    assert converter.close_open().ends == []


def test_ignored_events_are_not_read():
    # An event this module does not handle is counted whatever it holds.
    out = HookConverter().convert({"hook_event_name": "FileChanged", "path": 3}, NOW)
    assert (out.ignored, out.problems) == (1, [])


class Tripwire(dict):
    def _boom(self, *args, **kwargs):
        raise AssertionError("tool_input was read")

    __getitem__ = get = keys = items = values = __iter__ = __len__ = __contains__ = _boom


def test_tool_input_is_never_read():
    event = post(SID_A, SHOP, "Bash", Tripwire(command="rm -rf /"), ok_bash("done"))
    out = HookConverter().convert(event, NOW)
    assert [classify_output(r.output).label for r in out.records] == ["ok"]


def test_domain_attributes():
    seen = []

    class Spy(DomainPolicy):
        def resolve(self, attributes):
            seen.append(dict(attributes))
            return super().resolve(attributes)

    HookConverter(Spy()).convert(post(SID_A, "/w/shop/", "Bash", {}, {}), NOW)
    HookConverter(Spy()).convert(
        post(SID_A, "C:\\src\\shop", "Bash", {}, {}, agent_type="ops"), NOW
    )
    HookConverter(Spy()).convert(
        post(SID_A, SHOP, "Bash", {}, {}, agent_type="ops", agent_id="a1"), NOW
    )
    assert seen == [
        {"cwd": "/w/shop/", "claude.project": "shop"},
        {"cwd": "C:\\src\\shop", "claude.project": "shop", "claude.agent_type": "ops"},
        {"cwd": SHOP, "claude.project": "shop"},  # a sub-agent's type is not the turn's
    ]


def test_long_session_ids_are_hashed_stably():
    sid = "s" * 300
    out = HookConverter().convert(post(sid, SHOP, "Bash", {}, ok_bash("")), NOW)
    again = HookConverter().convert(post(sid, SHOP, "Bash", {}, ok_bash("")), NOW)
    assert out.records[0].task_id.startswith("h:")
    assert out.records[0].task_id == again.records[0].task_id


def test_bad_lines_of_a_file_are_located_and_the_rest_imported(tmp_path):
    good = jsonl(session_a()[:5])
    data = (
        good[: good.index(b"\n") + 1]
        + b"not json\n"
        + b"\xff\xfe{}\n"
        + b"   \n"
        + b'{"a": NaN}\n'
        + b"x" * (MAX_LINE_BYTES + 5)
        + b"\n"
        + good[good.index(b"\n") + 1 :]
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    out = read_hook_events(path, now=NOW)
    assert [(p.where, p.reason) for p in out.problems] == [
        ("line 2", "not JSON"),
        ("line 3", "not UTF-8"),
        ("line 5", "not JSON"),
        ("line 6", f"line longer than {MAX_LINE_BYTES} bytes"),
    ]
    assert [r.tool for r in out.records] == ["Bash", "Read"]
    assert out.ends == [SessionEnd(f"{SID_A}#1", "0")]  # the file is complete
    assert out.units == 9


def test_an_unreadable_file_is_refused_whole(tmp_path):
    with pytest.raises(IngestError) as info:
        read_hook_events(tmp_path / "missing.jsonl")
    assert info.value.where.endswith("missing.jsonl")


@pytest.mark.parametrize("now", [-1.0, float("nan"), 1e12])
def test_a_bad_clock_is_a_caller_error(now):
    with pytest.raises(ValueError, match=r"^now must be finite and within \[0, "):
        HookConverter().convert(ev(SID_A, SHOP, "Stop", stop_hook_active=False), now)
    with pytest.raises(TypeError, match=r"^now must be a number of seconds since the Unix epoch$"):
        HookConverter().convert({}, "now")  # type: ignore[arg-type]


def test_outcome_round_trip_keeps_no_text():
    outcome = failure_outcome("Exit code 1\nsk-live-123 FileNotFoundError", False)
    assert outcome == Outcome(exception="FileNotFoundError", exit_code=1)
    assert "sk-live" not in json.dumps(outcome.to_json())
