"""Repair: peers fetch the batches gossip did not deliver, over libp2p streams.

Gossipsub is best-effort; a node that was offline or lost messages asks a peer for its
inventory (`since`: what the peer stored after a cursor), then for the envelopes it lacks
(`get` by CID, or `range` by sender and seq). The answers are envelopes exactly as the
peer stored them; the requester runs them through the same validator as gossip, so a
repair peer can withhold batches but never forge one.

Protocol `/fai/repair/1.0.0`, one request and one response per stream. Each is one frame:
a 4-byte big-endian length, then a strict DAG-CBOR map. Both sides read the length first
and refuse an oversized frame without reading its body, so a peer cannot make the other
buffer more than 64 KiB (request) or 4 MiB (response).

Requests (`op`): `since` {cursor, limit <= 1024, domains?} -> {items, next};
`get` {cids <= 64} -> {envelopes}; `range` {sender, first, last; last - first < 256} ->
{envelopes}; `blocks` {cids <= 64} -> {blocks}: the wire-v2 baseline blocks the peer holds
(fai_core/baseline_block.py), which the requester checks against the CIDs it asked for.
Envelope lists are cut before the response frame would exceed its limit; the requester asks
again for the rest. Failures are {"error": code}.

Limits (`RepairLimits`), because one request of ~240 bytes can cost the server a 4 MiB
answer, and a peer that opens many streams and never reads them would otherwise make it
hold hundreds of such answers:

- per peer, at most `per_peer_streams` exchanges run at once; a stream beyond that is
  answered {"error": "busy"} at once, before its request is read or anything is built;
- node-wide, the encoded responses in flight are capped by `response_budget_bytes`, and one
  peer's share by `per_peer_budget_bytes` (so one peer alone cannot starve the others). An
  upper bound of the answer's size is reserved before the store is read (for `get` and
  `range` it follows from the request: cids or span times the envelope limit), settled to
  the real size once encoded, and released when the write finished, failed or timed out
  (`STREAM_TIMEOUT` covers the whole exchange, writing included, so a peer that never
  reads holds its share for at most that long). A request that does not fit waits at most
  `budget_wait_s`, then is answered "busy".

A stream carries one request: after its answer the server closes and waits for the
requester to close too (by the exchange's deadline), resetting the stream otherwise, and
closing the connection of a peer that keeps writing (see `_end_exchange` for why).

"busy" is a remote refusal like the others: the requester should try that peer later.
`RepairBackoff` spaces those later tries (and the ones to peers that do not speak the
protocol at all, code `unsupported`).

The code is split so each part is testable alone: `validate_request` and `handle_request`
are pure (store in, dict out), `read_frame`/`write_frame` do the framing, `make_handler` is
the server side (`RepairServer`, with its `ResponseBudget`) and `request` the client side.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError, ProtocolNotSupportedError

from fai_core import dagcbor
from fai_core.baseline_block import MAX_BLOCK_BYTES
from fai_core.errors import FaiError, WireError
from fai_core.experience import PUBLIC_KEY_LEN, domain_problem
from fai_core.wire import MAX_ENVELOPE_BYTES
from fai_net.admission.store import BatchStore

log = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/fai/repair/1.0.0")
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_SINCE_LIMIT = 1024
MAX_GET_CIDS = 64
#: `range` covers at most this many seqs (last - first < MAX_RANGE_SPAN).
MAX_RANGE_SPAN = 256
#: A `since` request may filter on at most this many domains.
MAX_DOMAINS = 64
STREAM_TIMEOUT = 10.0
#: Closing or resetting a stream after a failure must not hang the handler forever.
_CLOSE_TIMEOUT = 2.0
_LENGTH_BYTES = 4
#: Cursors and seq bounds travel as u64 but SQLite's cursor is a signed 64-bit integer.
_MAX_CURSOR = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1

#: Error codes a server sends ({"error": code}).
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
UNKNOWN_OP = "unknown_op"
INTERNAL = "internal"
#: The server is at its per-peer stream limit or out of response budget: try again later.
BUSY = "busy"
SERVER_CODES = frozenset({BAD_REQUEST, TOO_LARGE, UNKNOWN_OP, INTERNAL, BUSY})
#: Error codes raised locally (framing, transport, bad responses).
TRUNCATED = "truncated"
MALFORMED = "malformed"
BAD_RESPONSE = "bad_response"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
#: The peer is connected but does not speak PROTOCOL_ID (multistream-select answered "na").
UNSUPPORTED = "unsupported"
STREAM_ERROR = "stream_error"

# Encoded size of one byte string inside a CBOR array is len + at most 9 header bytes; the
# response map around the list ({"envelopes": [...]}) costs at most 16.
_ITEM_OVERHEAD = 9
_RESPONSE_OVERHEAD = 16
# A `since` item is at most 134 bytes encoded (u64s in 9 bytes, a 32-character domain); the
# map around the list ({"items": [...], "next": n}) at most 24.
_SINCE_ITEM_MAX = 134
_SINCE_OVERHEAD = 32
#: The largest frame (length prefix included) a server may send.
MAX_RESPONSE_FRAME = MAX_RESPONSE_BYTES + _LENGTH_BYTES


class RepairError(FaiError):
    """A repair exchange failed. `code` is machine-readable (metrics, retries).

    `remote` is True when the peer answered {"error": code}: the peer refused, as opposed
    to the exchange breaking (timeouts, truncated or malformed frames, bad responses).
    """

    def __init__(self, code: str, detail: str = "", *, remote: bool = False) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.remote = remote


# -- requests (pure) ---------------------------------------------------------------------


def _uint(obj: dict[str, Any], key: str, top: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise RepairError(BAD_REQUEST, f"{key} must be an integer in [0, {top}]")
    return value


def _keys(obj: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()) -> None:
    keys = set(obj)
    if not required <= keys or not keys <= required | optional:
        raise RepairError(
            BAD_REQUEST,
            f"fields: missing {sorted(required - keys)}, "
            f"unknown {sorted(keys - required - optional)}",
        )


def validate_request(obj: Any) -> dict[str, Any]:
    """Check a decoded request completely; return it or raise RepairError(code).

    Strict: unknown fields are refused, so a later protocol version (a new protocol id)
    never has its requests half-understood by this one.
    """
    if not isinstance(obj, dict):
        raise RepairError(BAD_REQUEST, "request must be a map")
    op = obj.get("op")
    if not isinstance(op, str):
        raise RepairError(BAD_REQUEST, "request needs a text op")
    if op == "since":
        _keys(obj, {"op", "cursor", "limit"}, frozenset({"domains"}))
        _uint(obj, "cursor", _MAX_CURSOR)
        limit = obj["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RepairError(BAD_REQUEST, "limit must be a positive integer")
        if limit > MAX_SINCE_LIMIT:
            raise RepairError(TOO_LARGE, f"limit {limit} > {MAX_SINCE_LIMIT}")
        if "domains" in obj:
            domains = obj["domains"]
            if not isinstance(domains, list) or not domains:
                raise RepairError(BAD_REQUEST, "domains must be a non-empty list")
            if len(domains) > MAX_DOMAINS:
                raise RepairError(TOO_LARGE, f"{len(domains)} domains > {MAX_DOMAINS}")
            if any(domain_problem(d) for d in domains):
                raise RepairError(BAD_REQUEST, "domains must be valid domain tags")
    elif op in ("get", "blocks"):
        _keys(obj, {"op", "cids"})
        cids = obj["cids"]
        if not isinstance(cids, list) or not cids:
            raise RepairError(BAD_REQUEST, "cids must be a non-empty list")
        if len(cids) > MAX_GET_CIDS:
            raise RepairError(TOO_LARGE, f"{len(cids)} cids > {MAX_GET_CIDS}")
        if any(not isinstance(c, bytes) or len(c) != dagcbor.CID_LEN for c in cids):
            raise RepairError(BAD_REQUEST, f"every cid must be {dagcbor.CID_LEN} bytes")
    elif op == "range":
        _keys(obj, {"op", "sender", "first", "last"})
        sender = obj["sender"]
        if not isinstance(sender, bytes) or len(sender) != PUBLIC_KEY_LEN:
            raise RepairError(BAD_REQUEST, f"sender must be {PUBLIC_KEY_LEN} bytes")
        first = _uint(obj, "first", _U64_MAX)
        last = _uint(obj, "last", _U64_MAX)
        if last < first:
            raise RepairError(BAD_REQUEST, "last < first")
        if last - first >= MAX_RANGE_SPAN:
            raise RepairError(TOO_LARGE, f"range spans {last - first + 1} > {MAX_RANGE_SPAN}")
    else:
        raise RepairError(UNKNOWN_OP, f"unknown op {op[:32]!r}")
    return obj


def _envelopes_within_limit(envelopes: Any) -> list[bytes]:
    """Envelopes in order until the next one would push the frame over the limit."""
    out: list[bytes] = []
    size = _RESPONSE_OVERHEAD
    for envelope in envelopes:
        size += len(envelope) + _ITEM_OVERHEAD
        if size > MAX_RESPONSE_BYTES:
            break
        out.append(envelope)
    return out


def handle_request(store: BatchStore, request: Any) -> dict[str, Any]:
    """Answer one request from the store. Refusals come back as {"error": code}.

    Store failures (I/O, a closed store) are not refusals and propagate: the stream
    handler logs them and answers `internal`.
    """
    try:
        req = validate_request(request)
    except RepairError as exc:
        return {"error": exc.code}
    op = req["op"]
    if op == "since":
        items, next_cursor = store.since(
            req["cursor"], domains=req.get("domains"), limit=req["limit"]
        )
        rows = [[it.cursor, it.cid, it.sender, it.seq, it.domain, it.timestamp_ms] for it in items]
        return {"items": rows, "next": next_cursor}
    if op == "get":
        wanted = list(dict.fromkeys(req["cids"]))  # each envelope once, in request order
        found = (store.get(cid) for cid in wanted)
        return {"envelopes": _envelopes_within_limit(e for e in found if e is not None)}
    if op == "blocks":
        # 64 blocks of at most MAX_BLOCK_BYTES always fit the frame.
        return {"blocks": store.get_blocks(list(dict.fromkeys(req["cids"])))}
    first, last = req["first"], req["last"]
    budget = MAX_RESPONSE_BYTES - _RESPONSE_OVERHEAD - _ITEM_OVERHEAD * MAX_RANGE_SPAN
    envelopes = store.range(req["sender"], first, last, last - first + 1, max_bytes=budget)
    return {"envelopes": _envelopes_within_limit(envelopes)}


def response_bound(request: dict[str, Any]) -> int:
    """An upper bound of the frame (length prefix included) answering a valid `request`.

    Known before the store is read, so the server reserves response budget before it
    loads envelopes or builds the frame: a `get` or `range` answer holds at most one
    envelope per cid or seq, each at most MAX_ENVELOPE_BYTES, and never more than the
    frame limit.
    """
    op = request["op"]
    if op == "since":
        body = _SINCE_OVERHEAD + request["limit"] * _SINCE_ITEM_MAX
    elif op == "blocks":
        body = _RESPONSE_OVERHEAD + len(set(request["cids"])) * (MAX_BLOCK_BYTES + _ITEM_OVERHEAD)
    else:
        count = len(set(request["cids"])) if op == "get" else request["last"] - request["first"] + 1
        body = _RESPONSE_OVERHEAD + count * (MAX_ENVELOPE_BYTES + _ITEM_OVERHEAD)
    return min(body, MAX_RESPONSE_BYTES) + _LENGTH_BYTES


# -- responses (client side, pure) --------------------------------------------------------


def _bad(detail: str) -> RepairError:
    return RepairError(BAD_RESPONSE, detail)


def _is_uint(value: Any, top: int = _U64_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top


def validate_response(request: dict[str, Any], response: Any) -> dict[str, Any]:
    """Structural check of a peer's answer to `request` (a validated request).

    Envelopes are not decoded here: the node's validator does that, exactly as for gossip.
    An {"error": code} answer raises RepairError(code, remote=True).
    """
    if not isinstance(response, dict):
        raise _bad("response must be a map")
    if "error" in response:
        code = response["error"]
        if set(response) != {"error"} or not isinstance(code, str):
            raise _bad("malformed error response")
        if code not in SERVER_CODES:
            raise _bad(f"unknown error code {code[:32]!r}")
        raise RepairError(code, "refused by peer", remote=True)
    op = request["op"]
    if op == "since":
        if set(response) != {"items", "next"}:
            raise _bad("since response needs exactly items and next")
        items, next_cursor = response["items"], response["next"]
        if not isinstance(items, list) or len(items) > request["limit"]:
            raise _bad("items must be a list of at most limit entries")
        if not _is_uint(next_cursor, _MAX_CURSOR) or next_cursor < request["cursor"]:
            raise _bad("next must be a cursor not below the requested one")
        domains = request.get("domains")
        previous = request["cursor"]
        for item in items:
            if not isinstance(item, list) or len(item) != 6:
                raise _bad("each item is [cursor, cid, sender, seq, domain, timestamp_ms]")
            cursor, cid, sender, seq, domain, timestamp_ms = item
            if not _is_uint(cursor, _MAX_CURSOR) or cursor <= previous or cursor > next_cursor:
                raise _bad("item cursors must increase, above the request and up to next")
            previous = cursor
            if not isinstance(cid, bytes) or len(cid) != dagcbor.CID_LEN:
                raise _bad(f"cid must be {dagcbor.CID_LEN} bytes")
            if not isinstance(sender, bytes) or len(sender) != PUBLIC_KEY_LEN:
                raise _bad(f"sender must be {PUBLIC_KEY_LEN} bytes")
            if not _is_uint(seq) or not _is_uint(timestamp_ms):
                raise _bad("seq and timestamp_ms must be unsigned 64-bit integers")
            if domain_problem(domain) or (domains is not None and domain not in domains):
                raise _bad("item domain is invalid or was not asked for")
        return response
    if op == "blocks":
        return _validate_blocks(request, response)
    if set(response) != {"envelopes"}:
        raise _bad(f"{op} response needs exactly envelopes")
    envelopes = response["envelopes"]
    most = len(set(request["cids"])) if op == "get" else request["last"] - request["first"] + 1
    if not isinstance(envelopes, list) or len(envelopes) > most:
        raise _bad(f"envelopes must be a list of at most {most} entries")
    if any(not isinstance(e, bytes) or not 0 < len(e) <= MAX_ENVELOPE_BYTES for e in envelopes):
        raise _bad(f"each envelope must be 1..{MAX_ENVELOPE_BYTES} bytes")
    if len(set(envelopes)) != len(envelopes):
        raise _bad("an envelope appears twice")
    return response


def _validate_blocks(request: dict[str, Any], response: Any) -> dict[str, Any]:
    if set(response) != {"blocks"}:
        raise _bad("blocks response needs exactly blocks")
    blocks = response["blocks"]
    most = len(set(request["cids"]))
    if not isinstance(blocks, list) or len(blocks) > most:
        raise _bad(f"blocks must be a list of at most {most} entries")
    if any(not isinstance(b, bytes) or not 0 < len(b) <= MAX_BLOCK_BYTES for b in blocks):
        raise _bad(f"each block must be 1..{MAX_BLOCK_BYTES} bytes")
    return response


# -- framing ------------------------------------------------------------------------------


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    """`stream.read(n)` returns whatever the muxer has buffered (possibly fewer bytes), so
    loop; end of stream before n bytes is TRUNCATED."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF:
            chunk = b""
        except BaseLibp2pError as exc:
            raise RepairError(STREAM_ERROR, f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            raise RepairError(TRUNCATED, f"stream ended after {len(buf)} of {n} bytes")
        if len(chunk) > n - len(buf):
            raise RepairError(STREAM_ERROR, "stream returned more bytes than asked for")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: INetStream, max_bytes: int) -> Any:
    """Read one length-prefixed DAG-CBOR frame and decode it.

    A length above `max_bytes` is refused (TOO_LARGE) before any of the body is read.
    """
    length = int.from_bytes(await _read_exactly(stream, _LENGTH_BYTES), "big")
    if length > max_bytes:
        raise RepairError(TOO_LARGE, f"frame of {length} bytes > {max_bytes}")
    body = await _read_exactly(stream, length)
    try:
        return dagcbor.decode(body)
    except WireError as exc:
        raise RepairError(MALFORMED, exc.detail) from exc


