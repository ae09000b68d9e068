"""Repair server limits (per-peer streams, response budget) and the client's back-off.

The hostile peer here is the measured attack: many `get` streams whose multi-megabyte
answers it never reads. Real py-libp2p hosts on 127.0.0.1; STREAM_TIMEOUT is shortened so
the stuck exchanges end within the test.

A peer that never reads never grants yamux window either, so the server's writes stall.
py-libp2p's own yamux grows a stream's receive window on the few bytes the multistream
handshake reads (256 KiB to 2-4 MiB before the application reads anything), which would
let the answers land in the attacker's buffers instead; `_withhold_window` makes the
hostile host's yamux grant nothing, as a hostile implementation (or one that stops reading
its TCP socket) would.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from test_repair import ScriptedStream, _big, _host

from fai_core import dagcbor, wire
from fai_net.admission.store import BatchStore
from fai_net.p2p import repair
from fai_net.p2p.repair import RepairBackoff, RepairError, RepairLimits, ResponseBudget
from tests.support.net import KEY, OTHER_KEY, batch, key

LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
#: Envelopes of ~0.95 MB: a `get` of two is a ~1.9 MB answer to a ~90-byte request.
BIG = 950_000


@pytest.fixture
def big_store(tmp_path):
    with BatchStore.open(tmp_path / "store") as s:
        bigs = [_big(batch(seq, key=OTHER_KEY), BIG) for seq in range(8)]
        for b in bigs:
            s.put(b, received_ms=0, origin="gossip")
        yield s, bigs


def _get(*signed: wire.SignedBatch) -> dict[str, Any]:
    return {"op": "get", "cids": [s.cid for s in signed]}


@pytest.fixture
def withhold(monkeypatch):
    """`withhold(host)`: from now on `host` grants no receive window on its connections."""
    stingy: set[int] = set()
    grant = YamuxStream._auto_tune_and_send_window_update

    async def maybe_grant(self: YamuxStream, *, bytes_read: int = 0) -> None:
        if id(self.conn) not in stingy:
            await grant(self, bytes_read=bytes_read)

    monkeypatch.setattr(YamuxStream, "_auto_tune_and_send_window_update", maybe_grant)
    monkeypatch.setattr(repair, "STREAM_TIMEOUT", 3.0)

    def withhold_window(host: Any) -> None:
        for conn in host.get_network().get_connections():
            stingy.add(id(conn.muxed_conn))

    return withhold_window


async def _hosts(stack: AsyncExitStack, n: int) -> list[Any]:
    hosts = [_host(hashlib.sha256(b"limits%d" % i).digest()) for i in range(n)]
    for h in hosts:
        await stack.enter_async_context(h.run(listen_addrs=LISTEN))
    return hosts


async def _open_unread(host: Any, peer: ID, req: dict[str, Any], n: int) -> list[Any]:
    """The attack: `n` streams, each sends `req` and never reads its answer."""
    streams = []
    for _ in range(n):
        stream = await host.new_stream(peer, [repair.PROTOCOL_ID])
        await stream.write(repair.encode_frame(req))
        streams.append(stream)
    return streams


async def _classify(streams: list[Any]) -> Counter[str]:
    """Read only each answer's length prefix (a big one is refused unread): data or busy."""
    kinds: Counter[str] = Counter()
    for stream in streams:
        try:
            answer = await repair.read_frame(stream, 1000)
        except RepairError as exc:
            kinds["data" if exc.code == "too_large" else exc.code] += 1
        else:
            kinds[answer.get("error", "other")] += 1
    return kinds


async def _settled(server: repair.RepairServer) -> None:
    """Wait until every exchange ended and gave its budget back."""
    while server.budget.in_flight or server.running:
        await trio.sleep(0.05)


async def _reset_all(streams: list[Any]) -> None:
    for stream in streams:
        with trio.move_on_after(1, shield=True):
            await stream.reset()


# -- real hosts: the hostile reader --------------------------------------------------------


