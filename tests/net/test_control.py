"""The control socket: a real trio server on a temporary Unix socket, real clients."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from fai_net.api.control import (
    DEFAULT_MAX_CONNECTIONS,
    MAX_LINE,
    Code,
    ControlClient,
    ControlError,
    ControlSocketInUse,
    ControlStats,
    NodeNotRunning,
    UnknownAction,
    serve_control,
    validate_dso_args,
)


@pytest.fixture
def sock_path() -> Iterator[str]:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(dir="/tmp", prefix="faic-")
    yield os.path.join(directory, "control.sock")
    shutil.rmtree(directory, ignore_errors=True)


class Recorder:
    """A handler with a few behaviours keyed by action; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.release = trio.Event()

    async def __call__(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((action, args))
        if action == "echo":
            return {"action": action, "args": args}
        if action == "refuse":
            raise ControlError("not_member", "this node is not a registry member")
        if action == "crash":
            raise RuntimeError("boom in handler")
        if action == "not_a_dict":
            return [1, 2]  # type: ignore[return-value]
        if action == "unserialisable":
            return {"value": object()}
        if action == "block":
            await self.release.wait()
            return {"released": True}
        if action == "hang":
            await trio.sleep_forever()
        if action == "big":
            return {"blob": "x" * (8 << 20)}
        raise UnknownAction(action)


def run_server(
    path: str,
    handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
    body: Callable[[str], Awaitable[None]],
    **options: Any,
) -> None:
    """Serve `handler` on `path` while `body(path)` runs, then shut the server down.

    `options` are serve_control's keyword arguments (limits, stats).
    """
    serve = functools.partial(serve_control, **options)

    async def main() -> None:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                started = await nursery.start(serve, path, handler)
                assert started == path
                await body(path)
                nursery.cancel_scope.cancel()

    trio.run(main)


def call(path: str, action: str, timeout: float = 5.0, **args: Any) -> Awaitable[dict[str, Any]]:
    """The blocking client, in a worker thread, as the CLI and MCP server would use it."""
    client = ControlClient(path, timeout=timeout)
    return trio.to_thread.run_sync(lambda: client.call(action, **args))


def exchange(path: str, payload: bytes, replies: int) -> tuple[list[dict[str, Any]], bool]:
    """Send raw bytes on one connection; return the reply lines and whether EOF followed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        buffer = b""
        lines: list[dict[str, Any]] = []
        while len(lines) < replies:
            chunk = s.recv(65536)
            if not chunk:
                return lines, True
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append(json.loads(line))
        s.shutdown(socket.SHUT_WR)
        try:
            rest = s.recv(65536)
        except ConnectionResetError:
            rest = b""
        return lines, rest == b""


def raw(path: str, payload: bytes, replies: int) -> Awaitable[tuple[list[dict[str, Any]], bool]]:
    return trio.to_thread.run_sync(exchange, path, payload, replies)


def request(request_id: object, action: str, **args: Any) -> bytes:
    return json.dumps({"id": request_id, "action": action, "args": args}).encode() + b"\n"


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for the server side to reach `condition` (it runs in the same trio loop)."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:  # ECONNRESET: the server closed with our bytes unread
        return b""


async def read_reply(stream: trio.SocketStream) -> dict[str, Any]:
    """The next line the server sends on `stream` (one at a time: tests send one request)."""
    buffer = b""
    with trio.fail_after(5):
        while not buffer.endswith(b"\n"):
            chunk = await _receive(stream)
            assert chunk, f"connection closed after {buffer!r}"
            buffer += chunk
    return json.loads(buffer)


async def assert_closed(stream: trio.SocketStream) -> None:
    with trio.fail_after(5):
        assert await _receive(stream) == b""
    await stream.aclose()


async def connect(path: str, first: bytes = b"") -> trio.SocketStream:
    stream = await trio.open_unix_socket(path)
    if first:
        await stream.send_all(first)
    return stream


# --------------------------------------------------------------------------------------------


def test_good_call_returns_result_and_handler_sees_action_and_args(sock_path):
    handler = Recorder()

    async def body(path: str) -> None:
        result = await call(path, "echo", domain="coding", limit=7)
        assert result == {"action": "echo", "args": {"domain": "coding", "limit": 7}}

    run_server(sock_path, handler, body)
    assert handler.calls == [("echo", {"domain": "coding", "limit": 7})]


def test_several_requests_on_one_connection_answered_in_order(sock_path):
    async def body(path: str) -> None:
        payload = request(1, "echo", n=1) + request("two", "refuse") + request(3, "echo", n=3)
        lines, _ = await raw(path, payload, 3)
        assert lines[0] == {"id": 1, "ok": True, "result": {"action": "echo", "args": {"n": 1}}}
        assert lines[1]["id"] == "two" and lines[1]["ok"] is False
        assert lines[1]["error"]["code"] == "not_member"
        assert lines[2]["id"] == 3 and lines[2]["result"]["args"] == {"n": 3}

    run_server(sock_path, Recorder(), body)


def test_control_error_from_handler_reaches_client_with_code_and_message(sock_path):
    async def body(path: str) -> None:
        with pytest.raises(ControlError) as info:
            await call(path, "refuse")
        assert info.value.code == "not_member"
        assert info.value.message == "this node is not a registry member"

    run_server(sock_path, Recorder(), body)


def test_unknown_action(sock_path):
    async def body(path: str) -> None:
        with pytest.raises(ControlError) as info:
            await call(path, "launch_rockets")
        assert info.value.code == Code.UNKNOWN_ACTION == "unknown_action"
        assert "launch_rockets" in info.value.message

    run_server(sock_path, Recorder(), body)


@pytest.mark.parametrize(
    "line",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b"[1, 2, 3]",
        b'"just a string"',
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting must not crash the parser's caller
        b'{"id": true, "action": "echo", "args": {}}',
        b'{"id": 1.5, "action": "echo", "args": {}}',
        b'{"action": "echo", "args": {}}',
        b'{"id": 1, "args": {}}',
        b'{"id": 1, "action": "", "args": {}}',
        b'{"id": 1, "action": 5, "args": {}}',
        b'{"id": 1, "action": "echo", "args": [1]}',
        b'{"id": 1, "action": "echo", "args": {}, "extra": 1}',
    ],
)
def test_malformed_requests_get_bad_request_and_connection_survives(sock_path, line):
    handler = Recorder()

    async def body(path: str) -> None:
        lines, _ = await raw(path, line + b"\n" + request(9, "echo"), 2)
        assert lines[0]["ok"] is False
        assert lines[0]["error"]["code"] == "bad_request"
        assert lines[1] == {"id": 9, "ok": True, "result": {"action": "echo", "args": {}}}

    run_server(sock_path, handler, body)
    assert handler.calls == [("echo", {})]  # the bad line never reached the handler


def test_blank_lines_are_ignored_and_args_default_to_empty(sock_path):
    async def body(path: str) -> None:
        lines, _ = await raw(path, b"\n  \n" + b'{"id": 4, "action": "echo"}\n', 1)
        assert lines == [{"id": 4, "ok": True, "result": {"action": "echo", "args": {}}}]

    run_server(sock_path, Recorder(), body)


def test_too_large_line_is_refused_and_connection_closed(sock_path):
    handler = Recorder()

    async def body(path: str) -> None:
        # No newline at all: the server must stop buffering past MAX_LINE.
        lines, closed = await raw(path, b"x" * (MAX_LINE + 10), 2)
        assert len(lines) == 1 and closed
        assert lines[0]["error"]["code"] == "too_large" and lines[0]["id"] is None
        # A complete line that is too long, arriving with its newline in the same chunk.
        big = json.dumps({"id": 1, "action": "echo", "args": {"p": "y" * MAX_LINE}}).encode()
        lines, closed = await raw(path, big + b"\n" + request(2, "echo"), 2)
        assert [line["error"]["code"] for line in lines] == ["too_large"] and closed
        # Exactly MAX_LINE bytes is still accepted.
        head = b'{"id": 3, "action": "echo", "args": {"p": "'
        tail = b'"}}'
        exact = head + b"z" * (MAX_LINE - len(head) - len(tail)) + tail
        assert len(exact) == MAX_LINE
        lines, _ = await raw(path, exact + b"\n", 1)
        assert lines[0]["ok"] is True and len(lines[0]["result"]["args"]["p"]) > 1000

    run_server(sock_path, handler, body)
    assert len(handler.calls) == 1


def test_client_refuses_to_send_a_too_large_request(sock_path):
    handler = Recorder()

    async def body(path: str) -> None:
        with pytest.raises(ControlError) as info:
            await call(path, "echo", blob="b" * MAX_LINE)
        assert info.value.code == "too_large"

    run_server(sock_path, handler, body)
    assert handler.calls == []


def test_handler_crash_is_internal_logged_and_server_keeps_serving(sock_path, caplog):
    caplog.set_level(logging.ERROR, logger="fai_net.api.control")

    async def body(path: str) -> None:
        lines, _ = await raw(path, request(1, "crash") + request(2, "echo"), 2)
        assert lines[0]["id"] == 1 and lines[0]["error"]["code"] == "internal"
        assert "boom in handler" in lines[0]["error"]["message"]
        assert lines[1]["ok"] is True
        with pytest.raises(ControlError) as info:
            await call(path, "crash")
        assert info.value.code == "internal"
        assert await call(path, "echo") == {"action": "echo", "args": {}}

    run_server(sock_path, Recorder(), body)
    crashes = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(crashes) == 2
    assert "crash" in crashes[0].getMessage()


@pytest.mark.parametrize("action", ["not_a_dict", "unserialisable"])
def test_bad_handler_results_are_internal_errors(sock_path, action, caplog):
    caplog.set_level(logging.ERROR, logger="fai_net.api.control")

    async def body(path: str) -> None:
        with pytest.raises(ControlError) as info:
            await call(path, action)
        assert info.value.code == "internal"
        assert await call(path, "echo") == {"action": "echo", "args": {}}

    run_server(sock_path, Recorder(), body)
    assert any(r.exc_info for r in caplog.records)


def test_a_slow_request_does_not_block_other_connections(sock_path):
    handler = Recorder()

    async def body(path: str) -> None:
        async with trio.open_nursery() as nursery:
            results: list[dict[str, Any]] = []

            async def slow() -> None:
                results.append(await call(path, "block"))

            nursery.start_soon(slow)
            await trio.sleep(0.05)
            assert await call(path, "echo") == {"action": "echo", "args": {}}
            assert results == []  # still blocked while the other connection was served
            handler.release.set()
        assert results == [{"released": True}]

    run_server(sock_path, handler, body)


def test_client_timeout_is_a_control_error_and_server_survives(sock_path):
    async def body(path: str) -> None:
        with pytest.raises(ControlError) as info:
            await call(path, "hang", timeout=0.2)
        assert info.value.code == "timeout"
        assert await call(path, "echo") == {"action": "echo", "args": {}}

    run_server(sock_path, Recorder(), body)


def test_socket_is_mode_0600_and_removed_on_shutdown(sock_path):
    modes: list[int] = []

    async def body(path: str) -> None:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        modes.append(stat.S_IMODE(st.st_mode))

    old = os.umask(0o000)  # the most permissive umask must not leak into the socket's mode
    try:
        run_server(sock_path, Recorder(), body)
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert not os.path.exists(sock_path)


def test_stale_socket_is_replaced(sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays behind, as after a crash; nothing answers it
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    with pytest.raises(NodeNotRunning):
        ControlClient(sock_path).call("echo")

    async def body(path: str) -> None:
        assert await call(path, "echo") == {"action": "echo", "args": {}}

    run_server(sock_path, Recorder(), body)


def test_second_server_on_a_live_socket_is_refused(sock_path):
    async def body(path: str) -> None:
        with pytest.raises(ControlSocketInUse, match="another process"):
            await serve_control(path, Recorder())
        # The first server is untouched and its socket file still in place.
        assert await call(path, "echo") == {"action": "echo", "args": {}}
        assert stat.S_ISSOCK(os.stat(path).st_mode)

    run_server(sock_path, Recorder(), body)


def test_a_regular_file_at_the_path_is_never_replaced(sock_path):
    with open(sock_path, "w") as f:
        f.write("precious")

    async def main() -> None:
        with trio.fail_after(10):
            await serve_control(sock_path, Recorder())

    with pytest.raises(ControlSocketInUse, match="not a socket"):
        trio.run(main)
    with open(sock_path) as f:
        assert f.read() == "precious"


def test_node_not_running_names_the_path(sock_path):
    with pytest.raises(NodeNotRunning) as info:
        ControlClient(sock_path, timeout=1).call("status")
    assert sock_path in str(info.value)
    assert info.value.path == sock_path


def test_too_long_socket_path_is_refused_up_front():
    long_path = "/tmp/" + "d" * 120 + "/control.sock"
    with pytest.raises(ValueError, match="longer than"):
        ControlClient(long_path)

    async def main() -> None:
        await serve_control(long_path, Recorder())

    with pytest.raises(ValueError, match="longer than"):
        trio.run(main)


class Fatal(BaseException):
    """Stands in for KeyboardInterrupt and friends: must never be swallowed."""


def test_base_exceptions_from_a_handler_propagate(sock_path):
    async def handler(action: str, args: dict[str, Any]) -> dict[str, Any]:
        raise Fatal

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_control, sock_path, handler)
                await trio.to_thread.run_sync(exchange, sock_path, request(1, "x"), 1)
                await trio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(main)
    assert info.value.subgroup(Fatal) is not None
    assert not os.path.exists(sock_path)


# --------------------------------------------------------------------------------------------
# limits: connections, line and idle timeouts, buffered bytes
# --------------------------------------------------------------------------------------------


def test_connections_beyond_the_limit_are_refused_busy_until_a_slot_frees(sock_path):
    stats = ControlStats()
    limit = DEFAULT_MAX_CONNECTIONS
    partial = b'{"id": 1, "act'

    async def body(path: str) -> None:
        holders = [await connect(path, partial) for _ in range(limit)]
        await until(lambda: stats.connections == limit)
        await until(lambda: stats.buffered_bytes == limit * len(partial))
        for _ in range(10):
            extra = await connect(path, partial)
            reply = await read_reply(extra)
            assert reply["id"] is None and reply["error"]["code"] == "busy"
            assert f"already serving {limit} control connections" in reply["error"]["message"]
            await assert_closed(extra)
        # The CLI's client turns the refusal into a ControlError, also when the node closed
        # before a request too big for the socket buffer could be sent (a broken pipe).
        for blob in ("", "b" * 900_000):
            with pytest.raises(ControlError) as info:
                await call(path, "echo", blob=blob)
            assert info.value.code == Code.BUSY == "busy"
            assert "try again shortly" in info.value.message
        assert stats.refused == 12 and stats.connections == limit
        await holders.pop().aclose()
        await until(lambda: stats.connections < limit)
        assert await call(path, "echo") == {"action": "echo", "args": {}}
        for holder in holders:
            await holder.aclose()
        await until(lambda: stats.connections == 0)
        assert stats.buffered_bytes == 0

    run_server(sock_path, Recorder(), body, stats=stats)


def test_a_request_line_is_cut_at_the_line_timeout_even_if_it_trickles(sock_path):
    stats = ControlStats()

    async def body(path: str) -> None:
        stream = await connect(path)
        began = trio.current_time()

        async def trickle() -> None:  # a byte every 50 ms, never a newline
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for byte in b'{"id": 1, "action": "echo", "args": {}' * 10:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            reply = await read_reply(stream)
            nursery.cancel_scope.cancel()
        assert 0.5 <= trio.current_time() - began < 3
        assert reply["id"] is None and reply["error"]["code"] == "timeout"
        assert "not finished within 0.5s" in reply["error"]["message"]
        await assert_closed(stream)
        await until(lambda: stats.connections == 0)
        assert stats.timed_out == 1 and stats.buffered_bytes == 0
        assert await call(path, "echo") == {"action": "echo", "args": {}}

    run_server(sock_path, Recorder(), body, stats=stats, line_timeout=0.5)


def test_idle_time_and_handler_time_do_not_count_against_the_line_timeout(sock_path):
    handler = Recorder()

    async def body(path: str) -> None:
        stream = await connect(path)
        await trio.sleep(0.5)  # idle longer than the line timeout: fine
        await stream.send_all(request(1, "echo"))
        assert (await read_reply(stream))["ok"] is True
        # A partial line pipelined behind a slow request: its clock starts only when the
        # server is done with the request and waits for the rest.
        await stream.send_all(request(2, "block") + b'{"id": 3, "action": "echo"')
        await trio.sleep(0.5)
        handler.release.set()
        assert (await read_reply(stream))["result"] == {"released": True}
        await stream.send_all(b"}\n")
        assert (await read_reply(stream))["id"] == 3
        # Left idle, the connection is closed at the idle timeout, with a word why.
        began = trio.current_time()
        reply = await read_reply(stream)
        assert trio.current_time() - began >= 0.9
        assert reply["error"]["code"] == "timeout" and "idle for 1s" in reply["error"]["message"]
        await assert_closed(stream)

    run_server(sock_path, handler, body, line_timeout=0.3, idle_timeout=1.0)


def test_a_client_that_does_not_read_its_answer_is_dropped(sock_path):
    stats = ControlStats()

    async def body(path: str) -> None:
        stream = await connect(path, request(1, "big"))  # 8 MiB answer, never read
        await until(lambda: stats.timed_out == 1 and stats.connections == 0)
        assert await call(path, "echo") == {"action": "echo", "args": {}}
        await stream.aclose()

    run_server(sock_path, Recorder(), body, stats=stats, line_timeout=0.3)


def test_buffered_bytes_stay_within_the_budget(sock_path):
    stats = ControlStats()
    budget = 3 << 20
    part = 900 << 10  # three fit in the budget, a fourth does not

    async def body(path: str) -> None:
        holders = []
        for held in range(1, 4):
            holders.append(await connect(path, b"x" * part))
            await until(lambda n=held: stats.buffered_bytes == n * part)
        fourth = await connect(path)
        with contextlib.suppress(trio.BrokenResourceError):
            await fourth.send_all(b"x" * part)  # the node hangs up partway
        reply = await read_reply(fourth)
        assert reply["error"]["code"] == "busy" and "unfinished" in reply["error"]["message"]
        await assert_closed(fourth)
        await until(lambda: stats.connections == 3)
        assert stats.buffered_bytes == 3 * part and stats.refused == 1
        assert 3 * part < stats.peak_buffered_bytes <= budget
        # Small requests still fit in what is left.
        assert await call(path, "echo") == {"action": "echo", "args": {}}
        for holder in holders:
            await holder.aclose()
        await until(lambda: stats.connections == 0)
        assert stats.buffered_bytes == 0

    run_server(sock_path, Recorder(), body, stats=stats, max_buffered=budget)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"line_timeout": 0},
        {"idle_timeout": -1.0},
        {"max_buffered": MAX_LINE},
    ],
)
def test_invalid_limits_are_refused_before_binding(sock_path, limits):
    async def main() -> None:
        await serve_control(sock_path, Recorder(), **limits)

    with pytest.raises(ValueError, match=next(iter(limits))):
        trio.run(main)
    assert not os.path.exists(sock_path)


# --------------------------------------------------------------------------------------------
# validate_dso_args
# --------------------------------------------------------------------------------------------


def test_validate_dso_args_accepts_and_normalises():
    assert validate_dso_args("status", {}) == {}
    assert validate_dso_args("peers", {}) == {}
    assert validate_dso_args("broadcast", {"domain": "coding"}) == {"domain": "coding"}
    assert validate_dso_args("receive", {"domain": "data-2"}) == {"domain": "data-2", "limit": 50}
    assert validate_dso_args("receive", {"domain": "x", "limit": 1}) == {"domain": "x", "limit": 1}
    assert validate_dso_args("receive", {"domain": "x", "limit": 1000})["limit"] == 1000
    args = {"domain": "coding"}
    assert validate_dso_args("receive", args) is not args  # a new dict, caller's untouched
    assert args == {"domain": "coding"}


@pytest.mark.parametrize(
    ("action", "args", "code", "needle"),
    [
        ("explode", {}, "unknown_action", "explode"),
        ("", {}, "unknown_action", "expected one of"),
        (None, {}, "unknown_action", "None"),
        (["status"], {}, "unknown_action", "status"),
        ("Status", {}, "unknown_action", "Status"),
        ("status", {"domain": "coding"}, "bad_request", "does not take domain"),
        ("peers", {"limit": 5}, "bad_request", "does not take limit"),
        ("broadcast", {"domain": "coding", "limit": 5}, "bad_request", "limit"),
        ("receive", {"domain": "coding", "foo": 1}, "bad_request", "foo"),
        ("broadcast", {}, "bad_request", "requires a domain"),
        ("receive", {"limit": 5}, "bad_request", "requires a domain"),
        ("broadcast", {"domain": "Coding"}, "bad_request", "domain must match"),
        ("broadcast", {"domain": ""}, "bad_request", "domain must match"),
        ("broadcast", {"domain": "a" * 33}, "bad_request", "domain must match"),
        ("broadcast", {"domain": "co ding"}, "bad_request", "domain must match"),
        ("broadcast", {"domain": 5}, "bad_request", "domain must match"),
        ("broadcast", {"domain": None}, "bad_request", "domain must match"),
        ("receive", {"domain": "coding", "limit": 0}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": 1001}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": -3}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": True}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": "50"}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": 5.0}, "bad_request", "1..1000"),
        ("receive", {"domain": "coding", "limit": None}, "bad_request", "1..1000"),
        ("status", ["not", "a", "mapping"], "bad_request", "object"),
    ],
)
def test_validate_dso_args_refuses(action, args, code, needle):
    with pytest.raises(ControlError) as info:
        validate_dso_args(action, args)
    assert info.value.code == code
    assert needle in info.value.message


def test_deep_nesting_is_refused_before_parsing_even_with_web3s_recursion_limit():
    """web3 (py_ecc) raises the recursion limit to 100,000; json.loads of a few thousand
    brackets then segfaulted the process. The nesting guard refuses such lines unparsed."""
    import sys

    from fai_core.jsonlimits import too_deep
    from fai_net.api.control import MAX_NESTING

    def _too_deep(line: bytes) -> bool:
        return too_deep(line, MAX_NESTING)

    assert sys.getrecursionlimit() >= 1000
    assert _too_deep(b"[" * 5000 + b"]" * 5000)
    assert _too_deep(b'{"a":' * (MAX_NESTING + 1) + b"1" + b"}" * (MAX_NESTING + 1))
    assert not _too_deep(b'{"a":' * MAX_NESTING + b"1" + b"}" * MAX_NESTING)
    # Brackets inside strings, and many siblings, are not nesting.
    assert not _too_deep(b'{"t": "' + b"[" * 500 + b'", "x": [' + b"{}," * 999 + b"{}]}")
    assert not _too_deep(b'{"t": "\\"[[[[' + b"[" * 100 + b'"}')