def encode_frame(obj: Any) -> bytes:
    body = dagcbor.encode(obj)
    return len(body).to_bytes(_LENGTH_BYTES, "big") + body


async def write_frame(stream: INetStream, obj: Any, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
    """Write one frame (one write call: the muxer chunks it itself)."""
    await _write_encoded(stream, encode_frame(obj), max_bytes)


async def _write_encoded(stream: INetStream, frame: bytes, max_bytes: int) -> None:
    if len(frame) - _LENGTH_BYTES > max_bytes:
        raise RepairError(TOO_LARGE, f"refusing to send a {len(frame)}-byte frame")
    try:
        await stream.write(frame)
    except BaseLibp2pError as exc:
        raise RepairError(STREAM_ERROR, f"{type(exc).__name__}: {exc}") from exc


async def _finish(stream: INetStream, ok: bool) -> None:
    """Close after a complete exchange, reset after a failed one; never hang or raise.

    Shielded so a cancelled handler (host shutting down) still releases the stream.
    """
    with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await (stream.close() if ok else stream.reset())
        except BaseLibp2pError as exc:
            log.debug("repair: closing stream failed: %r", exc)


#: How an answered exchange ended (see `_end_exchange`).
CLEAN, UNCLOSED, VIOLATION = "clean", "unclosed", "violation"


async def _end_exchange(stream: INetStream, ok: bool, deadline: float) -> str:
    """Server side: after an answer, close and wait (until `deadline`) for the peer's end.

    In py-libp2p 0.8.1's yamux a stream we closed stays in the muxer, with everything the
    peer sends into it, until the peer closes its side too (the receive window grows to
    MiBs on the few bytes the handshake reads, and is not enforced on receipt). So a peer
    keeping answered streams open could park megabytes in each, for the connection's life.
    The requester closes right after reading the answer; until then at most one unread
    request may still arrive (the body of a refused one). No end by the deadline: reset
    (UNCLOSED). More bytes than that: reset and close the connection (VIOLATION), because
    yamux keeps buffering data that arrives for a stream after its reset and, if the
    stream's buffer was empty at the reset (as it is after draining), never frees it.
    Returns CLEAN, UNCLOSED or VIOLATION ("failed" when there was no answer to end).
    """
    outcome = "failed"
    try:
        if ok:
            outcome = UNCLOSED
            with trio.move_on_at(deadline):
                await stream.close()
                clean = await _drained(stream, MAX_REQUEST_BYTES + _LENGTH_BYTES)
                outcome = CLEAN if clean else VIOLATION
    except BaseLibp2pError as exc:
        log.debug("repair: closing stream failed: %r", exc)
    finally:
        if outcome != CLEAN:
            await _finish(stream, False)
        if outcome == VIOLATION:
            await _drop_connection(stream)
    return outcome


async def _drained(stream: INetStream, allowed: int) -> bool:
    """Read and drop what the peer still sends: True at its end, False once more than
    `allowed` bytes came. Stream failures propagate."""
    while True:
        try:
            chunk = await stream.read(min(allowed + 1, 64 * 1024))
        except StreamEOF:
            return True
        if not chunk:
            return True
        allowed -= len(chunk)
        if allowed < 0:
            return False


async def _drop_connection(stream: INetStream) -> None:
    """Close the connection `stream` belongs to; never hang or raise."""
    conn = getattr(stream, "swarm_conn", None)
    if conn is None:
        return
    with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await conn.close()
        except Exception as exc:  # a failing close must not take the handler down
            log.debug("repair: closing connection failed: %r", exc)


# -- server -------------------------------------------------------------------------------

StreamHandler = Callable[[INetStream], Awaitable[None]]


@dataclass(frozen=True)
class RepairLimits:
    """What one node spends serving repair; see the module docstring for why.

    The budgets must hold at least one largest frame, or large answers could never be sent.
    """

    #: Exchanges one peer may run at once; more are answered "busy" unread.
    per_peer_streams: int = 4
    #: Encoded response bytes in flight, all peers together.
    response_budget_bytes: int = 16 << 20
    #: One peer's share of that budget.
    per_peer_budget_bytes: int = 8 << 20
    #: How long a request waits for budget before it is answered "busy".
    budget_wait_s: float = 2.0

    def __post_init__(self) -> None:
        if self.per_peer_streams < 1:
            raise ValueError("per_peer_streams must be at least 1")
        if min(self.response_budget_bytes, self.per_peer_budget_bytes) < MAX_RESPONSE_FRAME:
            raise ValueError(f"response budgets must hold one {MAX_RESPONSE_FRAME}-byte frame")
        if self.per_peer_budget_bytes > self.response_budget_bytes:
            raise ValueError("per_peer_budget_bytes exceeds response_budget_bytes")
        if not self.budget_wait_s >= 0:
            raise ValueError("budget_wait_s must be >= 0")


class ResponseBudget:
    """Bytes of encoded responses in flight, node-wide and per peer.

    `in_flight` is the gauge, `high_water` its peak since creation (what tests and metrics
    read). Reservations are plain integers the caller gives back exactly once. Only the
    encoded frames are counted: the envelope list a frame is built from lives only while
    it is encoded.
    """

    def __init__(self, capacity: int, per_peer: int) -> None:
        self.capacity = capacity
        self.per_peer = per_peer
        self.in_flight = 0
        self.high_water = 0
        self._by_peer: Counter[str] = Counter()
        self._released = trio.Event()

    def held_by(self, peer: str) -> int:
        return self._by_peer[peer]

    def _fits(self, peer: str, n: int) -> bool:
        return self.in_flight + n <= self.capacity and self._by_peer[peer] + n <= self.per_peer

    async def reserve(self, peer: str, n: int, wait_s: float) -> bool:
        """Take `n` bytes for `peer`, waiting at most `wait_s` for others to release.

        False if they did not fit in time (the caller answers "busy"). No checkpoint
        between the check and the take, so a cancelled waiter never holds anything.
        """
        with trio.move_on_after(wait_s):
            while not self._fits(peer, n):
                await self._released.wait()
        if not self._fits(peer, n):
            return False
        self.resize(peer, 0, n)
        return True

    def resize(self, peer: str, old: int, new: int) -> None:
        """Change a reservation of `old` bytes to `new` (0 releases it).

        Growing does not wait or check: it only happens if a response outgrew its bound
        (a bug, logged by the caller), and refusing then would not free anything.
        """
        self.in_flight += new - old
        self._by_peer[peer] += new - old
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]
        self.high_water = max(self.high_water, self.in_flight)
        if new < old:
            self._released.set()
            self._released = trio.Event()