def test_a_peer_that_never_reads_gets_four_answers_and_others_are_still_served(big_store, withhold):
    store, bigs = big_store
    counts: Counter = Counter()
    server = repair.make_handler(lambda: store, counts=counts)
    assert server.limits == RepairLimits()
    seen: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(15):
            async with AsyncExitStack() as stack:
                a, hostile, honest = await _hosts(stack, 3)
                a.set_stream_handler(repair.PROTOCOL_ID, server)
                for h in (hostile, honest):
                    await h.connect(info_from_p2p_addr(a.get_addrs()[0]))
                withhold(hostile)
                streams = await _open_unread(hostile, a.get_id(), _get(*bigs[:2]), 50)
                seen["kinds"] = await _classify(streams)
                seen["stuck"] = server.budget.in_flight
                seen["active"] = dict(server.active)
                # Another peer is served in full while the hostile one holds its share.
                resp = await repair.request(honest, a.get_id(), _get(*bigs[2:4]))
                assert resp["envelopes"] == [b.envelope for b in bigs[2:4]]
                # The hostile peer's own next request is refused at once, not queued.
                with pytest.raises(RepairError) as info:
                    await repair.request(hostile, a.get_id(), _get(bigs[0]))
                assert info.value.code == "busy" and info.value.remote
                # STREAM_TIMEOUT covers the write: the stuck answers end, the budget drains.
                await _settled(server)
                await _reset_all(streams)
                # Once its exchanges ended the peer is served again (a small answer: it
                # still grants no window).
                since = {"op": "since", "cursor": 0, "limit": 2}
                resp = await repair.request(hostile, a.get_id(), since)
                assert [row[1] for row in resp["items"]] == [b.cid for b in bigs[:2]]

    trio.run(main)
    frame = len(repair.encode_frame({"envelopes": [b.envelope for b in bigs[:2]]}))
    assert seen["kinds"] == {"data": 4, "busy": 46}
    assert list(seen["active"].values()) == [4]
    assert seen["stuck"] == 4 * frame  # four ~1.9 MB answers waiting for a reader
    assert server.budget.high_water <= RepairLimits().response_budget_bytes
    assert server.budget.high_water >= 5 * frame  # the honest answer came on top
    assert server.budget.in_flight == 0 and not server.active and not server.running
    assert counts["timeout"] == 4
    assert counts["served:get"] == 4 + 1 and counts["served:since"] == 1
    assert counts["refused:busy"] == counts["busy:streams"] == 47
    assert counts["unclosed"] == 46  # the hostile peer never closed its refused streams


def test_the_budget_caps_bytes_in_flight_per_peer_and_node_wide(big_store, withhold):
    store, bigs = big_store
    frame_limit = repair.MAX_RESPONSE_FRAME
    limits = RepairLimits(
        per_peer_streams=8,
        response_budget_bytes=2 * frame_limit,
        per_peer_budget_bytes=frame_limit,
        budget_wait_s=0.3,
    )
    counts: Counter = Counter()
    server = repair.make_handler(lambda: store, counts=counts, limits=limits)
    four = _get(*bigs[:4])  # a ~3.8 MB answer; its bound (4 x 1 MB) is reserved up front
    seen: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(15):
            async with AsyncExitStack() as stack:
                a, b, c, d = await _hosts(stack, 4)
                a.set_stream_handler(repair.PROTOCOL_ID, server)
                for h in (b, c, d):
                    await h.connect(info_from_p2p_addr(a.get_addrs()[0]))
                withhold(b)
                withhold(c)
                streams = await _open_unread(b, a.get_id(), four, 3)
                streams += await _open_unread(c, a.get_id(), four, 1)
                seen["b"] = await _classify(streams[:3])
                seen["c"] = await _classify(streams[3:])
                seen["stuck"] = server.budget.in_flight
                # The node-wide budget is full: d waits budget_wait_s, then hears busy ...
                started = trio.current_time()
                with pytest.raises(RepairError) as info:
                    await repair.request(d, a.get_id(), four)
                seen["waited"] = trio.current_time() - started
                assert info.value.code == "busy" and info.value.remote
                # ... and is served once the stuck answers time out.
                await _settled(server)
                await _reset_all(streams)
                resp = await repair.request(d, a.get_id(), four)
                assert len(resp["envelopes"]) == 4

    trio.run(main)
    # b's first answer takes its whole share; its other two wait and are refused.
    assert seen["b"] == {"data": 1, "busy": 2} and seen["c"] == {"data": 1}
    assert seen["stuck"] > 7_000_000
    assert 0.25 <= seen["waited"] < 2
    assert server.budget.high_water <= limits.response_budget_bytes
    assert server.budget.in_flight == 0
    assert counts["busy:budget"] == 3 and counts["refused:busy"] == 3
    assert counts["served:get"] == 3 and counts["timeout"] == 2


