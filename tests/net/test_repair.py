"""The repair protocol: pure request handling, framing, and two real libp2p hosts."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as Noise

from fai_core import dagcbor, wire
from fai_net.admission.store import BatchStore
from fai_net.p2p import repair
from fai_net.p2p.repair import RepairError
from tests.support.net import KEY, OTHER_KEY, T0, batch

CID = b"\x01" * 36
SENDER = b"\x02" * 32


@pytest.fixture
def store(tmp_path):
    with BatchStore.open(tmp_path / "store") as s:
        for seq in range(5):
            s.put(batch(seq), received_ms=0, origin="gossip")
        s.put(batch(0, key=OTHER_KEY, domain="ops"), received_ms=0, origin="gossip")
        yield s


def _big(signed: wire.SignedBatch, size: int) -> wire.SignedBatch:
    """The same batch metadata with an envelope of `size` bytes: the store and the protocol
    never decode envelopes, so this exercises the byte limits without building huge batches."""
    return dataclasses.replace(signed, envelope=signed.cid + bytes(size - len(signed.cid)))


# -- validate_request ---------------------------------------------------------------------

GOOD_REQUESTS = [
    {"op": "since", "cursor": 0, "limit": 1},
    {"op": "since", "cursor": (1 << 63) - 1, "limit": 1024, "domains": ["coding", "ops"]},
    {"op": "get", "cids": [CID] * 64},
    {"op": "range", "sender": SENDER, "first": 0, "last": 255},
    {"op": "range", "sender": SENDER, "first": (1 << 64) - 1, "last": (1 << 64) - 1},
]


@pytest.mark.parametrize("req", GOOD_REQUESTS)
def test_valid_requests_pass(req):
    assert repair.validate_request(req) is req


BAD_REQUESTS = [
    ("bad_request", ["since"]),
    ("bad_request", b"op"),
    ("bad_request", {}),
    ("bad_request", {"op": 1}),
    ("bad_request", {"op": b"since"}),
    ("unknown_op", {"op": "delete"}),
    ("unknown_op", {"op": ""}),
    ("bad_request", {"op": "since", "cursor": 0}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 5, "extra": 1}),
    ("bad_request", {"op": "since", "cursor": -1, "limit": 5}),
    ("bad_request", {"op": "since", "cursor": True, "limit": 5}),
    ("bad_request", {"op": "since", "cursor": "0", "limit": 5}),
    ("bad_request", {"op": "since", "cursor": 1 << 63, "limit": 5}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 0}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 2.0}),
    ("too_large", {"op": "since", "cursor": 0, "limit": 1025}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 5, "domains": "coding"}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 5, "domains": []}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 5, "domains": ["Coding"]}),
    ("bad_request", {"op": "since", "cursor": 0, "limit": 5, "domains": [b"coding"]}),
    ("too_large", {"op": "since", "cursor": 0, "limit": 5, "domains": ["d"] * 65}),
    ("bad_request", {"op": "get"}),
    ("bad_request", {"op": "get", "cids": []}),
    ("bad_request", {"op": "get", "cids": CID}),
    ("bad_request", {"op": "get", "cids": [CID[:35]]}),
    ("bad_request", {"op": "get", "cids": [CID.hex()]}),
    ("too_large", {"op": "get", "cids": [CID] * 65}),
    ("bad_request", {"op": "range", "sender": SENDER[:31], "first": 0, "last": 1}),
    ("bad_request", {"op": "range", "sender": SENDER.hex(), "first": 0, "last": 1}),
    ("bad_request", {"op": "range", "sender": SENDER, "first": 2, "last": 1}),
    ("bad_request", {"op": "range", "sender": SENDER, "first": -1, "last": 1}),
    ("bad_request", {"op": "range", "sender": SENDER, "first": 0}),
    ("bad_request", {"op": "range", "sender": SENDER, "first": 0, "last": 1 << 64}),
    ("too_large", {"op": "range", "sender": SENDER, "first": 0, "last": 256}),
]


@pytest.mark.parametrize(("code", "req"), BAD_REQUESTS)
def test_invalid_requests_are_refused_with_their_code(store, code, req):
    with pytest.raises(RepairError) as info:
        repair.validate_request(req)
    assert info.value.code == code and not info.value.remote
    assert repair.handle_request(store, req) == {"error": code}


# -- handle_request -----------------------------------------------------------------------


def test_since_lists_the_inventory_and_honours_filters(store):
    resp = repair.handle_request(store, {"op": "since", "cursor": 0, "limit": 1024})
    assert resp["next"] == 6
    assert [row[0] for row in resp["items"]] == [1, 2, 3, 4, 5, 6]
    first = batch(0)
    assert resp["items"][0] == [1, first.cid, KEY.public_key, 0, "coding", T0]
    page = repair.handle_request(store, {"op": "since", "cursor": 2, "limit": 2})
    assert [row[0] for row in page["items"]] == [3, 4] and page["next"] == 4
    ops = repair.handle_request(store, {"op": "since", "cursor": 0, "limit": 9, "domains": ["ops"]})
    assert [row[4] for row in ops["items"]] == ["ops"] and ops["next"] == 6
    assert repair.handle_request(store, {"op": "since", "cursor": 6, "limit": 9}) == {
        "items": [],
        "next": 6,
    }
    assert len(repair.encode_frame(resp)) < repair.MAX_RESPONSE_BYTES


def test_get_returns_known_envelopes_once_in_request_order(store):
    b3, b1 = batch(3), batch(1)
    req = {"op": "get", "cids": [b3.cid, CID, b1.cid, b3.cid]}
    assert repair.handle_request(store, req) == {"envelopes": [b3.envelope, b1.envelope]}
    assert repair.handle_request(store, {"op": "get", "cids": [CID]}) == {"envelopes": []}


def test_range_returns_a_senders_envelopes_by_seq(store):
    req = {"op": "range", "sender": KEY.public_key, "first": 1, "last": 3}
    resp = repair.handle_request(store, req)
    assert resp == {"envelopes": [batch(s).envelope for s in (1, 2, 3)]}
    req = {"op": "range", "sender": OTHER_KEY.public_key, "first": 0, "last": 255}
    other = batch(0, key=OTHER_KEY, domain="ops")
    assert repair.handle_request(store, req) == {"envelopes": [other.envelope]}


def test_get_and_range_stop_before_the_response_frame_limit(tmp_path):
    with BatchStore.open(tmp_path) as s:
        bigs = [_big(batch(seq), wire.MAX_ENVELOPE_BYTES) for seq in range(6)]
        for b in bigs:
            s.put(b, received_ms=0, origin="repair")
        get = repair.handle_request(s, {"op": "get", "cids": [b.cid for b in reversed(bigs)]})
        assert get["envelopes"] == [b.envelope for b in reversed(bigs)][:4]
        assert len(repair.encode_frame(get)) - 4 <= repair.MAX_RESPONSE_BYTES
        req = {"op": "range", "sender": KEY.public_key, "first": 0, "last": 9}
        rng = repair.handle_request(s, req)
        assert rng["envelopes"] == [b.envelope for b in bigs][:4]
        assert len(repair.encode_frame(rng)) - 4 <= repair.MAX_RESPONSE_BYTES
        # The requester asks again from where the answer stopped and gets the rest.
        rest = repair.handle_request(s, {**req, "first": 4})
        assert rest["envelopes"] == [b.envelope for b in bigs][4:]


# -- validate_response --------------------------------------------------------------------

SINCE = {"op": "since", "cursor": 10, "limit": 2, "domains": ["coding"]}
ITEM = [11, CID, SENDER, 0, "coding", T0]
GET = {"op": "get", "cids": [CID, b"\x03" * 36]}
RANGE = {"op": "range", "sender": SENDER, "first": 5, "last": 5}


def test_well_formed_responses_pass():
    ok = {"items": [ITEM, [12, *ITEM[1:]]], "next": 40}
    assert repair.validate_response(SINCE, ok) is ok
    assert repair.validate_response(SINCE, {"items": [], "next": 10})
    assert repair.validate_response(GET, {"envelopes": [b"a", b"b"]})
    assert repair.validate_response(RANGE, {"envelopes": [b"a"]})


BAD_RESPONSES = [
    (SINCE, [ITEM]),
    (SINCE, {"items": [ITEM]}),
    (SINCE, {"items": [ITEM], "next": 11, "x": 1}),
    (SINCE, {"items": [ITEM] * 3, "next": 50}),  # more than limit
    (SINCE, {"items": [ITEM, ITEM], "next": 50}),  # cursor not increasing
    (SINCE, {"items": [], "next": 9}),  # next below the requested cursor
    (SINCE, {"items": [ITEM], "next": 10}),  # item beyond next
    (SINCE, {"items": [[10, *ITEM[1:]]], "next": 11}),  # not above the requested cursor
    (SINCE, {"items": [ITEM[:5]], "next": 11}),
    (SINCE, {"items": [[11, CID[:35], *ITEM[2:]]], "next": 11}),
    (SINCE, {"items": [[11, CID, SENDER[:31], *ITEM[3:]]], "next": 11}),
    (SINCE, {"items": [[11, CID, SENDER, "0", "coding", T0]], "next": 11}),
    (SINCE, {"items": [[11, CID, SENDER, 0, "ops", T0]], "next": 11}),  # not asked for
    (SINCE, {"items": [[11, CID, SENDER, 0, "Bad Domain", T0]], "next": 11}),
    (GET, {"envelopes": [b"a", b"b", b"c"]}),  # more than asked
    (GET, {"envelopes": [b"a", b"a"]}),
    (GET, {"envelopes": [b""]}),
    (GET, {"envelopes": ["a"]}),
    (GET, {"envelopes": b"a"}),
    (GET, {"envelopes": [b"a"], "more": True}),
    (RANGE, {"envelopes": [b"a", b"b"]}),
    (RANGE, {"error": "bad_request", "x": 1}),
    (RANGE, {"error": "no_such_code"}),
    (RANGE, {"error": 7}),
]


@pytest.mark.parametrize(("req", "resp"), BAD_RESPONSES)
def test_malformed_responses_raise_bad_response(req, resp):
    with pytest.raises(RepairError) as info:
        repair.validate_response(req, resp)
    assert info.value.code == "bad_response" and not info.value.remote


@pytest.mark.parametrize("code", ["bad_request", "too_large", "unknown_op", "internal", "busy"])
def test_error_answers_raise_the_peers_code(code):
    with pytest.raises(RepairError) as info:
        repair.validate_response(GET, {"error": code})
    assert info.value.code == code and info.value.remote


# -- framing over a scripted stream -------------------------------------------------------


class ScriptedStream:
    """An INetStream stand-in: serves `incoming` in pieces of at most `chunk` bytes (as a
    muxer may), then ends like py-libp2p does (StreamEOF), or with `end` if given."""

    def __init__(self, incoming: bytes = b"", chunk: int = 1, end: Exception | None = None):
        self.incoming = bytearray(incoming)
        self.chunk = chunk
        self.end = end
        self.written = bytearray()
        self.consumed = 0
        self.closed = self.reset_called = False

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.incoming:
            raise self.end or StreamEOF()
        take = min(n or len(self.incoming), self.chunk, len(self.incoming))
        out = bytes(self.incoming[:take])
        del self.incoming[:take]
        self.consumed += take
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.reset_called = True


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


def test_frames_round_trip_through_one_byte_reads():
    obj = {"op": "get", "cids": [CID]}
    out = ScriptedStream()
    _run(lambda: repair.write_frame(out, obj))
    assert bytes(out.written[:4]) == (len(out.written) - 4).to_bytes(4, "big")
    stream = ScriptedStream(bytes(out.written) + b"next frame", chunk=1)
    assert _run(lambda: repair.read_frame(stream, 100)) == obj
    assert bytes(stream.incoming) == b"next frame"  # read exactly one frame, no more


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "truncated"),
        (b"\x00\x00", "truncated"),
        (b"\x00\x00\x00\x05\xa1", "truncated"),
        (b"\x00\x00\x00\x00", "malformed"),
        (b"\x00\x00\x00\x01\xff", "malformed"),
        (b"\x00\x00\x00\x02\xf9\x00", "malformed"),  # a float: outside FAI's subset
        (b"\x00\x00\x00\x02\x18\x01", "malformed"),  # non-canonical integer head
    ],
)
def test_read_frame_refuses_short_and_malformed_frames(data, code):
    with pytest.raises(RepairError) as info:
        _run(lambda: repair.read_frame(ScriptedStream(data, chunk=3), 1000))
    assert info.value.code == code


def test_oversized_length_prefix_is_refused_without_reading_the_body():
    stream = ScriptedStream((101).to_bytes(4, "big") + bytes(101), chunk=1000)
    with pytest.raises(RepairError) as info:
        _run(lambda: repair.read_frame(stream, 100))
    assert info.value.code == "too_large"
    assert stream.consumed == 4


def test_a_reset_stream_is_a_stream_error_and_empty_reads_are_eof():
    with pytest.raises(RepairError) as info:
        _run(lambda: repair.read_frame(ScriptedStream(b"\x00", end=StreamReset()), 10))
    assert info.value.code == "stream_error"

    class Empty(ScriptedStream):
        async def read(self, n=None):
            return b""

    with pytest.raises(RepairError) as info:
        _run(lambda: repair.read_frame(Empty(), 10))
    assert info.value.code == "truncated"


def test_write_frame_refuses_to_send_over_the_limit():
    out = ScriptedStream()
    with pytest.raises(RepairError) as info:
        _run(lambda: repair.write_frame(out, {"x": bytes(200)}, max_bytes=100))
    assert info.value.code == "too_large" and not out.written


# -- the stream handler over a scripted stream --------------------------------------------


def _serve(data: bytes, getter: Callable[[], Any], counts: Counter) -> ScriptedStream:
    stream = ScriptedStream(data, chunk=7)
    _run(lambda: repair.make_handler(getter, counts=counts)(stream))
    return stream


def _answer(stream: ScriptedStream) -> Any:
    body = bytes(stream.written)
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    return dagcbor.decode(body[4:])


def test_handler_answers_and_closes(store):
    counts: Counter = Counter()
    b = batch(2)
    stream = _serve(repair.encode_frame({"op": "get", "cids": [b.cid]}), lambda: store, counts)
    assert _answer(stream) == {"envelopes": [b.envelope]}
    assert stream.closed and not stream.reset_called
    assert counts == {"served:get": 1}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (repair.encode_frame({"op": "nope"}), "unknown_op"),
        (repair.encode_frame({"op": "get", "cids": [CID] * 65}), "too_large"),
        (repair.encode_frame({"op": "get", "cids": "x"}), "bad_request"),
        (repair.encode_frame(["op", "get"]), "bad_request"),
        (b"\x00\x00\x00\x03abc", "bad_request"),  # not CBOR
        ((repair.MAX_REQUEST_BYTES + 1).to_bytes(4, "big") + b"x" * 100, "too_large"),
    ],
)
def test_handler_refuses_bad_requests_with_a_code(store, data, code):
    counts: Counter = Counter()
    stream = _serve(data, lambda: store, counts)
    assert _answer(stream) == {"error": code}
    assert counts == {f"refused:{code}": 1}


def test_handler_survives_truncation_store_failure_and_silence(store, monkeypatch):
    counts: Counter = Counter()
    stream = _serve(b"\x00\x00\x01", lambda: store, counts)
    assert not stream.written and stream.reset_called
    assert counts == {"stream:truncated": 1}

    def broken():
        raise OSError("disk on fire")

    counts.clear()
    frame = repair.encode_frame({"op": "since", "cursor": 0, "limit": 1})
    stream = _serve(frame, broken, counts)
    assert _answer(stream) == {"error": "internal"}
    assert counts == {"refused:internal": 1}

    class Silent(ScriptedStream):
        async def read(self, n=None):
            await trio.sleep_forever()

    monkeypatch.setattr(repair, "STREAM_TIMEOUT", 0.05)
    counts.clear()
    silent = Silent()
    _run(lambda: repair.make_handler(lambda: store, counts=counts)(silent))
    assert counts == {"timeout": 1} and silent.reset_called


# -- two real libp2p hosts ----------------------------------------------------------------


def _host(seed: bytes):
    kp = create_new_key_pair(seed)
    noise = Noise(libp2p_keypair=kp, noise_privkey=x25519().private_key, early_data=None)
    return new_host(key_pair=kp, sec_opt={NOISE: noise}, muxer_preference="YAMUX")


def _frame_handler(payload: bytes, *, then_close: bool = True):
    """A malicious server: reads the request, answers `payload` verbatim."""

    async def handler(stream):
        closed = False
        try:
            await repair.read_frame(stream, repair.MAX_REQUEST_BYTES)
            await stream.write(payload)
            if then_close:
                await stream.close()
                closed = True
            else:
                await trio.sleep_forever()
        finally:
            if not closed:  # a reset after close would turn the client's EOF into a reset
                with trio.move_on_after(1, shield=True):
                    await stream.reset()

    return handler


def test_two_hosts_repair_since_get_range_and_survive_a_malicious_server(tmp_path):
    with BatchStore.open(tmp_path / "a") as served:
        originals = [batch(seq, domain="coding" if seq % 2 else "ops") for seq in range(12)]
        for b in originals:
            served.put(b, received_ms=0, origin="gossip")
        bigs = [_big(batch(seq, key=OTHER_KEY), 900_000) for seq in range(3)]
        for b in bigs:
            served.put(b, received_ms=0, origin="gossip")
        counts: Counter = Counter()
        good = repair.make_handler(lambda: served, counts=counts)
        outcome: dict[str, Any] = {}
        trio.run(_two_hosts, served, good, originals, bigs, outcome)
    assert outcome["done"]
    assert counts["served:since"] >= 2 and counts["served:get"] >= 2
    assert counts["served:range"] == 1


async def _two_hosts(served, good, originals, bigs, outcome) -> None:
    a, b = _host(hashlib.sha256(b"a").digest()), _host(hashlib.sha256(b"b").digest())
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(a.run(listen_addrs=listen))
            await stack.enter_async_context(b.run(listen_addrs=listen))
            a.set_stream_handler(repair.PROTOCOL_ID, good)
            await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
            peer = a.get_id()

            # since, paged, with a domain filter
            cursor, items = 0, []
            while True:
                req = {"op": "since", "cursor": cursor, "limit": 4, "domains": ["ops"]}
                resp = await repair.request(b, peer, req)
                items += resp["items"]
                if resp["next"] == cursor:
                    break
                cursor = resp["next"]
            ops = [o for o in originals if o.batch.domain == "ops"]
            assert [row[1] for row in items] == [o.cid for o in ops]

            # get: byte-identical envelopes
            resp = await repair.request(b, peer, {"op": "get", "cids": [o.cid for o in ops]})
            assert resp["envelopes"] == [o.envelope for o in ops]
            for env, o in zip(resp["envelopes"], ops, strict=True):
                assert wire.decode_envelope(env, expected_cid=o.cid).batch.seq == o.batch.seq

            # get: a multi-megabyte answer crosses the stream intact
            resp = await repair.request(b, peer, {"op": "get", "cids": [x.cid for x in bigs]})
            assert resp["envelopes"] == [x.envelope for x in bigs]

            # range
            req = {"op": "range", "sender": KEY.public_key, "first": 3, "last": 7}
            resp = await repair.request(b, peer, req)
            assert resp["envelopes"] == [o.envelope for o in originals[3:8]]

            # an invalid request is refused before it is sent ...
            with pytest.raises(RepairError) as info:
                await repair.request(b, peer, {"op": "get", "cids": [CID] * 65})
            assert info.value.code == "too_large" and not info.value.remote
            # ... and by the server if sent anyway, over a real stream
            raw = await b.new_stream(peer, [repair.PROTOCOL_ID])
            await raw.write(repair.encode_frame({"op": "get", "cids": [CID] * 65}))
            assert await repair.read_frame(raw, 1000) == {"error": "too_large"}
            await raw.close()

            # a malicious server: each bad answer is a RepairError, not a crash
            cases = [
                ((5 * 1024 * 1024).to_bytes(4, "big"), "too_large"),
                (b"\x00\x00\x00\x04\xff\xff\xff\xff", "malformed"),
                (b"\x00\x00\x00\x10\xa1", "truncated"),
                (repair.encode_frame({"envelopes": "not a list"}), "bad_response"),
                (repair.encode_frame({"envelopes": [b"x"] * 9}), "bad_response"),
                (repair.encode_frame({"error": "unknown_op"}), "unknown_op"),
            ]
            for payload, code in cases:
                a.set_stream_handler(repair.PROTOCOL_ID, _frame_handler(payload))
                with pytest.raises(RepairError) as info:
                    await repair.request(b, peer, {"op": "get", "cids": [CID]})
                assert info.value.code == code, payload[:8]
                assert info.value.remote == (code == "unknown_op")

            a.set_stream_handler(repair.PROTOCOL_ID, _frame_handler(b"", then_close=False))
            with pytest.raises(RepairError) as info:
                await repair.request(b, peer, {"op": "get", "cids": [CID]}, timeout=0.3)
            assert info.value.code == "timeout"

            # a peer nobody can reach
            stranger = _host(hashlib.sha256(b"c").digest()).get_id()
            with pytest.raises(RepairError) as info:
                await repair.request(b, stranger, {"op": "get", "cids": [CID]}, timeout=5)
            assert info.value.code == "unreachable"

            # and the client still works against an honest server afterwards
            a.set_stream_handler(repair.PROTOCOL_ID, good)
            resp = await repair.request(b, peer, {"op": "since", "cursor": 0, "limit": 1})
            assert resp["items"][0][1] == originals[0].cid
            outcome["done"] = True