class RepairServer:
    """The stream handler: `host.set_stream_handler(PROTOCOL_ID, server)`.

    It never raises (a peer must not be able to crash the host): every outcome is logged
    and counted in `counts` under "served:<op>", "refused:<code>", "timeout",
    "stream:<code>" or "internal"; a "busy" refusal also under "busy:streams" or
    "busy:budget" (which limit refused it). An answered stream the peer did not close in
    time is counted "unclosed" and reset; one it kept writing into, "violation", and its
    connection is closed. `active` maps peer ids to their running exchanges (refused
    streams not included), `running` counts all streams being handled, `budget` is the
    response budget.
    """

    def __init__(
        self,
        store_getter: Callable[[], BatchStore],
        counts: Counter[str],
        limits: RepairLimits,
    ) -> None:
        self.store_getter = store_getter
        self.counts = counts
        self.limits = limits
        self.budget = ResponseBudget(limits.response_budget_bytes, limits.per_peer_budget_bytes)
        self.active: Counter[str] = Counter()
        self.running = 0

    async def __call__(self, stream: INetStream) -> None:
        peer = _peer_of(stream)
        over = self.active[peer] >= self.limits.per_peer_streams
        if not over:
            self.active[peer] += 1  # no checkpoint since the check: the limit is exact
        self.running += 1
        try:
            await self._handle(stream, peer, over)
        finally:
            self.running -= 1
            if not over:
                self.active[peer] -= 1
                if self.active[peer] <= 0:
                    del self.active[peer]

    async def _handle(self, stream: INetStream, peer: str, over: bool) -> None:
        ok = False
        deadline = trio.current_time() + STREAM_TIMEOUT
        try:
            with trio.fail_at(deadline):
                if over:
                    await self._refuse(stream, BUSY, "streams")
                else:
                    await self._serve(stream, peer)
            ok = True
        except trio.TooSlowError:
            self.counts["timeout"] += 1
            log.info("repair: request from %s timed out", peer)
        except RepairError as exc:
            self.counts[f"stream:{exc.code}"] += 1
            log.info("repair: exchange with %s failed: %s", peer, exc)
        except Exception:
            self.counts[INTERNAL] += 1
            log.exception("repair: handler failed for %s", peer)
        finally:
            # The requester has until the exchange's deadline to read the answer and close.
            end = max(deadline, trio.current_time() + _CLOSE_TIMEOUT)
            outcome = await _end_exchange(stream, ok, end)
            if outcome in (UNCLOSED, VIOLATION):
                self.counts[outcome] += 1
                log.info("repair: %s after answering %s", outcome, peer)

    async def _refuse(self, stream: INetStream, code: str, busy: str = "") -> None:
        """Answer {"error": code}: a few bytes, outside the budget, so refusing always works."""
        self.counts[f"refused:{code}"] += 1
        if busy:
            self.counts[f"busy:{busy}"] += 1
        await write_frame(stream, {"error": code})

    async def _serve(self, stream: INetStream, peer: str) -> None:
        try:
            req = validate_request(await read_frame(stream, MAX_REQUEST_BYTES))
        except RepairError as exc:
            if exc.code not in (TOO_LARGE, MALFORMED, BAD_REQUEST, UNKNOWN_OP):
                raise  # truncated or broken stream: nobody to answer
            await self._refuse(stream, BAD_REQUEST if exc.code == MALFORMED else exc.code)
            return
        held = response_bound(req)
        if not await self.budget.reserve(peer, held, self.limits.budget_wait_s):
            await self._refuse(stream, BUSY, "budget")
            return
        try:
            frame = self._answer(req, peer)
            if len(frame) > held:
                log.error("repair: %d-byte answer exceeds its bound %d", len(frame), held)
            self.budget.resize(peer, held, len(frame))
            held = len(frame)
            await _write_encoded(stream, frame, MAX_RESPONSE_BYTES)
        finally:
            self.budget.resize(peer, held, 0)

    def _answer(self, req: dict[str, Any], peer: str) -> bytes:
        """The encoded answer; the envelope list it is built from is dropped on return."""
        try:
            response = handle_request(self.store_getter(), req)
        except Exception:
            log.exception("repair: store failed answering %s", peer)
            response = {"error": INTERNAL}
        if "error" in response:
            self.counts[f"refused:{response['error']}"] += 1
        else:
            self.counts[f"served:{req['op']}"] += 1
        return encode_frame(response)


