"""Python clients of a running FAI node: what an agent calls to learn from the fleet.

A node (``fai node run``) serves newline-delimited JSON on a Unix socket in its data
directory (``<data dir>/control.sock``, mode 0600: only the user running the node can
connect). These clients speak that protocol (fai_net/api/control.py) for agent code:

    from fai_net.api.client import FaiClient

    fai = FaiClient.from_data_dir("/tmp/fai-a")
    found = fai.recall("the integration tests time out against the database")
    system_prompt += found["prompt"]            # "" when nothing relevant is known
    ...
    fai.feedback(found["experiences"][0]["id"], "helped")

`FaiClient` blocks; `AsyncFaiClient` is the same for asyncio code. Both open one connection
per call, so they are safe to share between threads (or tasks), hold no resources between
calls, and find a restarted node again without reconnecting. Results are the node's JSON
objects as plain dicts (`subscribe` and `unsubscribe` answer a bool, `peers` a list);
`RecallResult`, `RecalledExperience`, `FeedbackResult` and `AddResult` document the fields
of the ones agents use most.

Errors:

- `NodeNotRunning`: nothing listens on the socket (the node is not started, or died);
- `ControlError` with ``code == "bad_request"``: the node refused the arguments (or the
  client did, for a call it cannot send, such as a text without a domain), and
  ``message`` says which and why (an unsubscribed domain, ``k`` out of range, ...);
- `ControlError` with another code: ``timeout`` (no answer within the client's timeout),
  ``busy`` (the node is at its connection limit; retry shortly), ``disconnected``,
  ``bad_response``, ``forbidden`` (the socket belongs to another user), ``unreachable``,
  ``too_large``, ``internal`` (the node failed; its log has the traceback).

`ControlError.code` values with a fixed meaning are the members of `fai_net.api.control.Code`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

from fai_net.api.control import (
    _CHUNK,
    MAX_LINE,
    MAX_RESPONSE,
    Code,
    ControlClient,
    ControlError,
    NodeNotRunning,
    _check_path,
    _encode,
    _parse_response,
)

__all__ = [
    "AddResult",
    "AsyncFaiClient",
    "Code",
    "ControlError",
    "FaiClient",
    "FeedbackResult",
    "NodeNotRunning",
    "RecallResult",
    "RecalledExperience",
    "resolve_socket_path",
]

#: Seconds a call may take, connection included, unless the constructor says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Experiences per `add` request: the node takes at most 1000, and a request line at most
#: 1 MiB (500 texts of at most 1 KiB each, with their JSON, stay below it).
ADD_CHUNK = 500
#: The outcomes `feedback` takes by name (or a number in [-1, 1]).
OUTCOMES = ("helped", "no_effect", "hurt")


class RecalledExperience(TypedDict):
    """One experience `recall` returns, best first (fai_core/ranking.py has the rules)."""

    #: Experience id (hex): pass it to `feedback`.
    id: str
    #: The lesson: one sentence of at most 32 words.
    text: str
    domain: str
    #: 1 - cosine distance to the task (the similarity), at least 1 - max_distance.
    relevance: float
    distance: float
    #: The quality its source claimed, and that claim ranked among the source's own claims.
    quality: float
    calibrated_quality: float
    #: What this node's agents reported about it (0.5: no reports; higher: it helped).
    utility: float
    #: How this node's agents rated all the experiences of its source (0.5: neutral).
    source_standing: float
    #: relevance x trust: the sort key (equal to relevance for a fresh, neutral experience).
    score: float
    #: The publishing node's Ed25519 public key (hex) and its libp2p peer id.
    source: str
    source_node: str | None
    #: How many distinct nodes published this same experience.
    sources: int
    #: "local" (added on this node) or how it arrived.
    origin: str
    age_s: int
    created_ms: int


class RecallResult(TypedDict):
    """What `recall` returns, typed so that callers (and type checkers) know its keys: the
    ranked experiences, the same as a prompt block, and the cutoff used."""

    #: At most k experiences within max_distance of the task, highest score first.
    experiences: list[RecalledExperience]
    #: The same experiences as a block for a system prompt; "" when there are none.
    prompt: str
    #: The relevance cutoff used (a cosine distance).
    max_distance: float


class FeedbackResult(TypedDict):
    """What `feedback` returns: the experience's and its source's new standing."""

    id: str
    #: The outcome as a reward in [-1, 1] (helped 1, no_effect 0, hurt -1).
    reward: float
    #: The experience's utility after this report, and how many reports it has.
    utility: float
    reports: int
    #: The source (public key, hex), its standing, and whether this node stopped merging
    #: its new experiences because they kept hurting.
    source: str
    source_standing: float
    source_muted: bool


class AddResult(TypedDict):
    """What `add` returns: how many lessons the node accepted and how many were new, and
    their ids, to report feedback on later."""

    #: Experiences the node accepted, and how many of them were new to its library.
    added: int
    inserted: int
    #: Their ids (hex), in the order given.
    ids: list[str]


def resolve_socket_path(
    socket: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> str:
    """The control socket a command or agent should use, like every `fai` command finds it.

    Arguments beat the environment (``FAI_SOCKET``, ``FAI_DATA_DIR``), which beats a
    fai.toml (``socket = ...`` or ``data_dir = ...``; ``config``, else ``$FAI_CONFIG``, else
    ./fai.toml); at the same level a socket beats a data directory, whose socket is
    ``<data dir>/control.sock``. `env` defaults to os.environ. Raises
    fai_net.settings.SettingsError when nothing names a node.
    """
    from fai_net.settings import SettingsError, resolve

    flags = {
        "socket": None if socket is None else os.fspath(socket),
        "data_dir": None if data_dir is None else os.fspath(data_dir),
    }
    settings = resolve(flags, env, config=config)
    rank = {"flag": 0, "environment": 1}
    found = [
        (rank.get(settings.sources[name], 2), order, name)
        for order, name in enumerate(("socket", "data_dir"))
        if settings.get(name) not in (None, "")
    ]
    if not found:
        raise SettingsError(
            "which node? give a data directory (uses DIR/control.sock) or a socket path, set "
            "FAI_DATA_DIR or FAI_SOCKET, or put `data_dir = ...` in fai.toml"
        )
    _, _, name = min(found)
    if name == "socket":
        return str(Path(settings.get("socket")).expanduser())
    return str(Path(settings.get("data_dir")).expanduser() / "control.sock")


# --------------------------------------------------------------------------------------------
# arguments, shared by both clients
# --------------------------------------------------------------------------------------------


def _add_chunks(
    text: str | Iterable[str | Mapping[str, Any]], domain: str | None, quality: float | None
) -> list[list[dict[str, Any]]]:
    """`add`'s items in chunks of ADD_CHUNK; the node checks every value itself."""
    if isinstance(text, str):
        if domain is None:
            raise ControlError(Code.BAD_REQUEST, "add: give the domain of the text, e.g. 'coding'")
        item: dict[str, Any] = {"text": text, "domain": domain}
        if quality is not None:
            item["quality"] = quality
        items = [item]
    else:
        items = []
        for number, given in enumerate(text):
            if isinstance(given, str):
                given = {"text": given}
            if not isinstance(given, Mapping):
                raise ControlError(
                    Code.BAD_REQUEST,
                    f"add: item {number} is neither a text nor a mapping of {{text, domain?, "
                    f"quality?, iteration?}}: {given!r}",
                )
            item = dict(given)
            if domain is not None:
                item.setdefault("domain", domain)
            if quality is not None:
                item.setdefault("quality", quality)
            items.append(item)
        if not items:
            raise ControlError(Code.BAD_REQUEST, "add: nothing to add")
    return [items[start : start + ADD_CHUNK] for start in range(0, len(items), ADD_CHUNK)]


