"""The dso_network MCP server, driven by the SDK's own client over stdio.

The server runs as a real subprocess (`python -m fai_net.api.mcp_server --socket PATH`), exactly
as an agent harness would start it. Behind it, a stand-in node serves the control socket
with fai_net.api.control.serve_control in a trio thread, answers canned results and records
every request, so the tests can check what actually reached the node.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest
import trio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from fai_net.api.control import ControlError, UnknownAction, serve_control

REPO = Path(__file__).resolve().parents[2]

CANNED: dict[str, dict[str, Any]] = {
    "status": {
        "peers": 3,
        "library_size": 1234,
        "last_sync": 1763769600500,
        "bytes_sent": 4096,
        "bytes_received": 8192,
    },
    "broadcast": {"experiences_sent": 12, "peers_reached": 3, "batch_id": "bafyreib4a7example"},
    "receive": {"experiences_received": 40, "library_delta": 17},
    "peers": {
        "peers": [
            {
                "node_id": "12D3KooWA",
                "latency_ms": 4.2,
                "reputation": 0.8,
                "last_seen": 1763769500000,
            },
            {"node_id": "12D3KooWB", "latency_ms": None, "reputation": 0.3, "last_seen": None},
        ]
    },
}


class StandInNode:
    """Serves the control socket in a background trio thread with canned answers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stand-in-node", daemon=True)

    async def _handle(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        self.requests.append((action, args))
        if args.get("domain") == "lonely":
            raise ControlError("no_peers", "no peers are connected; nothing was sent")
        if action not in CANNED:
            raise UnknownAction(action)
        return CANNED[action]

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, self.path, self._handle)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "stand-in node did not start"
        assert self._error is None, self._error

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive()
        assert self._error is None, self._error


@pytest.fixture
def sock_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(dir="/tmp", prefix="faim-")
    yield os.path.join(directory, "control.sock")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def node(sock_path: str) -> Iterator[StandInNode]:
    stand_in = StandInNode(sock_path)
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "mcp-server.stderr", "w+") as log:
        yield log


@asynccontextmanager
async def mcp_session(socket_path: str, errlog: TextIO) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "fai_net.api.mcp_server", "--socket", socket_path],
        cwd=str(REPO),
    )
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


def assert_no_crash(log: TextIO) -> None:
    log.seek(0)
    assert "Traceback" not in log.read()


def test_lists_dso_network_with_its_schema(sock_path, server_log):
    async def main() -> None:
        with anyio.fail_after(60):
            async with mcp_session(sock_path, server_log) as session:
                assert "dso_network" in (session.instructions or "")
                tools = (await session.list_tools()).tools
                names = [tool.name for tool in tools]
                assert names == ["dso_network", "recall", "add", "feedback"]
                tool = tools[0]
                schema = tool.input_schema
                assert schema["required"] == ["action"]
                assert schema["additionalProperties"] is False
                props = schema["properties"]
                assert props["action"]["enum"] == ["status", "broadcast", "receive", "peers"]
                assert {"type": "string"} in props["domain"]["anyOf"]
                assert props["domain"]["default"] is None
                assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 50
                assert tool.output_schema is not None and tool.output_schema["type"] == "object"
                description = tool.description or ""
                for word in ("broadcast", "receive", "status", "peers", "before", "after"):
                    assert word in description
                assert "\n        " not in description  # docstring indentation stripped

    anyio.run(main)
    assert_no_crash(server_log)


def test_all_four_actions_return_the_nodes_results(node, sock_path, server_log):
    async def main() -> dict[str, CallToolResult]:
        results = {}
        with anyio.fail_after(60):
            async with mcp_session(sock_path, server_log) as session:
                results["status"] = await session.call_tool("dso_network", {"action": "status"})
                results["broadcast"] = await session.call_tool(
                    "dso_network", {"action": "broadcast", "domain": "coding"}
                )
                results["receive"] = await session.call_tool(
                    "dso_network", {"action": "receive", "domain": "coding"}
                )
                results["receive-10"] = await session.call_tool(
                    "dso_network", {"action": "receive", "domain": "data-analysis", "limit": 10}
                )
                results["peers"] = await session.call_tool("dso_network", {"action": "peers"})
        return results

    results = anyio.run(main)
    for key, result in results.items():
        action = key.split("-")[0]
        assert not result.is_error, text_of(result)
        assert result.structured_content == CANNED[action]
        assert json.loads(text_of(result)) == CANNED[action]  # unstructured copy for old clients
    assert node.requests == [
        ("status", {}),
        ("broadcast", {"domain": "coding"}),
        ("receive", {"domain": "coding", "limit": 50}),
        ("receive", {"domain": "data-analysis", "limit": 10}),
        ("peers", {}),
    ]
    assert_no_crash(server_log)