def make_handler(
    store_getter: Callable[[], BatchStore],
    *,
    counts: Counter[str] | None = None,
    limits: RepairLimits | None = None,
) -> RepairServer:
    """The stream handler for `host.set_stream_handler(PROTOCOL_ID, handler)`.

    `store_getter` is called per request so the node can swap or reopen its store.
    `limits` defaults to `RepairLimits()`; the returned `RepairServer` exposes `counts`,
    `active` and `budget` for metrics.
    """
    tally: Counter[str] = counts if counts is not None else Counter()
    return RepairServer(store_getter, tally, limits if limits is not None else RepairLimits())


def _peer_of(stream: INetStream) -> str:
    conn = getattr(stream, "muxed_conn", None)
    return str(getattr(conn, "peer_id", "?"))


# -- client -------------------------------------------------------------------------------


async def request(
    host: IHost, peer_id: ID, obj: dict[str, Any], timeout: float = STREAM_TIMEOUT
) -> dict[str, Any]:
    """Send one request to `peer_id` and return its structurally checked response.

    Raises RepairError: the request itself is invalid (same codes a server would send),
    UNREACHABLE, UNSUPPORTED (connected, but the peer does not speak PROTOCOL_ID), TIMEOUT,
    TRUNCATED, TOO_LARGE, MALFORMED, BAD_RESPONSE, STREAM_ERROR, or the peer's own code
    with `remote=True` (BUSY among them: try later).
    """
    req = validate_request(obj)
    try:
        with trio.fail_after(timeout):
            try:
                stream = await host.new_stream(peer_id, [PROTOCOL_ID])
            except BaseLibp2pError as exc:
                code = UNSUPPORTED if _unsupported(exc) else UNREACHABLE
                raise RepairError(code, f"{type(exc).__name__}: {exc}") from exc
            ok = False
            try:
                await write_frame(stream, req, MAX_REQUEST_BYTES)
                response = await read_frame(stream, MAX_RESPONSE_BYTES)
                ok = True
            finally:
                await _finish(stream, ok)
    except trio.TooSlowError:
        raise RepairError(TIMEOUT, f"no answer from {peer_id} within {timeout} s") from None
    return validate_response(req, response)