def _merge_added(total: dict[str, Any], result: Mapping[str, Any], chunk: list) -> None:
    total["added"] += int(result.get("added", len(chunk)))
    total["inserted"] += int(result.get("inserted", 0))
    total["ids"] += list(result.get("ids", []))


def _add_refused(exc: ControlError, total: Mapping[str, Any], count: int) -> ControlError:
    if total["added"]:
        exc.message += f" ({total['added']} of {count} experiences were added before this)"
    return exc


def _recall_args(
    task: str, domain: str | None, k: int, max_distance: float | None
) -> dict[str, Any]:
    args: dict[str, Any] = {"task": task, "k": k}
    if domain is not None:
        args["domain"] = domain
    if max_distance is not None:
        args["max_distance"] = max_distance
    return args


def _feedback_args(experience_id: str | bytes, outcome: str | float) -> dict[str, Any]:
    ident = experience_id.hex() if isinstance(experience_id, bytes | bytearray) else experience_id
    return {"id": ident, "outcome": outcome}


def _request(request_id: int, action: str, args: dict[str, Any]) -> bytes:
    """The request line, checked as ControlClient checks it."""
    try:
        line = _encode({"id": request_id, "action": action, "args": args})
    except (TypeError, ValueError) as exc:
        raise ControlError(Code.BAD_REQUEST, f"arguments are not JSON: {exc}") from None
    if len(line) - 1 > MAX_LINE:
        raise ControlError(Code.TOO_LARGE, f"request exceeds {MAX_LINE} bytes")
    return line


