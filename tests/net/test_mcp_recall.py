"""The recall, add and feedback MCP tools, the fai_context prompt and resource, end to end.

Two real node processes (open membership, hashing embedder): `a` and `b` follow coding,
b seeded with a. Each gets its own `fai mcp` server, started as an MCP host starts one
(a subprocess on stdio, driven by the SDK's own client session): a's with --data-dir, b's
found through FAI_DATA_DIR. A lesson added through a's server reaches b's library by
gossip or repair, and b's agent recalls it with its source; feedback changes its rank.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent

from fai_net.api.mcp_server import NO_LESSONS, TOOL_NAMES
from tests.support.fleet import ROOT, Fleet

TASK = "the integration tests fail with a database timeout in ci"
#: Two lessons about equally relevant to TASK (hashing embedder: 0.76 and 0.78).
LESSONS = (
    "when the integration tests fail with a database timeout in ci raise the pool size first",
    "when the integration tests fail with a database timeout in ci check for leaked "
    "connections first",
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        # a publishes only when told (dso_network broadcast), never on its own timer.
        f.add("a", ("coding",), seeds=[], **{"broadcast-interval": 3600})
        f.add("b", ("coding",), seeds=[f["a"].addr])
        yield f
    finally:
        running = [n.proc for n in f.nodes.values() if n.proc and n.proc.poll() is None]
        for proc in running:  # both shut down at once
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        f.stop_all()  # reaps whatever is left
        shutil.rmtree(f.root, ignore_errors=True)


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "mcp-servers.stderr", "w+") as log:
        yield log
        log.seek(0)
        assert "Traceback" not in log.read()


@asynccontextmanager
async def fai_mcp(
    errlog: TextIO, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """`fai mcp ARGS` as a host runs it, with the SDK's client session on its stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "fai_net.cli", "mcp", *args],
        env=env,
        cwd=str(ROOT),
    )
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


def test_add_on_a_is_recalled_on_b_with_its_source_and_hurt_feedback_sinks_it(fleet, errlog):
    a, b = fleet["a"], fleet["b"]
    a_id = a.call("info")["node_id"]

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with anyio.fail_after(90):
            async with (
                fai_mcp(errlog, "--data-dir", str(a.data_dir)) as on_a,
                fai_mcp(errlog, env={"FAI_DATA_DIR": str(b.data_dir)}) as on_b,
            ):
                out["added"] = [
                    ok(await on_a.call_tool("add", {"text": text, "domain": "coding"}))
                    for text in LESSONS
                ]
                out["broadcast"] = ok(
                    await on_a.call_tool("dso_network", {"action": "broadcast", "domain": "coding"})
                )

                async def recall_on_b() -> dict[str, Any]:
                    return ok(await on_b.call_tool("recall", {"task": TASK, "domain": "coding"}))

                for _ in range(180):  # b merges them (gossip, or repair within seconds)
                    out["before"] = await recall_on_b()
                    found = {e["text"] for e in out["before"]["experiences"]}
                    if set(LESSONS) <= found:
                        break
                    await anyio.sleep(0.25)
                else:
                    raise AssertionError(f"b never recalled both lessons: {out['before']}")
                top = out["before"]["experiences"][0]
                out["feedback"] = ok(
                    await on_b.call_tool("feedback", {"id": top["id"], "outcome": -0.5})
                )
                out["after"] = await recall_on_b()
                prompt = await on_b.get_prompt("fai_context", {"task": TASK, "domain": "coding"})
                out["prompt"] = [m.content.text for m in prompt.messages]
                uri = f"fai://context/{quote(TASK, safe='')}?domain=coding"
                read = await on_b.read_resource(uri)
                out["resource"] = [c.text for c in read.contents]
                out["resource_type"] = read.contents[0].mime_type
                nothing = await on_b.get_prompt("fai_context", {"task": "zebra quartz violin"})
                out["nothing"] = [m.content.text for m in nothing.messages]
        return out

    out = anyio.run(main)
    assert [r["added"] for r in out["added"]] == [1, 1]
    ids = {text: r["ids"][0] for text, r in zip(LESSONS, out["added"], strict=True)}
    assert out["broadcast"]["experiences_sent"] == 2

    before = {e["text"]: e for e in out["before"]["experiences"]}
    for text in LESSONS:
        lesson = before[text]
        assert lesson["id"] == ids[text]
        assert lesson["source_node"] == a_id and lesson["origin"] != "local"
        assert 0.65 < lesson["relevance"] < 0.9 and lesson["utility"] == 0.5
        assert lesson["sources"] == 1
    relevances = [before[text]["relevance"] for text in LESSONS]
    assert min(relevances) / max(relevances) > 0.9  # about equally relevant
    hurt = out["before"]["experiences"][0]  # the one ranked first gets the bad report
    neutral = before[next(t for t in LESSONS if t != hurt["text"])]
    assert hurt["score"] >= neutral["score"]

    report = out["feedback"]
    # A mild hurt (-0.5, utility 0.42) ranks it down; "hurt" would take it out of recall.
    assert report["id"] == hurt["id"] and report["reward"] == -0.5 and report["reports"] == 1
    assert report["utility"] < 0.5 and report["source"] == hurt["source"]

    after = {e["text"]: e for e in out["after"]["experiences"]}
    order = [e["text"] for e in out["after"]["experiences"]]
    assert order.index(neutral["text"]) < order.index(hurt["text"])
    assert after[hurt["text"]]["score"] < after[neutral["text"]]["score"]
    assert after[hurt["text"]]["utility"] == report["utility"]
    assert after[hurt["text"]]["relevance"] == hurt["relevance"]  # only trust changed

    # The prompt and the resource: the same lessons as text, in the new order, with ids.
    (text,) = out["prompt"]
    assert text.index(neutral["text"]) < text.index(hurt["text"])
    assert text.index(neutral["id"]) < text.index(hurt["id"])
    assert "feedback" in text
    assert out["resource"] == [text] and out["resource_type"] == "text/plain"
    assert out["nothing"] == [NO_LESSONS]