def call_each_then_status(sock_path, server_log, calls: dict) -> dict[str, CallToolResult]:
    """Each call in one MCP session, then a `status` under "after": the server is still
    alive and well after all of them."""

    async def main() -> dict[str, CallToolResult]:
        with anyio.fail_after(60):
            async with mcp_session(sock_path, server_log) as session:
                out = {
                    name: await session.call_tool("dso_network", args)
                    for name, args in calls.items()
                }
                out["after"] = await session.call_tool("dso_network", {"action": "status"})
                return out

    return anyio.run(main)


def test_bad_calls_are_readable_tool_errors(node, sock_path, server_log):
    calls = {
        "bad domain": {"action": "broadcast", "domain": "Not A Domain!"},
        "missing domain": {"action": "receive"},
        "limit too big": {"action": "receive", "domain": "coding", "limit": 5000},
        "stray domain": {"action": "status", "domain": "coding"},
        "unknown action": {"action": "self-destruct"},
        "node refuses": {"action": "broadcast", "domain": "lonely"},
    }

    results = call_each_then_status(sock_path, server_log, calls)
    for name in calls:
        assert results[name].is_error, name
        assert results[name].structured_content is None, name
    assert "domain must match" in text_of(results["bad domain"])
    assert "Not A Domain!" in text_of(results["bad domain"])
    assert "requires a domain" in text_of(results["missing domain"])
    assert "1..1000" in text_of(results["limit too big"])
    assert "does not take domain" in text_of(results["stray domain"])
    assert "self-destruct" in text_of(results["unknown action"])
    assert "'status', 'broadcast'" in text_of(results["unknown action"])
    refused = text_of(results["node refuses"])
    assert "no_peers" in refused and "no peers are connected" in refused
    assert results["after"].structured_content == CANNED["status"]
    # Only the node's own refusal and the final status got past the MCP server's checks.
    assert node.requests == [("broadcast", {"domain": "lonely"}), ("status", {})]
    assert_no_crash(server_log)


def test_unknown_arguments_are_refused_by_name_with_the_accepted_ones(node, sock_path, server_log):
    calls = {
        "one": {"action": "status", "bogus": 1},
        "two": {"action": "receive", "domain": "coding", "zeta": None, "alpha": "x"},
        "misspelt": {"action": "receive", "domian": "coding"},
    }

    results = call_each_then_status(sock_path, server_log, calls)
    accepts = "it accepts action, domain, limit"
    for name in calls:
        assert results[name].is_error, name
        assert results[name].structured_content is None, name
        assert accepts in text_of(results[name]), name
    assert "dso_network does not take bogus;" in text_of(results["one"])
    assert "dso_network does not take alpha, zeta;" in text_of(results["two"])
    assert "dso_network does not take domian;" in text_of(results["misspelt"])
    assert results["after"].structured_content == CANNED["status"]
    assert node.requests == [("status", {})]  # none of the refused calls reached the node
    assert_no_crash(server_log)


def test_node_not_running_is_a_tool_error_and_a_later_node_is_found(sock_path, server_log):
    stand_in = StandInNode(sock_path)

    async def main() -> tuple[CallToolResult, CallToolResult]:
        with anyio.fail_after(60):
            async with mcp_session(sock_path, server_log) as session:
                down = await session.call_tool("dso_network", {"action": "status"})
                await anyio.to_thread.run_sync(stand_in.start)
                try:
                    up = await session.call_tool("dso_network", {"action": "peers"})
                finally:
                    await anyio.to_thread.run_sync(stand_in.stop)
                return down, up

    down, up = anyio.run(main)
    assert down.is_error
    assert "no FAI node is running" in text_of(down) and sock_path in text_of(down)
    assert not up.is_error and up.structured_content == CANNED["peers"]
    assert stand_in.requests == [("peers", {})]
    assert_no_crash(server_log)