def _timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return float(timeout)


# --------------------------------------------------------------------------------------------
# the blocking client
# --------------------------------------------------------------------------------------------


class FaiClient:
    """Blocking client of one node's control socket.

    `socket_path` is the node's control socket (``<data dir>/control.sock``); `timeout` is
    how long one call may take, in seconds. Nothing is connected until a method is called,
    so a client can be made before its node starts. Raises ValueError for a path longer
    than a Unix socket allows (107 bytes) or a timeout that is not positive.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._control = ControlClient(socket_path, timeout=_timeout(timeout))

    @classmethod
    def from_data_dir(
        cls, data_dir: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> FaiClient:
        """The client of the node whose data directory is `data_dir` (``fai node run
        --data-dir``)."""
        return cls(Path(data_dir).expanduser() / "control.sock", timeout=timeout)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> FaiClient:
        """The client of the node named by ``FAI_SOCKET``, else ``FAI_DATA_DIR``, else a
        fai.toml (see `resolve_socket_path`); raises SettingsError if none names one."""
        return cls(resolve_socket_path(env=env), timeout=timeout)

    @property
    def socket_path(self) -> str:
        """The node's control socket this client talks to."""
        return self._control.path

    @property
    def timeout(self) -> float:
        """Seconds each call waits for the node before giving up."""
        return self._control.timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.socket_path!r}, timeout={self.timeout!r})"

    def call(self, action: str, **args: Any) -> dict[str, Any]:
        """Run any control action (docs/node.md lists them) and return its result object."""
        return self._control.call(action, **args)

    # agents -------------------------------------------------------------------------------

    def recall(
        self,
        task: str,
        domain: str | None = None,
        k: int = 5,
        max_distance: float | None = None,
    ) -> RecallResult:
        """The experiences most useful for `task`, best first, and a prompt block of them.

        `task` is what the agent is about to do or the error it is facing (at most 4096
        characters). `domain` limits the search to one subscribed domain (default: all);
        `k` (1..50) is how many to return at most; `max_distance` (0 < d <= 2, default
        0.65) is the relevance cutoff as a cosine distance: raise it to get more, looser
        matches. Experiences beyond the cutoff are never returned, so the list may be
        empty. See `RecallResult` for the fields.
        """
        result = self.call("recall", **_recall_args(task, domain, k, max_distance))
        return cast(RecallResult, result)

    def feedback(self, experience_id: str | bytes, outcome: str | float) -> FeedbackResult:
        """Report what a recalled experience did for the agent.

        `outcome` is "helped", "no_effect", "hurt", or a reward in [-1, 1]. Reports change
        the experience's utility, and its source's standing, in this node's later recalls;
        a source whose experiences keep hurting is muted (its new ones are not merged).
        """
        return cast(FeedbackResult, self.call("feedback", **_feedback_args(experience_id, outcome)))

    def add(
        self,
        text: str | Iterable[str | Mapping[str, Any]],
        domain: str | None = None,
        quality: float | None = None,
    ) -> AddResult:
        """Add experiences of this node's agents; the node embeds, stores and publishes them.

        Either one `text` (a lesson of at most 32 words) in `domain`, or an iterable of
        texts and ``{text, domain?, quality?, iteration?}`` mappings, for which `domain`
        and `quality` are defaults. `quality` is in (0, 1) (node default 0.5). The domain must
        be subscribed. Adding the same (domain, text) again is harmless: ids are content
        addresses. Long lists are sent in chunks; if the node refuses one, the
        ControlError's message says how many were added before it.
        """
        chunks = _add_chunks(text, domain, quality)
        count = sum(len(chunk) for chunk in chunks)
        total: dict[str, Any] = {"added": 0, "inserted": 0, "ids": []}
        for chunk in chunks:
            try:
                result = self.call("add", experiences=chunk)
            except ControlError as exc:
                raise _add_refused(exc, total, count) from None
            _merge_added(total, result, chunk)
        return cast(AddResult, total)

    # the node -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Peers, library size (also per domain), last sync, traffic, refusals, membership."""
        return self.call("status")

    def info(self) -> dict[str, Any]:
        """``{node_id, addrs, domains}``: the node's peer id, listen addresses, domains."""
        return self.call("info")

    def peers(self) -> list[dict[str, Any]]:
        """Known peers: ``[{node_id, operator, latency_ms, reputation, last_seen, connected}]``
        (`operator` is the peer's live operator address in registry mode, else None)."""
        return list(self.call("peers").get("peers", []))

    def subscribe(self, domain: str) -> bool:
        """Follow `domain`'s topic (its history is fetched from peers); False if it did."""
        return bool(self.call("subscribe", domain=domain).get("subscribed"))

    def unsubscribe(self, domain: str) -> bool:
        """Stop following `domain` (its experiences stay); False if it did not follow it."""
        return bool(self.call("unsubscribe", domain=domain).get("unsubscribed"))

    def broadcast(self, domain: str) -> dict[str, Any]:
        """Publish the domain's unsent local experiences now, instead of at the next
        interval: ``{experiences_sent, peers_reached, batch_id, batch_ids}``."""
        return self.call("broadcast", domain=domain)

    def receive(self, domain: str, limit: int = 10) -> dict[str, Any]:
        """Pull `domain` from every peer now and merge it: ``{experiences_received,
        library_delta, experiences}`` with the domain's `limit` (1..1000) newest entries."""
        return self.call("receive", domain=domain, limit=limit)

    def stop(self) -> dict[str, Any]:
        """Ask the node to shut down (it answers ``{stopping: true}``, then exits)."""
        return self.call("stop")


