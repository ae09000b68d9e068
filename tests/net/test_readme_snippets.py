"""Every snippet of README's "Use FAI from your agent", run against a real node.

Each fenced block there follows a marker comment ``<!-- snippet: NAME -->``. The node is
started from the `node-run` block (its data directory swapped for a temporary one, and the
hashing embedder instead of MiniLM to keep the test fast); the `mcp-config` JSON is parsed
and its command and args are launched as the MCP server, driven by the SDK's client; the
Python blocks run as scripts with FAI_DATA_DIR naming the node, as a user runs them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from fai_net.api.client import FaiClient
from tests.support.fleet import ROOT, NodeProc

README = ROOT / "README.md"
SECTION = "## Use FAI from your agent"
SNIPPET = re.compile(r"<!-- snippet: ([a-z0-9-]+) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)
#: The data directory the README's snippets name, swapped for the test node's.
README_DATA_DIR = "/tmp/fai-a"
LESSON = (
    "when a test fails in CI but passes locally, compare the CI and local dependency versions first"
)


def section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def snippets() -> dict[str, tuple[str, str]]:
    """name -> (language, code) of the marked blocks of the section."""
    return {name: (lang, code) for name, lang, code in SNIPPET.findall(section())}


def test_every_block_of_the_section_is_a_marked_snippet():
    body = section()
    assert body.count("```") == 2 * len(snippets())  # no unmarked fenced block
    assert set(snippets()) == {
        "node-run",
        "mcp-config",
        "claude-code-hooks",
        "python-sync",
        "python-async",
    }


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProc]:
    lang, code = snippets()["node-run"]
    assert lang == "sh"
    argv = shlex.split(code, comments=True)
    assert argv[:3] == [".venv/bin/fai", "node", "run"], argv
    args = argv[3:]
    assert args[args.index("--data-dir") + 1] == README_DATA_DIR
    root = Path(tempfile.mkdtemp(prefix="fair-", dir="/tmp"))
    data_dir = root / "node"
    args[args.index("--data-dir") + 1] = str(data_dir)
    args += ["--embedder", "hashing", "--metrics-port", "0", "--log-level", "info"]
    proc = NodeProc("readme", data_dir, ("coding",), args)
    try:
        yield proc.start()
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_python(code: str, node: NodeProc, tmp_path: Path) -> str:
    """Run a snippet as a script, with FAI_DATA_DIR naming the node and nothing else set."""
    script = tmp_path / "snippet.py"
    script.write_text(code + "\n")
    empty = tmp_path / "fai.toml"
    empty.write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "FAI_DATA_DIR": str(node.data_dir),
        "FAI_CONFIG": str(empty),
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout


def test_python_sync_snippet_adds_recalls_and_reports(node, tmp_path):
    lang, code = snippets()["python-sync"]
    assert lang == "python" and LESSON in code
    out = run_python(code, node, tmp_path)
    client = FaiClient.from_data_dir(node.data_dir)
    found = client.recall("a test fails in CI but passes locally", domain="coding", k=3)
    top = found["experiences"][0]
    assert top["text"] == LESSON
    assert out.startswith(found["prompt"] + "\n")  # the prompt block, then one line per lesson
    node_id = client.info()["node_id"]
    assert f"{LESSON} (from {node_id})" in out
    assert top["utility"] > 0.5 and top["source_node"] == node_id  # the "helped" report


def test_python_async_snippet_recalls_concurrently(node, tmp_path):
    lang, code = snippets()["python-async"]
    assert lang == "python" and "AsyncFaiClient" in code
    FaiClient.from_data_dir(node.data_dir).add(LESSON, domain="coding")  # harmless if there
    out = run_python(code, node, tmp_path).splitlines()
    size = FaiClient.from_data_dir(node.data_dir).status()["library_size"]
    assert out[0] == f"0 peers, {size} experiences"
    assert f"a test fails in CI but passes locally -> [{LESSON!r}]" in out
    assert "the build is slow after an upgrade -> []" in out


def test_mcp_config_launches_the_server_an_agent_uses(node, tmp_path):
    lang, code = snippets()["mcp-config"]
    assert lang == "json"
    server = json.loads(code)["mcpServers"]["fai"]
    assert set(server) == {"command", "args"}
    assert server["command"].endswith("/.venv/bin/fai")
    args = list(server["args"])
    assert args[:2] == ["mcp", "--data-dir"] and args[2] == README_DATA_DIR
    args[2] = str(node.data_dir)
    command = str(Path(sys.executable).parent / "fai")  # this checkout's .venv/bin/fai
    params = StdioServerParameters(command=command, args=args, cwd=str(tmp_path))
    task = "the integration tests time out against the test database in ci"
    text = "when the integration tests time out against the test database in ci check the pool"

    async def main() -> dict:
        with (
            anyio.fail_after(60),
            open(tmp_path / "stderr", "w+") as errlog,
        ):
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                out = {"tools": [t.name for t in (await session.list_tools()).tools]}
                added = await session.call_tool("add", {"text": text, "domain": "coding"})
                out["added"] = added.structured_content
                recalled = await session.call_tool("recall", {"task": task, "k": 1})
                out["recalled"] = recalled.structured_content
                prompt = await session.get_prompt("fai_context", {"task": task})
                out["prompt"] = prompt.messages[0].content.text
            errlog.seek(0)
            out["stderr"] = errlog.read()
        return out

    out = anyio.run(main)
    assert "Traceback" not in out["stderr"]
    assert {"recall", "add", "feedback", "dso_network"} == set(out["tools"])
    assert out["added"]["added"] == 1
    (top,) = out["recalled"]["experiences"]
    assert top["text"] == text and top["id"] == out["added"]["ids"][0]
    assert text in out["prompt"] and top["id"] in out["prompt"]


def hook_event(sid: str, name: str, **fields) -> dict:
    """A Claude Code hook input as its hooks receive it (claude-agent-sdk's types)."""
    return {
        "session_id": sid,
        "transcript_path": f"/home/ann/.claude/projects/shop/{sid}.jsonl",
        "cwd": "/home/ann/src/shop",
        "permission_mode": "default",
        "hook_event_name": name,
        **fields,
    }


def hook_turn(sid: str, n: int, good: bool) -> list[dict]:
    bash = {"command": "pytest -q", "description": "Run the tests"}
    events = [hook_event(sid, "UserPromptSubmit", prompt="fix the cart total")]
    if good:
        out = {"stdout": "cart.py:12", "stderr": "", "interrupted": False, "isImage": False}
        events.append(
            hook_event(sid, "PostToolUse", tool_name="Grep", tool_input={"pattern": "total"},
                       tool_response=out, tool_use_id=f"toolu_g{n}")
        )  # fmt: skip
        ok = {"stdout": "4 passed", "stderr": "", "interrupted": False, "isImage": False}
        events.append(
            hook_event(sid, "PostToolUse", tool_name="Bash", tool_input=bash,
                       tool_response=ok, tool_use_id=f"toolu_b{n}")
        )  # fmt: skip
    else:
        events.append(
            hook_event(sid, "PostToolUseFailure", tool_name="Bash", tool_input=bash,
                       error="Exit code 1\n1 failed", tool_use_id=f"toolu_b{n}")
        )  # fmt: skip
    events.append(hook_event(sid, "Stop", stop_hook_active=False))
    return events


def test_claude_code_hooks_snippet_feeds_the_node_and_recalls(node, tmp_path):
    """Each configured command is run as Claude Code runs it: through a shell, with the
    event on stdin. Four turns make a group; the node learns; the next prompt gets the
    lesson as context, and the turn's end reports on it."""
    lang, code = snippets()["claude-code-hooks"]
    assert lang == "json"
    hooks = json.loads(code)["hooks"]
    assert set(hooks) == {
        "SessionStart",
        "UserPromptSubmit",
        "PostToolUse",
        "PostToolUseFailure",
        "Stop",
        "SessionEnd",
    }
    commands = {}
    for name, groups in hooks.items():
        (group,) = groups
        (spec,) = group["hooks"]
        assert spec["type"] == "command" and README_DATA_DIR in spec["command"]
        command = spec["command"].replace("/path/to/fai", str(ROOT))
        commands[name] = command.replace(README_DATA_DIR, str(node.data_dir))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}

    def run(event: dict) -> str:
        proc = subprocess.run(
            commands[event["hook_event_name"]],
            shell=True,
            input=json.dumps(event),
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout

    client = FaiClient.from_data_dir(node.data_dir)
    before = client.status()["telemetry"]["experiences"]
    for n in range(4):
        for event in hook_turn(f"s{n % 2}", n, good=n % 2 == 0):
            assert run(event) == "" or event["hook_event_name"] == "UserPromptSubmit"

    def learnt():
        return client.status()["telemetry"]["experiences"] > before

    deadline = time.monotonic() + 40
    while not learnt() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert learnt()
    items = client.call("export", domain="coding", limit=1000)["items"]
    lesson = next(i["text"] for i in items if "Grep" in i["text"])
    context = json.loads(run(hook_event("s9", "UserPromptSubmit", prompt=lesson)))
    assert lesson in context["hookSpecificOutput"]["additionalContext"]
    for event in hook_turn("s9", 9, good=True)[1:]:
        run(event)  # the turn goes well, and Stop reports it on what was recalled
    found = client.recall(lesson, domain="coding", k=1)["experiences"]
    assert found[0]["text"] == lesson and found[0]["utility"] > 0.5
    run(hook_event("s9", "SessionEnd", reason="prompt_input_exit"))