def test_listings_for_a_model_then_bad_calls_are_clear_errors(fleet, errlog, tmp_path):
    """What a host lists (tools with their schemas, the prompt, the template), then every
    kind of bad call on the same server, and a server whose node does not exist."""
    b = fleet["b"]
    long_text = " ".join(["word"] * 40)
    tool_calls = {
        "recall stray": ("recall", {"task": TASK, "bogus": 1}),
        "add stray": ("add", {"text": "x", "domain": "coding", "tags": ["a"]}),
        "feedback stray": ("feedback", {"id": "ab", "outcome": "hurt", "why": "x"}),
        "k too big": ("recall", {"task": TASK, "k": 500}),
        "k not int": ("recall", {"task": TASK, "k": "five"}),
        "max_distance": ("recall", {"task": TASK, "max_distance": 3}),
        "empty task": ("recall", {"task": ""}),
        "recall domain": ("recall", {"task": TASK, "domain": "devops"}),
        "add too long": ("add", {"text": long_text, "domain": "coding"}),
        "add domain": ("add", {"text": "check the logs first", "domain": "devops"}),
        "add quality": ("add", {"text": "check the logs first", "domain": "coding", "quality": 2}),
        "outcome word": ("feedback", {"id": "ab" * 36, "outcome": "great"}),
        "outcome number": ("feedback", {"id": "ab" * 36, "outcome": 2}),
        "unknown id": ("feedback", {"id": "ab" * 36, "outcome": "helped"}),
    }
    expected = {
        "recall stray": "recall does not take bogus; it accepts task, domain, k, max_distance",
        "add stray": "add does not take tags; it accepts text, domain, quality",
        "feedback stray": "feedback does not take why; it accepts id, outcome",
        "k too big": "recall failed (bad_request): k must be an integer in 1..50",
        "k not int": "valid integer",
        "max_distance": "max_distance must be a number in (0, 2]",
        "empty task": "task must be a non-empty text",
        "recall domain": "domain 'devops' is not subscribed",
        "add too long": "add failed (bad_request): text has 40 words, at most 32",
        "add domain": "domain 'devops' is not subscribed (subscribe first)",
        "add quality": "quality must be a number in (0, 1)",
        "outcome word": "outcome must be helped, no_effect, hurt or a reward in [-1, 1]",
        "outcome number": "a reward must be a finite number in [-1, 1]",
        "unknown id": "no experience abab",
    }
    missing = str(tmp_path / "nowhere" / "control.sock")

    async def get_prompt_error(session: ClientSession, arguments: dict) -> str:
        with pytest.raises(MCPError) as caught:
            await session.get_prompt("fai_context", arguments)
        return caught.value.message

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with anyio.fail_after(60):
            async with fai_mcp(errlog, "--data-dir", str(b.data_dir)) as session:
                out["listed"] = (
                    session.instructions,
                    (await session.list_tools()).tools,
                    (await session.list_prompts()).prompts,
                    (await session.list_resource_templates()).resource_templates,
                )
                for name, (tool, args) in tool_calls.items():
                    out[name] = await session.call_tool(tool, args)
                out["prompt stray"] = await get_prompt_error(session, {"task": TASK, "zz": "1"})
                out["prompt k"] = await get_prompt_error(session, {"task": TASK, "k": "lots"})
                out["prompt k range"] = await get_prompt_error(session, {"task": TASK, "k": "99"})
                with pytest.raises(MCPError) as caught:
                    await session.read_resource("fai://context/x?domain=devops")
                out["resource domain"] = caught.value.message
                out["after"] = await session.call_tool("dso_network", {"action": "status"})
            async with fai_mcp(errlog, "--socket", missing) as down:
                out["down"] = await down.call_tool("recall", {"task": TASK})
                out["down prompt"] = await get_prompt_error(down, {"task": TASK})
        return out

    out = anyio.run(main)
    check_listings(*out["listed"])
    for name in tool_calls:
        assert out[name].is_error, name
        assert out[name].structured_content is None, name
        assert expected[name] in text_of(out[name]), (name, text_of(out[name]))
    assert out["prompt stray"] == "fai_context does not take zz; it accepts task, domain, k"
    assert out["prompt k"] == "k must be an integer in 1..50, got 'lots'"
    assert "k must be an integer in 1..50" in out["prompt k range"]
    assert "domain 'devops' is not subscribed" in out["resource domain"]
    assert ok(out["after"])["library_size"] >= 0  # the server took all that in its stride
    assert out["down"].is_error
    assert "no FAI node is running" in text_of(out["down"]) and missing in text_of(out["down"])
    assert "no FAI node is running" in out["down prompt"]