def test_a_peer_that_writes_past_its_request_loses_its_connection(store_with_one):
    """py-libp2p's yamux would keep what it sends into the finished stream for the
    connection's life, so the server closes the connection; other peers stay served."""
    store, signed = store_with_one
    counts: Counter = Counter()
    server = repair.make_handler(lambda: store, counts=counts)

    async def main() -> None:
        with trio.fail_after(15):
            async with AsyncExitStack() as stack:
                a, rude, polite = await _hosts(stack, 3)
                a.set_stream_handler(repair.PROTOCOL_ID, server)
                for h in (rude, polite):
                    await h.connect(info_from_p2p_addr(a.get_addrs()[0]))
                stream = await rude.new_stream(a.get_id(), [repair.PROTOCOL_ID])
                frame = repair.encode_frame(_get(signed))
                await stream.write(frame + bytes(repair.MAX_REQUEST_BYTES + 100))
                assert await repair.read_frame(stream, 10_000) == {"envelopes": [signed.envelope]}
                while a.get_network().get_connections(rude.get_id()):
                    await trio.sleep(0.02)
                resp = await repair.request(polite, a.get_id(), _get(signed))
                assert resp["envelopes"] == [signed.envelope]

    trio.run(main)
    assert counts == {"served:get": 2, "violation": 1}


def test_a_peer_without_the_protocol_is_unsupported_not_unreachable():
    async def main() -> None:
        with trio.fail_after(15):
            async with AsyncExitStack() as stack:
                a, b = await _hosts(stack, 2)  # a has no repair handler
                await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
                with pytest.raises(RepairError) as info:
                    await repair.request(b, a.get_id(), {"op": "get", "cids": [bytes(36)]})
                assert info.value.code == "unsupported" and not info.value.remote
                stranger = _host(hashlib.sha256(b"nobody").digest()).get_id()
                with pytest.raises(RepairError) as info:
                    await repair.request(b, stranger, {"op": "get", "cids": [bytes(36)]}, 5)
                assert info.value.code == "unreachable"

    trio.run(main)


# -- the server over scripted streams -------------------------------------------------------


class PeerStream(ScriptedStream):
    """A scripted stream from `peer` that notes how much was read before the answer."""

    def __init__(self, incoming: bytes, peer: str) -> None:
        super().__init__(incoming, chunk=1000)
        self.muxed_conn = SimpleNamespace(peer_id=peer)
        self.read_before_answer: int | None = None

    async def write(self, data: bytes) -> None:
        if self.read_before_answer is None:
            self.read_before_answer = self.consumed
        await super().write(data)


def _decoded(stream: ScriptedStream) -> Any:
    body = bytes(stream.written)
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    return dagcbor.decode(body[4:])


def test_a_stream_over_the_peer_limit_is_answered_busy_unread(store_with_one):
    store, signed = store_with_one
    counts: Counter = Counter()
    server = repair.make_handler(lambda: store, counts=counts, limits=RepairLimits(2))
    server.active["p"] = 2  # two exchanges of peer p are running
    stream = PeerStream(repair.encode_frame(_get(signed)), "p")
    trio.run(server, stream)
    assert stream.read_before_answer == 0 and stream.closed and not stream.reset_called
    assert not stream.incoming  # read (and dropped) only after the answer, up to the end
    assert _decoded(stream) == {"error": "busy"}
    assert counts == {"refused:busy": 1, "busy:streams": 1}
    assert server.active == {"p": 2}
    other = PeerStream(repair.encode_frame(_get(signed)), "q")  # another peer is not limited
    trio.run(server, other)
    assert _decoded(other) == {"envelopes": [signed.envelope]}
    assert server.active == {"p": 2} and server.budget.in_flight == 0
    # The bound (one envelope of up to 1 MB) was reserved before the store was read.
    assert server.budget.high_water == repair.response_bound(_get(signed)) > len(other.written)