# --------------------------------------------------------------------------------------------
# the asyncio client
# --------------------------------------------------------------------------------------------


class AsyncFaiClient:
    """The asyncio twin of `FaiClient`: the same methods, as coroutines, the same results
    and errors. Each call opens its own connection, so concurrent calls (asyncio.gather)
    need no lock; `timeout` bounds each call, connection included."""

    def __init__(
        self, socket_path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._path = os.fspath(socket_path)
        _check_path(self._path)
        self._timeout = _timeout(timeout)
        self._ids = itertools.count(1)

    @classmethod
    def from_data_dir(
        cls, data_dir: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncFaiClient:
        """The client of the node whose data directory is `data_dir`."""
        return cls(Path(data_dir).expanduser() / "control.sock", timeout=timeout)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncFaiClient:
        """The client of the node named by ``FAI_SOCKET``, else ``FAI_DATA_DIR``, else a
        fai.toml (see `resolve_socket_path`)."""
        return cls(resolve_socket_path(env=env), timeout=timeout)

    @property
    def socket_path(self) -> str:
        """The node's control socket this client talks to."""
        return self._path

    @property
    def timeout(self) -> float:
        """Seconds each call waits for the node before giving up."""
        return self._timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r}, timeout={self._timeout!r})"

    async def call(self, action: str, **args: Any) -> dict[str, Any]:
        """Run any control action and return its result object (see `FaiClient.call`)."""
        request_id = next(self._ids)
        line = _request(request_id, action, args)
        loop = asyncio.get_running_loop()
        connected = False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        await loop.sock_connect(sock, self._path)
                    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
                        detail = exc.strerror or type(exc).__name__
                        raise NodeNotRunning(self._path, detail) from None
                    except PermissionError:
                        raise ControlError(
                            Code.FORBIDDEN,
                            f"permission denied on control socket {self._path}; "
                            "the node runs as another user",
                        ) from None
                    except OSError as exc:
                        raise ControlError(
                            Code.UNREACHABLE, f"cannot connect to {self._path}: {exc}"
                        ) from None
                    connected = True
                    try:
                        raw = await _exchange(loop, sock, line)
                    except OSError as exc:
                        raise ControlError(
                            Code.DISCONNECTED,
                            f"connection to the node broke during {action!r}: {exc}",
                        ) from None
            except TimeoutError:
                if not connected:
                    raise ControlError(
                        Code.TIMEOUT,
                        f"the node at {self._path} did not accept within {self._timeout}s",
                    ) from None
                raise ControlError(
                    Code.TIMEOUT, f"the node did not answer {action!r} within {self._timeout}s"
                ) from None
        if raw is None:
            raise ControlError(
                Code.DISCONNECTED, f"the node closed the connection before answering {action!r}"
            )
        return _parse_response(raw, request_id)

    # agents -------------------------------------------------------------------------------

    async def recall(
        self,
        task: str,
        domain: str | None = None,
        k: int = 5,
        max_distance: float | None = None,
    ) -> RecallResult:
        """See `FaiClient.recall`."""
        result = await self.call("recall", **_recall_args(task, domain, k, max_distance))
        return cast(RecallResult, result)

    async def feedback(self, experience_id: str | bytes, outcome: str | float) -> FeedbackResult:
        """See `FaiClient.feedback`."""
        result = await self.call("feedback", **_feedback_args(experience_id, outcome))
        return cast(FeedbackResult, result)

    async def add(
        self,
        text: str | Iterable[str | Mapping[str, Any]],
        domain: str | None = None,
        quality: float | None = None,
    ) -> AddResult:
        """See `FaiClient.add`."""
        chunks = _add_chunks(text, domain, quality)
        count = sum(len(chunk) for chunk in chunks)
        total: dict[str, Any] = {"added": 0, "inserted": 0, "ids": []}
        for chunk in chunks:
            try:
                result = await self.call("add", experiences=chunk)
            except ControlError as exc:
                raise _add_refused(exc, total, count) from None
            _merge_added(total, result, chunk)
        return cast(AddResult, total)

    # the node -----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """See `FaiClient.status`."""
        return await self.call("status")

    async def info(self) -> dict[str, Any]:
        """See `FaiClient.info`."""
        return await self.call("info")

    async def peers(self) -> list[dict[str, Any]]:
        """See `FaiClient.peers`."""
        return list((await self.call("peers")).get("peers", []))

    async def subscribe(self, domain: str) -> bool:
        """See `FaiClient.subscribe`."""
        return bool((await self.call("subscribe", domain=domain)).get("subscribed"))

    async def unsubscribe(self, domain: str) -> bool:
        """See `FaiClient.unsubscribe`."""
        return bool((await self.call("unsubscribe", domain=domain)).get("unsubscribed"))

    async def broadcast(self, domain: str) -> dict[str, Any]:
        """See `FaiClient.broadcast`."""
        return await self.call("broadcast", domain=domain)

    async def receive(self, domain: str, limit: int = 10) -> dict[str, Any]:
        """See `FaiClient.receive`."""
        return await self.call("receive", domain=domain, limit=limit)

    async def stop(self) -> dict[str, Any]:
        """See `FaiClient.stop`."""
        return await self.call("stop")


async def _exchange(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, line: bytes
) -> bytes | None:
    """Send the request line and read the answer line (None if the node just closed).

    As in ControlClient: a node at its connection limit answers `busy` and closes without
    reading, so a failed send is followed by a read of the line that says why. (This is
    why the client uses the loop's socket calls, not streams: a stream transport that
    fails to write closes the socket, and the waiting answer with it.)
    """
    try:
        await loop.sock_sendall(sock, line)
    except (BrokenPipeError, ConnectionResetError) as exc:
        try:
            raw = await _read_line(loop, sock)
        except OSError:
            raw = None
        if raw is None:
            raise exc from None
        return raw
    return await _read_line(loop, sock)


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes | None:
    """One response line, or None if the node closed the connection first."""
    buffer = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, _CHUNK)
        if not chunk:
            return None
        start = len(buffer)
        buffer += chunk
        newline = buffer.find(b"\n", start)
        if newline >= 0:
            return bytes(buffer[:newline])
        if len(buffer) > MAX_RESPONSE:
            raise ControlError(Code.BAD_RESPONSE, f"response exceeds {MAX_RESPONSE} bytes")
