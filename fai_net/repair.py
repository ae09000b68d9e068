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
{envelopes}. Envelope lists are cut before the response frame would exceed its limit; the
requester asks again for the rest. Failures are {"error": code}.

The code is split so each part is testable alone: `validate_request` and `handle_request`
are pure (store in, dict out), `read_frame`/`write_frame` do the framing, `make_handler` is
the server side and `request` the client side.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from fai_core import dagcbor
from fai_core.errors import FaiError, WireError
from fai_core.experience import PUBLIC_KEY_LEN, domain_problem
from fai_core.wire import MAX_ENVELOPE_BYTES
from fai_net.batch_store import BatchStore

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
SERVER_CODES = frozenset({BAD_REQUEST, TOO_LARGE, UNKNOWN_OP, INTERNAL})
#: Error codes raised locally (framing, transport, bad responses).
TRUNCATED = "truncated"
MALFORMED = "malformed"
BAD_RESPONSE = "bad_response"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
STREAM_ERROR = "stream_error"

# Encoded size of one byte string inside a CBOR array is len + at most 9 header bytes; the
# response map around the list ({"envelopes": [...]}) costs at most 16.
_ITEM_OVERHEAD = 9
_RESPONSE_OVERHEAD = 16


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
    elif op == "get":
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
    first, last = req["first"], req["last"]
    budget = MAX_RESPONSE_BYTES - _RESPONSE_OVERHEAD - _ITEM_OVERHEAD * MAX_RANGE_SPAN
    envelopes = store.range(req["sender"], first, last, last - first + 1, max_bytes=budget)
    return {"envelopes": _envelopes_within_limit(envelopes)}


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
    frame = encode_frame(obj)
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


# -- server -------------------------------------------------------------------------------

StreamHandler = Callable[[INetStream], Awaitable[None]]


def make_handler(
    store_getter: Callable[[], BatchStore], *, counts: Counter[str] | None = None
) -> StreamHandler:
    """The stream handler for `host.set_stream_handler(PROTOCOL_ID, handler)`.

    `store_getter` is called per request so the node can swap or reopen its store. The
    handler never raises (a peer must not be able to crash the host): every outcome is
    logged and counted in `counts` under "served:<op>", "refused:<code>", "timeout",
    "stream:<code>" or "internal".
    """
    tally: Counter[str] = counts if counts is not None else Counter()

    async def handler(stream: INetStream) -> None:
        ok = False
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                await _serve(stream, store_getter, tally)
            ok = True
        except trio.TooSlowError:
            tally["timeout"] += 1
            log.info("repair: request from %s timed out", _peer_of(stream))
        except RepairError as exc:
            tally[f"stream:{exc.code}"] += 1
            log.info("repair: exchange with %s failed: %s", _peer_of(stream), exc)
        except Exception:
            tally[INTERNAL] += 1
            log.exception("repair: handler failed for %s", _peer_of(stream))
        finally:
            await _finish(stream, ok)

    return handler


async def _serve(
    stream: INetStream, store_getter: Callable[[], BatchStore], tally: Counter[str]
) -> None:
    try:
        request = await read_frame(stream, MAX_REQUEST_BYTES)
    except RepairError as exc:
        if exc.code not in (TOO_LARGE, MALFORMED):
            raise  # truncated or broken stream: nobody to answer
        response: dict[str, Any] = {"error": TOO_LARGE if exc.code == TOO_LARGE else BAD_REQUEST}
    else:
        try:
            response = handle_request(store_getter(), request)
        except Exception:
            log.exception("repair: store failed answering %s", _peer_of(stream))
            response = {"error": INTERNAL}
    if "error" in response:
        tally[f"refused:{response['error']}"] += 1
    else:
        tally[f"served:{request['op']}"] += 1
    await write_frame(stream, response)


def _peer_of(stream: INetStream) -> str:
    conn = getattr(stream, "muxed_conn", None)
    return str(getattr(conn, "peer_id", "?"))


# -- client -------------------------------------------------------------------------------


async def request(
    host: IHost, peer_id: ID, obj: dict[str, Any], timeout: float = STREAM_TIMEOUT
) -> dict[str, Any]:
    """Send one request to `peer_id` and return its structurally checked response.

    Raises RepairError: the request itself is invalid (same codes a server would send),
    UNREACHABLE, TIMEOUT, TRUNCATED, TOO_LARGE, MALFORMED, BAD_RESPONSE, STREAM_ERROR, or
    the peer's own code with `remote=True`.
    """
    req = validate_request(obj)
    try:
        with trio.fail_after(timeout):
            try:
                stream = await host.new_stream(peer_id, [PROTOCOL_ID])
            except BaseLibp2pError as exc:
                raise RepairError(UNREACHABLE, f"{type(exc).__name__}: {exc}") from exc
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