def _unsupported(exc: BaseException) -> bool:
    """Did stream negotiation fail because the peer answered "na" to PROTOCOL_ID?

    py-libp2p 0.8.1 raises ProtocolNotSupportedError on "na" but catches it in
    `select_one_of`, which raises a plain MultiselectClientError("protocols not supported:
    ..."); `new_stream` wraps that in StreamFailure. So the type is checked (for versions
    that keep it) and, failing that, the message of the cause chain.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ProtocolNotSupportedError):
            return True
        if isinstance(cause, MultiselectClientError) and str(cause).startswith(
            "protocols not supported"
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@dataclass
class _Step:
    delay: float
    next_try: float
    failures: int


class RepairBackoff:
    """When to ask a peer again after a failed repair, so failing peers cost little.

    The repair loop runs every few seconds; without this, a connected peer that does not
    speak the protocol (or is busy, or broken) is asked, and logged, on every pass. After
    each failure the wait doubles from `initial_s`, up to `max_s` for peers that do not
    speak the protocol (UNSUPPORTED: unlikely to change soon) and `transient_max_s` for
    other failures (BUSY, timeouts, bad answers). A success forgets the peer. Times are
    caller-supplied monotonic seconds (`trio.current_time()`), so tests inject them.

    Use in the node's pass over its peers (`failed` returns the wait before the next try,
    so a log line per failure is one line per back-off step, not one per pass)::

        key = str(peer)
        now = trio.current_time()
        if not backoff.should_try(key, now):
            continue
        try:
            await self.sync_with(peer)
        except repair.RepairError as exc:
            wait = backoff.failed(key, now, unsupported=exc.code == repair.UNSUPPORTED)
            log.info("repair with %s failed: %s; next try in %.0f s", peer, exc, wait)
        else:
            backoff.succeeded(key)

    (A pass cut short by the per-peer time budget is a failure too: unsupported=False.)
    At most `max_peers` peers are remembered; the least recently failed is forgotten first.
    """

    def __init__(
        self,
        *,
        initial_s: float = 10.0,
        max_s: float = 600.0,
        transient_max_s: float = 60.0,
        max_peers: int = 4096,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.transient_max_s = transient_max_s
        self.max_peers = max_peers
        self._steps: dict[str, _Step] = {}

    def should_try(self, peer_key: str, now: float) -> bool:
        step = self._steps.get(peer_key)
        return step is None or now >= step.next_try

    def failed(self, peer_key: str, now: float, unsupported: bool) -> float:
        """Record a failure at `now`; return the wait before the peer is tried again."""
        step = self._steps.pop(peer_key, None)
        cap = self.max_s if unsupported else self.transient_max_s
        delay = self.initial_s if step is None else step.delay * 2
        delay = min(delay, cap)
        failures = 1 if step is None else step.failures + 1
        self._steps[peer_key] = _Step(delay, now + delay, failures)
        while len(self._steps) > self.max_peers:
            del self._steps[next(iter(self._steps))]
        return delay

    def succeeded(self, peer_key: str) -> None:
        self._steps.pop(peer_key, None)

    def failures(self, peer_key: str) -> int:
        """Failures in a row (0 for a peer in good standing)."""
        step = self._steps.get(peer_key)
        return 0 if step is None else step.failures

    def __len__(self) -> int:
        return len(self._steps)
