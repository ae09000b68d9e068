"""The node's local control interface: newline-delimited JSON over a Unix domain socket.

A running node is a long-lived trio process; the `fai` command line and the MCP server are
short-lived or separate processes that need to ask it things ("status", "broadcast now").
A Unix socket keeps that channel off the network entirely, and its file mode (0600) is the
whole authentication story: only the user who runs the node can connect. No token to leak,
no port to firewall.

Protocol, one JSON object per line in each direction (lines at most `MAX_LINE` bytes):

    request   {"id": 7, "action": "status", "args": {}}
    response  {"id": 7, "ok": true, "result": {...}}
              {"id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}

A connection may carry any number of requests; they are answered in order. Error codes the
server itself produces are the `Code` members below; a handler may add its own (any string)
by raising `ControlError`. The client adds a few codes of its own for failures that happen
on its side of the socket (timeout, disconnect, a garbled answer).

Limits (parameters of `serve_control`), so that no client, buggy or hostile, can hold the
node's memory or its control plane:

- at most `max_connections` (64) connections are served at once; one more is answered with
  a single `busy` error line (id null) and closed, which ControlClient raises as
  ControlError("busy", ...), so the caller can retry;
- a request line must be complete `line_timeout` (10 s) after the server began waiting for
  the rest of it, and a response must be taken within as long; otherwise the connection
  gets a `timeout` error line (if it can still be sent) and is closed;
- a connection with no partial request is closed after `idle_timeout` (300 s, or never);
- request bytes buffered across all connections stay within `max_buffered` (16 MiB, plus
  the one read of at most 64 KiB each connection may have in hand); the connection whose
  bytes would pass it is answered `busy` and closed. Without this budget
  the bound would be max_connections x (MAX_LINE + one read) = 68 MiB, which is what a
  flood of half-sent 1 MiB lines costs until the line timeout cuts them.

`ControlStats` counts live connections, buffered bytes (and their peak) and refusals.

The dso_network tool of the paper (section 7.2) maps onto control actions of the same name;
`validate_dso_args` is the one definition of their arguments, applied by the MCP server
before it forwards a call and by the node before it acts on one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NoReturn, get_args

import trio

from fai_core.errors import FaiError
from fai_core.experience import domain_problem
from fai_core.jsonlimits import too_deep

logger = logging.getLogger(__name__)

#: Longest request line the server reads (and the client sends), newline excluded.
MAX_LINE = 1 << 20
#: Longest response line the client accepts: peer lists and stats can outgrow a request.
MAX_RESPONSE = 16 << 20
#: sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH = 107
_CHUNK = 64 << 10
#: How long the stale-socket probe waits for a listener that is alive but not accepting.
_PROBE_SECONDS = 1.0
#: Defaults of serve_control's limits (see the module docstring).
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_LINE_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_BUFFERED = 16 << 20

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Code(StrEnum):
    """Error codes with a fixed meaning. Handlers may use other strings for their own refusals."""

    #: The line was not a JSON object of the request shape, or the arguments were invalid.
    BAD_REQUEST = "bad_request"
    #: The line exceeded MAX_LINE; the server closes the connection after saying so.
    TOO_LARGE = "too_large"
    UNKNOWN_ACTION = "unknown_action"
    #: The handler crashed; the node logged the traceback and keeps serving.
    INTERNAL = "internal"
    #: The server is at its connection or buffer limit and closed the connection; the
    #: request was not carried out, and trying again later is the remedy (unlike too_large).
    BUSY = "busy"
    #: Sent by the server for a request line not finished in time or an idle connection
    #: (then closed), and produced by ControlClient when the node does not answer in time.
    TIMEOUT = "timeout"
    # Produced by ControlClient, never sent by the server:
    DISCONNECTED = "disconnected"
    BAD_RESPONSE = "bad_response"
    FORBIDDEN = "forbidden"
    UNREACHABLE = "unreachable"


class ControlError(FaiError):
    """A control request failed with a machine-readable `code` and a message for people.

    Raised by handlers to refuse a request (the server sends the code on) and by
    `ControlClient.call` when the node refused one or the exchange itself failed.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message