class Lingering(PeerStream):
    """Sends its bytes, then neither closes nor sends more."""

    async def read(self, n: int | None = None) -> bytes:
        if not self.incoming:
            await trio.sleep_forever()
        return await super().read(n)


class Conn:
    closed = False

    async def close(self) -> None:
        self.closed = True


def test_an_answered_stream_the_peer_keeps_open_or_writes_into_is_reset(
    store_with_one, monkeypatch
):
    """A closed stream stays in py-libp2p's muxer, buffering what the peer sends, until the
    peer closes too: the server waits for that until the exchange's deadline, then resets;
    a peer that keeps writing loses its connection."""
    store, signed = store_with_one
    monkeypatch.setattr(repair, "STREAM_TIMEOUT", 0.2)
    monkeypatch.setattr(repair, "_CLOSE_TIMEOUT", 0.05)
    counts: Counter = Counter()
    server = repair.make_handler(lambda: store, counts=counts)
    request = repair.encode_frame(_get(signed))
    junk = PeerStream(request + bytes(repair.MAX_REQUEST_BYTES + 5), "p")
    junk.swarm_conn = Conn()
    trio.run(server, junk)
    assert _decoded(junk) == {"envelopes": [signed.envelope]}
    assert junk.reset_called and junk.swarm_conn.closed
    lingering = Lingering(request, "p")
    started = time.monotonic()
    trio.run(server, lingering)
    assert 0.15 < time.monotonic() - started < 1
    assert _decoded(lingering) == {"envelopes": [signed.envelope]} and lingering.reset_called
    assert counts == {"served:get": 2, "violation": 1, "unclosed": 1}
    # One unread request's worth after the answer is fine (a refused stream's body).
    body = PeerStream(request + bytes(repair.MAX_REQUEST_BYTES + 4 - len(request)), "p")
    server.active["p"] = 4
    trio.run(server, body)
    assert _decoded(body) == {"error": "busy"} and not body.reset_called and body.closed


@pytest.fixture
def store_with_one(tmp_path):
    with BatchStore.open(tmp_path / "one") as s:
        signed = batch(0)
        s.put(signed, received_ms=0, origin="gossip")
        yield s, signed


# -- pure parts ----------------------------------------------------------------------------


def test_response_bound_holds_the_largest_answers(tmp_path):
    with BatchStore.open(tmp_path) as s:
        bigs = [_big(batch(seq), wire.MAX_ENVELOPE_BYTES) for seq in range(5)]
        for b in bigs:
            s.put(b, received_ms=0, origin="repair")
        for seq in range(300):
            s.put(batch(seq, key=key(7), domain="d" * 32), received_ms=0, origin="repair")
        requests = [
            _get(*bigs[:1]),
            _get(*bigs),
            {"op": "range", "sender": KEY.public_key, "first": 0, "last": 255},
            {"op": "range", "sender": key(7).public_key, "first": 0, "last": 255},
            {"op": "since", "cursor": 0, "limit": 1024},
        ]
        for req in requests:
            frame = repair.encode_frame(repair.handle_request(s, req))
            assert len(frame) <= repair.response_bound(req), req["op"]
    assert repair.response_bound({"op": "get", "cids": [bytes([i]) * 36 for i in range(64)]}) == (
        repair.MAX_RESPONSE_FRAME
    )
    assert repair.response_bound({"op": "since", "cursor": 0, "limit": 1}) < 200