def test_fai_mcp_without_a_node_named_exits_with_usage(tmp_path):
    empty = tmp_path / "fai.toml"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "mcp"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FAI_CONFIG": str(empty)},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "FAI_DATA_DIR or FAI_SOCKET" in proc.stderr and "Traceback" not in proc.stderr


def check_listings(instructions, tools, prompts, templates) -> None:
    for word in ("recall", "feedback", "add", "dso_network"):
        assert word in (instructions or "")
    assert tuple(tool.name for tool in tools) == TOOL_NAMES
    by_name = {tool.name: tool for tool in tools}
    for tool in tools:
        assert tool.input_schema["additionalProperties"] is False, tool.name
        assert "\n        " not in (tool.description or ""), tool.name
    recall = by_name["recall"]
    assert recall.input_schema["required"] == ["task"]
    props = recall.input_schema["properties"]
    assert props["k"]["default"] == 5 and props["k"]["maximum"] == 50
    assert props["task"]["maxLength"] == 4096
    assert recall.annotations is not None and recall.annotations.read_only_hint is True
    for phrase in ("before you start", "id: pass it to feedback", "relevance", "utility"):
        assert phrase in (recall.description or ""), phrase
    add = by_name["add"]
    assert add.input_schema["required"] == ["text", "domain"]
    assert (
        "32 words"
        in (add.description or "") + add.input_schema["properties"]["text"]["description"]
    )
    outcome = by_name["feedback"].input_schema["properties"]["outcome"]
    assert {"type": "string", "enum": ["helped", "no_effect", "hurt"]} in outcome["anyOf"]
    assert {"type": "number", "minimum": -1, "maximum": 1} in outcome["anyOf"]
    (prompt,) = prompts
    assert prompt.name == "fai_context"
    assert [(arg.name, arg.required) for arg in prompt.arguments or []] == [
        ("task", True),
        ("domain", False),
        ("k", False),
    ]
    (template,) = templates
    assert template.uri_template == "fai://context/{task}{?domain}"