class UnknownAction(ControlError):
    """A handler raises this for an action it does not implement."""

    def __init__(self, action: object) -> None:
        super().__init__(Code.UNKNOWN_ACTION, f"unknown action {action!r}")


class NodeNotRunning(FaiError):
    """Nothing answers on the control socket: the node is not started (or died)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"no FAI node is running on control socket {path} ({detail}); start the node first"
        )
        self.path = path


class ControlSocketInUse(FaiError):
    """Refusing to serve on a path that another live process serves, or that is not a socket."""


# --------------------------------------------------------------------------------------------
# dso_network arguments
# --------------------------------------------------------------------------------------------

DsoAction = Literal["status", "broadcast", "receive", "peers"]
DSO_ACTIONS: tuple[str, ...] = get_args(DsoAction)
DEFAULT_RECEIVE_LIMIT = 50
MAX_RECEIVE_LIMIT = 1000
_DSO_ALLOWED: dict[str, tuple[str, ...]] = {
    "status": (),
    "peers": (),
    "broadcast": ("domain",),
    "receive": ("domain", "limit"),
}


def validate_dso_args(action: object, args: Mapping[str, object]) -> dict[str, Any]:
    """Check and normalise the arguments of one dso_network action (paper section 7.2).

    Both ends call this so that an agent's mistake is reported with the same words whether
    the MCP server or the node catches it, and the node never trusts its callers to have
    checked. Returns a new dict holding exactly the arguments the action uses (`limit`
    filled in for receive); raises ControlError `unknown_action` or `bad_request`.

    The results the node answers with, one per action (the fields the paper names; the
    node may add more, and timestamps are unix milliseconds like everywhere else in FAI):

    - ``status``: ``{peers: int, library_size: int, last_sync: int | None (the last merge
      round), bytes_sent: int, bytes_received: int}``
    - ``broadcast`` (domain): ``{experiences_sent: int, peers_reached: int, batch_id: str
      (CID of the published batch)}``
    - ``receive`` (domain, limit 1..1000, default 50): ``{experiences_received: int,
      library_delta: int (net change of the domain's library)}``
    - ``peers``: ``{peers: [{node_id: str, latency_ms: float | None, reputation: float |
      None, last_seen: int | None}]}``
    """
    if not isinstance(action, str) or action not in _DSO_ALLOWED:
        raise ControlError(
            Code.UNKNOWN_ACTION,
            f"unknown dso_network action {action!r}; expected one of {', '.join(DSO_ACTIONS)}",
        )
    if not isinstance(args, Mapping):
        raise ControlError(Code.BAD_REQUEST, "arguments must be an object")
    allowed = _DSO_ALLOWED[action]
    extra = sorted(str(key) for key in args if key not in allowed)
    if extra:
        accepts = ", ".join(allowed) if allowed else "no arguments"
        raise ControlError(
            Code.BAD_REQUEST,
            f"{action} does not take {', '.join(extra)} (it accepts {accepts})",
        )
    out: dict[str, Any] = {}
    if "domain" in allowed:
        if "domain" not in args:
            raise ControlError(Code.BAD_REQUEST, f"{action} requires a domain, e.g. 'coding'")
        problem = domain_problem(args["domain"])
        if problem:
            raise ControlError(Code.BAD_REQUEST, problem)
        out["domain"] = args["domain"]
    if "limit" in allowed:
        limit = args.get("limit", DEFAULT_RECEIVE_LIMIT)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_RECEIVE_LIMIT
        ):
            raise ControlError(
                Code.BAD_REQUEST,
                f"limit must be an integer in 1..{MAX_RECEIVE_LIMIT}, got {limit!r}",
            )
        out["limit"] = limit
    return out


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------


def _check_path(path: str) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"control socket path is longer than {MAX_SOCKET_PATH} bytes (a Unix socket limit): "
            f"{path}; use a shorter data directory"
        )


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _error(request_id: object, code: str, message: str) -> bytes:
    return _encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


async def _probe(path: str) -> bool:
    """Whether a live process accepts connections on `path`."""
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        with trio.move_on_after(_PROBE_SECONDS):
            try:
                await probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            return True
        # A full backlog makes connect wait: someone is listening, just busy.
        return True


async def _bind(sock: trio.socket.SocketType, path: str) -> None:
    """Bind `sock` to `path`, replacing a stale socket file but never a live one."""
    # On Linux a socket inode's mode carries over to the file bind creates, so the file is
    # born 0600 instead of being briefly reachable under the umask's mode. Elsewhere (macOS)
    # fchmod on a socket fails and the chmod after bind has to do.
    with contextlib.suppress(OSError):
        os.fchmod(sock.fileno(), 0o600)
    try:
        await sock.bind(path)
        return
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise ControlSocketInUse(f"{path} exists and is not a socket; refusing to replace it")
        if await _probe(path):
            raise ControlSocketInUse(
                f"another process is serving control socket {path} (is a node already running?)"
            )
        logger.info("removing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):  # its owner may clean up meanwhile
            os.unlink(path)
    await sock.bind(path)


@dataclass
class ControlStats:
    """Live counters of one serve_control, updated as it runs.

    Pass one in to watch the limits at work: tests assert on it instead of on the process's
    RSS (which the allocator does not hand back promptly), and a node may report it.
    """

    #: Connections being served now (refused ones are not counted).
    connections: int = 0
    #: Request bytes read from all connections and not yet consumed as a line.
    buffered_bytes: int = 0
    #: The most `buffered_bytes` has been.
    peak_buffered_bytes: int = 0
    #: Connections turned away with `busy` (connection limit or buffer budget).
    refused: int = 0
    #: Connections closed for a late request line, a response not taken, or idling.
    timed_out: int = 0


@dataclass(frozen=True)
class _Limits:
    """serve_control's limits, checked once so a typo fails at start, not under load."""

    max_connections: int
    line_timeout: float
    idle_timeout: float | None
    max_buffered: int

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        if not self.line_timeout > 0:
            raise ValueError(f"line_timeout must be positive, got {self.line_timeout!r}")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive or None, got {self.idle_timeout!r}")
        if self.max_buffered < MAX_LINE + _CHUNK:
            # Below this a lone client could not send a line of MAX_LINE bytes.
            raise ValueError(f"max_buffered must be at least {MAX_LINE + _CHUNK} bytes")


async def serve_control(
    path: str | os.PathLike[str],
    handler: Handler,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    line_timeout: float = DEFAULT_LINE_TIMEOUT,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    stats: ControlStats | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve control requests on a Unix socket at `path` until cancelled.

    Start it with ``await nursery.start(serve_control, path, handler)``: it returns once
    the socket accepts connections (the started value is the path). `handler(action, args)`
    returns the result object or raises ControlError; any other exception is logged with
    its traceback and answered as `internal`, because one bad request must not take the
    node down. The socket file is removed again on the way out, unless another process
    has replaced it meanwhile.

    The limits are explained in the module docstring. `idle_timeout` defaults to 300 s
    rather than none because an idle connection, though it buffers nothing, holds one of
    the `max_connections` slots: leaked ones would otherwise lock the CLI out for good.
    It is long because idling is harmless until the slots run out, and ControlClient never
    idles (it sends its request as soon as it connects). `handler` runs without a time
    limit: slow actions are the node's business, not the client's. `stats`, if given, is
    kept up to date.

    Raises ControlSocketInUse if a live process answers on `path` (or `path` is not a
    socket), ValueError if the path is too long for a Unix socket or a limit is invalid.
    """
    path = os.fspath(path)
    _check_path(path)
    limits = _Limits(max_connections, line_timeout, idle_timeout, max_buffered)
    stats = ControlStats() if stats is None else stats
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await _bind(sock, path)
        bound = os.stat(path)  # which file is ours, to remove on exit
    except BaseException:
        sock.close()
        raise
    try:
        os.chmod(path, 0o600)
        sock.listen()
        listener = trio.SocketListener(sock)

        async def connection(stream: trio.SocketStream) -> None:
            await _admit(stream, handler, limits, stats)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, connection, [listener])
            task_status.started(path)
            await trio.sleep_forever()
    finally:
        sock.close()
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass
    raise AssertionError("unreachable")  # pragma: no cover


async def _admit(
    stream: trio.SocketStream, handler: Handler, limits: _Limits, stats: ControlStats
) -> None:
    """Serve a connection if a slot is free, else tell it `busy` and let it close.

    Refusing with a line (rather than not accepting) gives the client an answer it can
    show at once instead of a connect that hangs in a full backlog until its timeout.
    """
    if stats.connections >= limits.max_connections:
        stats.refused += 1
        logger.debug("control connection refused: %d already open", stats.connections)
        message = (
            f"the node is already serving {limits.max_connections} control connections; "
            "try again shortly"
        )
        await _farewell(stream, _error(None, Code.BUSY, message), limits.line_timeout)
        return
    stats.connections += 1
    try:
        await _serve_connection(stream, handler, limits, stats)
    finally:
        stats.connections -= 1


async def _send_within(stream: trio.SocketStream, data: bytes, seconds: float) -> bool:
    """Send `data`, giving up after `seconds`: a client that stops reading can't hold us."""
    with trio.move_on_after(seconds):
        await stream.send_all(data)
        return True
    return False


async def _farewell(stream: trio.SocketStream, line: bytes, seconds: float) -> None:
    """Tell a connection about to be closed why, if it still listens."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await _send_within(stream, line, seconds)


class _Hangup(Exception):
    """Ends a connection; `farewell` is the error line to send first, if any."""

    def __init__(self, farewell: bytes | None = None) -> None:
        super().__init__()
        self.farewell = farewell


async def _serve_connection(
    stream: trio.SocketStream, handler: Handler, limits: _Limits, stats: ControlStats
) -> None:
    """Answer one connection's requests in order until it closes or breaks the rules."""
    reader = _LineReader(stream, limits, stats)
    farewell: bytes | None = None
    try:
        while (line := await reader.next_line()) is not None:
            if len(line) > MAX_LINE:
                raise _Hangup(_too_large())
            if not line.strip():
                continue
            if not await _send_within(stream, await _answer(line, handler), limits.line_timeout):
                stats.timed_out += 1  # the client does not read its answers
                return
    except _Hangup as hangup:
        farewell = hangup.farewell
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away; nothing to answer
    except Exception:
        # A bug here must cost one connection, not the node.
        logger.exception("control connection failed")
    finally:
        reader.release()  # before the farewell: a slow goodbye must not hold the bytes
    if farewell is not None:
        await _farewell(stream, farewell, limits.line_timeout)


class _LineReader:
    """Splits one connection's bytes into lines within the limits, and accounts for them.

    Every byte held in `buffer` is counted in `stats.buffered_bytes`, so the budget bounds
    what all connections together hold between reads; a chunk just read is checked against
    it before it is kept.
    """

    def __init__(self, stream: trio.SocketStream, limits: _Limits, stats: ControlStats) -> None:
        self.stream, self.limits, self.stats = stream, limits, stats
        self.buffer = bytearray()
        self.scanned = 0  # bytes of `buffer` already known to hold no newline
        self.started: float | None = None  # when we began waiting for the rest of a line

    async def next_line(self) -> bytes | None:
        """The next line (without its newline, possibly over MAX_LINE), or None at EOF.

        Raises _Hangup when the connection has to go: a line growing past MAX_LINE, the
        line timeout, the idle timeout, or the buffer budget.
        """
        while True:
            newline = self.buffer.find(b"\n", self.scanned)
            if newline >= 0:
                return self._take(newline)
            self.scanned = len(self.buffer)
            if len(self.buffer) > MAX_LINE:
                raise _Hangup(_too_large())
            chunk = await self._receive()
            if not chunk:
                return None  # EOF; an unterminated last line is not a request
            self._hold(chunk)

    async def _receive(self) -> bytes:
        """One read, bounded by the line timeout (mid-line) or the idle timeout."""
        now = trio.current_time()
        if self.buffer:
            # The clock starts when we wait, not when the bytes came: a partial line
            # pipelined behind a slow request is not charged for the handler's time.
            if self.started is None:
                self.started = now
            deadline = self.started + self.limits.line_timeout
            why = f"request line not finished within {self.limits.line_timeout:g}s"
        elif self.limits.idle_timeout is not None:
            deadline = now + self.limits.idle_timeout
            why = f"connection idle for {self.limits.idle_timeout:g}s"
        else:
            return await self.stream.receive_some(_CHUNK)
        with trio.move_on_at(deadline):
            return await self.stream.receive_some(_CHUNK)
        self.stats.timed_out += 1
        raise _Hangup(_error(None, Code.TIMEOUT, f"{why}; closing the connection"))

    def _hold(self, chunk: bytes) -> None:
        stats = self.stats
        if stats.buffered_bytes + len(chunk) > self.limits.max_buffered:
            stats.refused += 1
            raise _Hangup(
                _error(
                    None,
                    Code.BUSY,
                    "the node holds too many unfinished control requests; try again shortly",
                )
            )
        self.buffer += chunk
        stats.buffered_bytes += len(chunk)
        stats.peak_buffered_bytes = max(stats.peak_buffered_bytes, stats.buffered_bytes)

    def _take(self, newline: int) -> bytes:
        line = bytes(self.buffer[:newline])
        del self.buffer[: newline + 1]
        self.stats.buffered_bytes -= newline + 1
        self.scanned = 0
        self.started = None
        return line

    def release(self) -> None:
        """Give the connection's bytes back to the budget; call once, when it ends."""
        self.stats.buffered_bytes -= len(self.buffer)
        self.buffer = bytearray()


def _too_large() -> bytes:
    return _error(None, Code.TOO_LARGE, f"request line exceeds {MAX_LINE} bytes")


#: Deepest JSON nesting a request may have. Importing web3 raises the interpreter's
#: recursion limit to 100,000 (py_ecc does it), and the C JSON decoder then overflows the
#: C stack, a segfault, on a line of a few thousand brackets, before any RecursionError.
MAX_NESTING = 32


async def _answer(line: bytes, handler: Handler) -> bytes:
    if too_deep(line, MAX_NESTING):
        return _error(None, Code.BAD_REQUEST, f"request nests deeper than {MAX_NESTING} levels")
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _error(None, Code.BAD_REQUEST, "request is not valid JSON")
    if not isinstance(request, dict):
        return _error(None, Code.BAD_REQUEST, "request must be a JSON object")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return _error(None, Code.BAD_REQUEST, "request id must be an integer or a string")
    unknown = sorted(set(request) - {"id", "action", "args"})
    if unknown:
        return _error(request_id, Code.BAD_REQUEST, f"unknown request fields {unknown}")
    action = request.get("action")
    if not isinstance(action, str) or not action:
        return _error(request_id, Code.BAD_REQUEST, "action must be a non-empty string")
    args = request.get("args", {})
    if not isinstance(args, dict):
        return _error(request_id, Code.BAD_REQUEST, "args must be a JSON object")
    try:
        result = await handler(action, args)
        if not isinstance(result, dict):
            raise TypeError(f"handler returned {type(result).__name__}, not a dict")
        return _encode({"id": request_id, "ok": True, "result": result})
    except ControlError as exc:
        return _error(request_id, exc.code, exc.message)
    except Exception as exc:
        logger.exception("control action %r failed", action)
        summary = f"{type(exc).__name__}: {exc}"[:500]
        return _error(request_id, Code.INTERNAL, f"the node failed on {action!r}: {summary}")


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------


class ControlClient:
    """Blocking client for the CLI and the MCP server (which runs it in a worker thread).

    Each call uses its own connection: calls from several threads need no lock, and a node
    restarted between two calls is simply found again.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        _check_path(self.path)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = float(timeout)
        self._ids = itertools.count(1)

    def call(self, action: str, **args: Any) -> dict[str, Any]:
        """Run `action` on the node and return its result object.

        Raises NodeNotRunning when nothing listens on the socket, ControlError when the
        node refuses the request (its code; `busy` when it is at a connection or buffer
        limit, worth retrying) or the exchange fails (`timeout`, `disconnected`,
        `bad_response`, `forbidden`, `unreachable`, `too_large`).
        """
        request_id = next(self._ids)
        try:
            line = _encode({"id": request_id, "action": action, "args": args})
        except (TypeError, ValueError) as exc:
            raise ControlError(Code.BAD_REQUEST, f"arguments are not JSON: {exc}") from None
        if len(line) - 1 > MAX_LINE:
            raise ControlError(Code.TOO_LARGE, f"request exceeds {MAX_LINE} bytes")
        deadline = time.monotonic() + self.timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
                raise NodeNotRunning(self.path, exc.strerror or type(exc).__name__) from None
            except PermissionError:
                raise ControlError(
                    Code.FORBIDDEN,
                    f"permission denied on control socket {self.path}; "
                    "the node runs as another user",
                ) from None
            except TimeoutError:
                raise ControlError(
                    Code.TIMEOUT, f"the node at {self.path} did not accept within {self.timeout}s"
                ) from None
            except OSError as exc:
                raise ControlError(
                    Code.UNREACHABLE, f"cannot connect to {self.path}: {exc}"
                ) from None
            try:
                raw = _exchange(sock, line, deadline)
            except TimeoutError:
                raise ControlError(
                    Code.TIMEOUT, f"the node did not answer {action!r} within {self.timeout}s"
                ) from None
            except OSError as exc:
                raise ControlError(
                    Code.DISCONNECTED, f"connection to the node broke during {action!r}: {exc}"
                ) from None
        if raw is None:
            raise ControlError(
                Code.DISCONNECTED, f"the node closed the connection before answering {action!r}"
            )
        return _parse_response(raw, request_id)


def _exchange(sock: socket.socket, line: bytes, deadline: float) -> bytes | None:
    """Send the request line and read the answer line (None if the node just closed).

    A node at its connection limit answers `busy` and closes without reading, possibly
    before the request is sent. The send then fails, but the node's line is already
    waiting to be read, and it says why far better than "broken pipe".
    """
    try:
        sock.sendall(line)
    except (BrokenPipeError, ConnectionResetError) as exc:
        try:
            raw = _read_line(sock, deadline)
        except OSError:
            raw = None
        if raw is None:
            raise exc from None
        return raw
    return _read_line(sock, deadline)


def _read_line(sock: socket.socket, deadline: float) -> bytes | None:
    """One response line, or None if the node closed the connection first."""
    buffer = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(_CHUNK)
        if not chunk:
            return None
        start = len(buffer)
        buffer += chunk
        newline = buffer.find(b"\n", start)
        if newline >= 0:
            return bytes(buffer[:newline])
        if len(buffer) > MAX_RESPONSE:
            raise ControlError(Code.BAD_RESPONSE, f"response exceeds {MAX_RESPONSE} bytes")


def _parse_response(raw: bytes, request_id: int) -> dict[str, Any]:
    try:
        response = json.loads(raw)
    except (ValueError, RecursionError):
        raise ControlError(Code.BAD_RESPONSE, "the node answered with invalid JSON") from None
    if not isinstance(response, dict):
        raise ControlError(Code.BAD_RESPONSE, "the node's answer is not a JSON object")
    ok = response.get("ok")
    if ok is False:
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise ControlError(error["code"], str(error.get("message", "")))
        raise ControlError(Code.BAD_RESPONSE, "the node's error answer has no error code")
    if response.get("id") != request_id:
        raise ControlError(
            Code.BAD_RESPONSE, f"answer for id {response.get('id')!r}, expected {request_id}"
        )
    result = response.get("result")
    if ok is not True or not isinstance(result, dict):
        raise ControlError(Code.BAD_RESPONSE, "the node's answer has no result object")
    return result