ONE_FRAME = rf"^response budgets must hold one {repair.MAX_RESPONSE_FRAME}-byte frame$"
BAD_WAIT = r"^budget_wait_s must be >= 0$"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"per_peer_streams": 0}, r"^per_peer_streams must be at least 1$"),
        ({"response_budget_bytes": repair.MAX_RESPONSE_FRAME - 1}, ONE_FRAME),
        ({"per_peer_budget_bytes": repair.MAX_RESPONSE_FRAME - 1}, ONE_FRAME),
        (
            {"response_budget_bytes": 8 << 20, "per_peer_budget_bytes": 9 << 20},
            r"^per_peer_budget_bytes exceeds response_budget_bytes$",
        ),
        ({"budget_wait_s": -1.0}, BAD_WAIT),
        ({"budget_wait_s": float("nan")}, BAD_WAIT),
    ],
)
def test_limits_that_could_never_serve_are_refused(kwargs, why):
    with pytest.raises(ValueError, match=why):
        RepairLimits(**kwargs)


def test_budget_waits_for_a_release_and_gives_up_after_its_wait():
    budget = ResponseBudget(capacity=100, per_peer=60)

    async def main() -> None:
        assert await budget.reserve("a", 60, 0)
        assert not await budget.reserve("a", 1, 0)  # a's share is used up
        assert await budget.reserve("b", 40, 0)
        started = trio.current_time()
        assert not await budget.reserve("c", 10, 0.2)  # node-wide budget full
        assert trio.current_time() - started >= 0.2
        async with trio.open_nursery() as nursery:
            got: list[bool] = []

            async def waiter() -> None:
                got.append(await budget.reserve("c", 30, 5))

            nursery.start_soon(waiter)
            await trio.sleep(0.05)
            assert not got
            budget.resize("a", 60, 20)  # shrinking a reservation wakes the waiter
        assert got == [True] and budget.in_flight == 90
        with trio.move_on_after(0.05):  # a cancelled waiter holds nothing
            await budget.reserve("d", 50, 5)
        assert budget.in_flight == 90 and budget.held_by("d") == 0
        for peer, n in (("a", 20), ("b", 40), ("c", 30)):
            budget.resize(peer, n, 0)
        assert budget.in_flight == 0 and budget.high_water == 100

    trio.run(main)


# -- the client's back-off -------------------------------------------------------------------


def test_backoff_doubles_for_unsupported_peers_up_to_ten_minutes():
    backoff = RepairBackoff()
    now, waits = 0.0, []
    for _ in range(9):
        assert backoff.should_try("p", now)
        waits.append(backoff.failed("p", now, unsupported=True))
        assert not backoff.should_try("p", now + waits[-1] - 0.001)
        now += waits[-1]
    assert waits == [10, 20, 40, 80, 160, 320, 600, 600, 600]
    assert backoff.failures("p") == 9
    # One log line per back-off step: 9 over ~31 minutes, not one per 10-second pass.
    assert backoff.should_try("q", now)  # other peers are not held back
    backoff.succeeded("p")
    assert backoff.should_try("p", now) and backoff.failures("p") == 0 and len(backoff) == 0


def test_backoff_caps_transient_failures_lower_and_forgets_old_peers():
    backoff = RepairBackoff(initial_s=1, max_s=100, transient_max_s=4, max_peers=3)
    waits = [backoff.failed("p", t, unsupported=False) for t in range(5)]
    assert waits == [1, 2, 4, 4, 4]
    assert backoff.failed("p", 10, unsupported=True) == 8  # now known not to speak it
    assert backoff.failed("p", 20, unsupported=False) == 4
    for peer in ("q", "r", "s"):
        backoff.failed(peer, 0, unsupported=True)
    assert len(backoff) == 3 and backoff.failures("p") == 0  # least recently failed
    assert backoff.should_try("p", 0)


def test_busy_is_a_remote_refusal():
    with pytest.raises(RepairError) as info:
        repair.validate_response({"op": "get", "cids": [bytes(36)]}, {"error": "busy"})
    assert info.value.code == "busy" and info.value.remote
    assert "busy" in repair.SERVER_CODES
