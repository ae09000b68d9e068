"""The repair cursor rules of fai_net/node/repair_sync.py, against a scripted peer.

No host, gate or node runs here: `repair.request` is replaced by a peer that answers from a
list (its requests and answers still pass the protocol's own checks, `validate_request` and
`validate_response`), the gate refuses what a test tells it to, and the store keeps cursors
in a dict. So each rule is pinned exactly, and fast enough for `make mutate`
(docs/mutation.md): where the cursor is saved and under which key, that it never moves past
a batch refused for a temporary reason, how pages and fetches are bounded, and how failing
peers are backed off.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from fai_core import dagcbor
from fai_core.refusals import Refusal
from fai_net.node import repair_sync
from fai_net.node.identity import public_key_of
from fai_net.node.repair_sync import (
    REPAIR_FETCH,
    REPAIR_MAX_PAGES,
    REPAIR_PAGE,
    REPAIR_PEER_BUDGET_S,
    RepairSync,
)
from fai_net.node.state import PeerState, Wakeup
from fai_net.p2p import repair

SENDER = bytes(32)


def peer_id(n: int) -> ID:
    return ID.from_pubkey(create_new_key_pair(bytes([n]) * 32).public_key)


def cid(n: int) -> bytes:
    return b"\x01" * (dagcbor.CID_LEN - 4) + n.to_bytes(4, "big")


def envelope(c: bytes) -> bytes:
    return b"env:" + c


class Peer:
    """A repair server: `items` are (cursor, cid, domain); `get_cap` caps a get reply."""

    def __init__(self, items, *, get_cap: int | None = None, lacks=()):
        self.items = sorted(items)
        self.get_cap = get_cap
        self.lacks = set(lacks)
        self.requests: list[dict] = []

    def answer(self, req: dict) -> dict:
        if req["op"] == "since":
            after = [it for it in self.items if it[0] > req["cursor"]][: req["limit"]]
            domains = req.get("domains")
            rows = [
                [pos, c, SENDER, pos, dom, 1]
                for pos, c, dom in after
                if domains is None or dom in domains
            ]
            return {"items": rows, "next": after[-1][0] if after else req["cursor"]}
        have = [envelope(c) for c in req["cids"] if c not in self.lacks]
        return {"envelopes": have[: self.get_cap] if self.get_cap else have}


class Gate:
    """Refuses the cids in `refuse` with their reason; a cid in `junk` does not decode."""

    def __init__(self, refuse=None, junk=()):
        self.refuse = dict(refuse or {})
        self.junk = set(junk)
        self.calls: list[tuple] = []

    def admit(self, env, now, *, origin, forwarder, wanted):
        self.calls.append((env, now, origin, forwarder, dict(wanted)))
        c = env[4:]
        if c in self.junk:
            return SimpleNamespace(signed=None, reason="malformed")
        return SimpleNamespace(signed=SimpleNamespace(cid=c), reason=self.refuse.get(c))


class Receiver:
    def __init__(self):
        self.calls: list[tuple] = []

    def after_admit(self, result, size, origin, forwarder):
        self.calls.append((result.signed.cid if result.signed else None, size, origin, forwarder))
        return result.signed is not None and result.reason is None


class Store:
    def __init__(self, held=()):
        self.held = set(held)
        self.cursors: dict[str, int] = {}
        self.writes: list[tuple[str, int]] = []

    def has(self, c: bytes) -> bool:
        return c in self.held

    def peer_cursor(self, key: str) -> int:
        return self.cursors.get(key, 0)

    def set_peer_cursor(self, key: str, cursor: int) -> None:
        assert isinstance(cursor, int) and cursor >= 0
        self.cursors[key] = cursor
        self.writes.append((key, cursor))


class State:
    def __init__(self, domains):
        self.domains = list(domains)
        self.peers: dict[ID, PeerState] = {}
        self.round_wakeup = SimpleNamespace(set=self._woken)
        self.repair_wakeup = Wakeup()
        self.woken = 0
        self.last_sync_ms = None

    def _woken(self):
        self.woken += 1

    def peer(self, p):
        return self.peers.setdefault(p, PeerState())


class Metrics:
    def __init__(self):
        self.spent_on: list[str] = []

    def spent(self, what, seconds):
        assert 0 <= seconds < 0.05, seconds  # the CPU time of one admission
        self.spent_on.append(what)


class Host:
    """Records hang-ups; `hang` makes one never return, `fail` makes it raise."""

    def __init__(self):
        self.disconnected: list[ID] = []
        self.hang = self.fail = False

    async def disconnect(self, peer):
        self.disconnected.append(peer)
        if self.fail:
            raise RuntimeError("already closing")
        if self.hang:
            await trio.sleep_forever()


def make(monkeypatch, peers: dict, *, domains=("coding",), held=(), gate=None):
    """A RepairSync whose `repair.request` is answered by `peers` (ID -> Peer)."""
    host = Host()

    async def request(h, p, obj):
        assert h is host
        req = repair.validate_request(obj)
        server = peers[p]
        if isinstance(server, Exception):
            raise server
        server.requests.append(req)
        return repair.validate_response(req, server.answer(req))

    monkeypatch.setattr(repair, "request", request)
    res = SimpleNamespace(
        host=host,
        store=Store(held),
        gate=gate or Gate(),
        metrics=Metrics(),
        config=SimpleNamespace(repair_interval_s=5),
    )
    state = State(domains)
    receiver = Receiver()
    sync = RepairSync(res, state, receiver, lambda: list(peers))
    return sync, res, state, receiver


def run(fn, *args):
    return trio.run(fn, *args)


def test_fetches_what_is_missing_and_saves_the_cursor_per_peer_and_domain_set(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding"), (2, cid(2), "ops"), (3, cid(3), "coding")])
    sync, res, state, receiver = make(monkeypatch, {p: server}, domains=("ops", "coding"))
    res.store.held.add(cid(1))  # already stored: not asked for again

    assert run(sync.sync_with, p) == 2
    key = f"{p}|coding,ops"  # the domains sorted, so the key is the same in any order
    assert res.store.cursors == {key: 3}
    since = server.requests[0]
    assert since == {"op": "since", "cursor": 0, "limit": REPAIR_PAGE, "domains": ["coding", "ops"]}
    gets = [r for r in server.requests if r["op"] == "get"]
    assert gets == [{"op": "get", "cids": [cid(2), cid(3)]}]
    assert [c[0] for c in receiver.calls] == [cid(2), cid(3)]
    assert {c[1:] for c in receiver.calls} == {(len(envelope(cid(2))), "repair", public_key_of(p))}
    assert state.woken == 1 and state.last_sync_ms is not None
    assert state.peer(p).latency_ms is not None and state.peer(p).last_seen_ms > 0


def test_the_next_pass_starts_from_the_saved_cursor(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding"), (2, cid(2), "coding")])
    sync, res, _state, _ = make(monkeypatch, {p: server})
    res.store.cursors[f"{p}|coding"] = 1

    assert run(sync.sync_with, p) == 1
    assert server.requests[0]["cursor"] == 1
    assert res.store.cursors[f"{p}|coding"] == 2


def test_explicit_domains_replace_the_subscribed_ones(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding"), (2, cid(2), "ops")])
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_with, p, ["ops"]) == 1
    assert server.requests[0]["domains"] == ["ops"]
    assert res.store.cursors == {f"{p}|ops": 2}


def test_no_domain_no_request(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding")])
    sync, res, state, _ = make(monkeypatch, {p: server}, domains=())

    assert run(sync.sync_with, p) == 0
    assert server.requests == [] and res.store.cursors == {}
    assert state.last_sync_ms is None


def test_nothing_accepted_does_not_wake_the_round_loop(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding")])
    sync, res, state, _ = make(monkeypatch, {p: server}, held=[cid(1)])

    assert run(sync.sync_with, p) == 0
    assert state.woken == 0
    assert [r["op"] for r in server.requests] == ["since", "since"]  # nothing missing: no get
    assert res.store.cursors == {f"{p}|coding": 1}
    assert state.last_sync_ms is not None


@pytest.mark.parametrize(
    "reason", [Refusal.NOT_MEMBER, Refusal.FUTURE, Refusal.LOW_REPUTATION, Refusal.SENDER_BUDGET]
)
def test_the_cursor_stops_before_a_batch_refused_for_a_temporary_reason(monkeypatch, reason):
    p = peer_id(1)
    items = [(10, cid(1), "coding"), (20, cid(2), "coding"), (30, cid(3), "coding")]
    gate = Gate(refuse={cid(2): reason, cid(3): reason})
    sync, res, _state, _ = make(monkeypatch, {p: Peer(items)}, gate=gate)

    assert run(sync.sync_with, p) == 1
    # Refused at cursor 20 (and 30): the next pass asks again from just before the first.
    assert res.store.cursors == {f"{p}|coding": 19}


def test_a_permanent_refusal_does_not_hold_the_cursor(monkeypatch):
    p = peer_id(1)
    items = [(10, cid(1), "coding"), (20, cid(2), "coding")]
    gate = Gate(refuse={cid(1): Refusal.STALE})
    sync, res, _state, _ = make(monkeypatch, {p: Peer(items)}, gate=gate)

    assert run(sync.sync_with, p) == 1
    assert res.store.cursors == {f"{p}|coding": 20}


def test_an_undecodable_reply_does_not_hold_the_cursor(monkeypatch):
    p = peer_id(1)
    items = [(10, cid(1), "coding"), (20, cid(2), "coding")]
    sync, res, _state, receiver = make(
        monkeypatch, {p: Peer(items)}, gate=Gate(junk=[cid(1), cid(2)])
    )

    assert run(sync.sync_with, p) == 0
    assert res.store.cursors == {f"{p}|coding": 20}
    assert [c[0] for c in receiver.calls] == [None, None]


def test_a_refused_batch_the_peer_did_not_list_holds_the_cursor_where_it_was(monkeypatch):
    p = peer_id(1)
    items = [(10, cid(1), "coding"), (20, cid(2), "coding")]
    sync, res, _state, _ = make(
        monkeypatch, {p: Peer(items)}, gate=Gate(refuse={cid(2): Refusal.FUTURE})
    )
    # The wanted positions come from the listing; a cid not in it falls back to the cursor.
    real = sync._admit

    def admit(peer, env, wanted):
        wanted.pop(cid(2), None)
        return real(peer, env, wanted)

    monkeypatch.setattr(sync, "_admit", admit)
    res.store.cursors[f"{p}|coding"] = 5
    assert run(sync.sync_with, p) == 1
    assert res.store.cursors == {f"{p}|coding": 5}


def test_pages_until_no_progress(monkeypatch):
    p = peer_id(1)
    monkeypatch.setattr(repair_sync, "REPAIR_PAGE", 2)
    items = [(n, cid(n), "coding") for n in range(1, 6)]
    server = Peer(items)
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_with, p) == 5
    since = [r["cursor"] for r in server.requests if r["op"] == "since"]
    assert since == [0, 2, 4, 5]  # the last page is empty: the pass stops there
    assert [w[1] for w in res.store.writes] == [2, 4, 5, 5]


def test_a_short_page_goes_on_and_an_empty_one_ends_the_pass(monkeypatch):
    p = peer_id(1)
    monkeypatch.setattr(repair_sync, "REPAIR_PAGE", 2)
    items = [(1, cid(1), "ops"), (2, cid(2), "coding"), (3, cid(3), "ops"), (4, cid(4), "ops")]
    server = Peer([*items, (5, cid(5), "coding")])
    sync, res, _state, _ = make(monkeypatch, {p: server})

    # Page 1 (rows 1-2) is short but not empty: go on. Page 2 (rows 3-4) has nothing for
    # "coding": the pass ends there, with the cursor past what it examined.
    assert run(sync.sync_with, p) == 1
    assert [r["cursor"] for r in server.requests if r["op"] == "since"] == [0, 2]
    assert res.store.cursors == {f"{p}|coding": 4}


def test_a_peer_paging_forever_gets_a_bounded_number_of_pages(monkeypatch):
    p = peer_id(1)

    class Endless(Peer):
        def answer(self, req):
            if req["op"] == "since":
                n = req["cursor"] + 1
                return {"items": [[n, cid(n), SENDER, n, "coding", 1]], "next": n}
            return {"envelopes": []}

    server = Endless([])
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_with, p) == 0
    assert sum(r["op"] == "since" for r in server.requests) == REPAIR_MAX_PAGES
    assert res.store.cursors == {f"{p}|coding": REPAIR_MAX_PAGES}


def test_fetches_go_in_chunks_and_ask_again_for_the_rest(monkeypatch):
    p = peer_id(1)
    n = REPAIR_FETCH + 3
    items = [(i, cid(i), "coding") for i in range(1, n + 1)]
    server = Peer(items, get_cap=40)
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_with, p) == n
    sizes = [len(r["cids"]) for r in server.requests if r["op"] == "get"]
    assert sizes == [REPAIR_FETCH, REPAIR_FETCH - 40, 3]
    assert res.store.cursors == {f"{p}|coding": n}
    assert res.gate.calls[0][4] == {cid(i): i for i in range(1, REPAIR_FETCH + 1)}


def test_a_peer_lacking_what_it_listed_is_not_asked_forever(monkeypatch):
    p = peer_id(1)
    items = [(1, cid(1), "coding"), (2, cid(2), "coding")]
    server = Peer(items, lacks=[cid(2)])
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_with, p) == 1
    gets = [r["cids"] for r in server.requests if r["op"] == "get"]
    assert gets == [[cid(1), cid(2)], [cid(2)]]
    assert res.store.cursors == {f"{p}|coding": 2}


def test_every_envelope_passes_the_gate_as_repair_from_that_peer(monkeypatch):
    p = peer_id(1)
    sync, res, _state, _ = make(monkeypatch, {p: Peer([(7, cid(7), "coding")])})

    run(sync.sync_with, p)
    [(env, now, origin, forwarder, wanted)] = res.gate.calls
    assert env == envelope(cid(7)) and origin == "repair"
    assert forwarder == public_key_of(p) and forwarder is not None
    assert wanted == {cid(7): 7}
    assert now > 1_600_000_000_000  # wall-clock milliseconds
    assert res.metrics.spent_on == ["validate"]


def test_a_pass_adds_up_every_peer_and_skips_none_after_a_failure(monkeypatch):
    a, b, c = peer_id(1), peer_id(2), peer_id(3)
    peers = {
        a: Peer([(1, cid(1), "coding")]),
        b: repair.RepairError(repair.BUSY, "busy"),
        c: Peer([(1, cid(2), "coding"), (2, cid(3), "coding")]),
    }
    sync, _res, state, _ = make(monkeypatch, peers)

    assert run(sync.sync_all) == 3
    assert state.peer(b).sync_failures == 1
    assert state.peer(a).sync_failures == 0 and state.peer(c).sync_failures == 0
    assert sync.backoff.failures(str(b)) == 1 and len(sync.backoff) == 1


def test_a_failed_peer_waits_out_its_back_off_and_others_are_still_asked(monkeypatch):
    a, b = peer_id(1), peer_id(2)
    peers = {a: repair.RepairError(repair.BUSY, "busy"), b: Peer([(1, cid(1), "coding")])}
    sync, _res, _state, _ = make(monkeypatch, peers)

    async def two_passes():
        first = await sync.sync_all()
        peers[b].items = [(1, cid(1), "coding"), (2, cid(2), "coding")]
        second = await sync.sync_all()
        return first, second

    assert run(two_passes) == (1, 1)
    assert sync.backoff.failures(str(a)) == 1  # not asked again within its back-off


def test_a_success_forgets_the_back_off(monkeypatch):
    p = peer_id(1)
    sync, _res, _state, _ = make(monkeypatch, {p: Peer([])})
    sync.backoff.failed(str(p), -100.0, unsupported=False)

    async def one_pass():
        return await sync.sync_all()

    assert run(one_pass) == 0
    assert sync.backoff.failures(str(p)) == 0


@pytest.mark.parametrize(("code", "wait"), [(repair.UNSUPPORTED, 100), (repair.BUSY, 60)])
def test_a_peer_without_the_protocol_backs_off_longer(monkeypatch, caplog, code, wait):
    p = peer_id(1)
    sync, _res, state, _ = make(monkeypatch, {p: repair.RepairError(code, "no")})
    sync.backoff = repair.RepairBackoff(initial_s=100, max_s=600, transient_max_s=60)

    with caplog.at_level(logging.INFO, logger="fai_net.node.node"):
        assert run(sync.sync_all) == 0
    assert state.peer(p).sync_failures == 1
    assert f"next try in {wait} s" in caplog.text
    assert f"repair with {p} failed" in caplog.text


def test_a_slow_peer_gets_its_budget_and_no_more(monkeypatch, caplog):
    slow, fast = peer_id(1), peer_id(2)
    sync, _res, state, _ = make(monkeypatch, {slow: Peer([]), fast: Peer([])})
    real = sync.sync_with

    async def sync_with(peer, domains=None):
        if peer == slow:
            await trio.sleep(10 * REPAIR_PEER_BUDGET_S)
        return await real(peer, domains)

    monkeypatch.setattr(sync, "sync_with", sync_with)
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def timed():
        start = trio.current_time()
        got = await sync.sync_all()
        return got, trio.current_time() - start

    with caplog.at_level(logging.INFO, logger="fai_net.node.node"):
        got, took = trio.run(timed, clock=clock)
    assert got == 0 and took == pytest.approx(REPAIR_PEER_BUDGET_S)
    assert state.peer(slow).sync_failures == 1 and state.peer(fast).sync_failures == 0
    assert f"hit its {REPAIR_PEER_BUDGET_S} s budget" in caplog.text
    assert sync.backoff.failures(str(slow)) == 1


def test_the_loop_waits_for_its_interval_then_syncs(monkeypatch):
    p = peer_id(1)
    sync, res, _state, _ = make(monkeypatch, {p: Peer([])})
    passes: list[float] = []

    async def sync_all(domains=None):
        passes.append(trio.current_time() - start)
        return 0

    monkeypatch.setattr(sync, "sync_all", sync_all)
    start = 0.0

    async def main():
        nonlocal start
        start = trio.current_time()
        with trio.move_on_after(2.5 * res.config.repair_interval_s):
            await sync.loop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    interval = res.config.repair_interval_s
    assert passes == [pytest.approx(interval), pytest.approx(2 * interval)]


def test_a_wake_up_starts_a_pass_before_the_interval(monkeypatch):
    p = peer_id(1)
    sync, _res, state, _ = make(monkeypatch, {p: Peer([])})
    passes: list[float] = []

    async def sync_all(domains=None):
        passes.append(trio.current_time())
        return 0

    monkeypatch.setattr(sync, "sync_all", sync_all)

    async def main():
        start = trio.current_time()
        state.repair_wakeup.set()
        with trio.move_on_after(1):
            await sync.loop()
        return start

    start = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert passes == [start]


def test_a_pass_can_be_limited_to_some_domains(monkeypatch):
    p = peer_id(1)
    server = Peer([(1, cid(1), "coding"), (2, cid(2), "ops")])
    sync, res, _state, _ = make(monkeypatch, {p: server})

    assert run(sync.sync_all, ["ops"]) == 1
    assert server.requests[0]["domains"] == ["ops"]
    assert res.store.cursors == {f"{p}|ops": 2}


def test_failures_in_a_row_add_up(monkeypatch):
    p = peer_id(1)
    sync, _res, state, _ = make(monkeypatch, {p: repair.RepairError(repair.BUSY, "busy")})

    async def passes():
        for _ in range(3):
            await sync.sync_all()
            await trio.sleep(sync.backoff.max_s)  # past any back-off

    trio.run(passes, clock=trio.testing.MockClock(autojump_threshold=0))
    assert state.peer(p).sync_failures == 3
    assert sync.backoff.failures(str(p)) == 3


def test_the_latency_of_a_page_is_kept_in_milliseconds(monkeypatch):
    p = peer_id(1)
    sync, _res, state, _ = make(monkeypatch, {p: Peer([])})
    answer = repair.request

    async def slow(host, peer, obj):
        await trio.sleep(0.0123456)
        return await answer(host, peer, obj)

    monkeypatch.setattr(repair, "request", slow)
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def later():
        clock.jump(100)  # a page's latency is its own time, not the clock's
        await sync.sync_with(p)

    trio.run(later, clock=clock)
    assert state.peer(p).latency_ms == 12.35


@pytest.mark.parametrize(
    ("code", "hung_up"), [(repair.TIMEOUT, True), (repair.BUSY, False), (repair.UNSUPPORTED, False)]
)
def test_a_peer_that_does_not_answer_at_all_is_hung_up_on(monkeypatch, code, hung_up):
    p = peer_id(1)
    sync, res, _state, _ = make(monkeypatch, {p: repair.RepairError(code, "no")})
    run(sync.sync_all)
    assert res.host.disconnected == ([p] if hung_up else [])


def test_a_peer_over_its_budget_is_hung_up_on(monkeypatch):
    slow = peer_id(1)
    sync, res, _state, _ = make(monkeypatch, {slow: Peer([])})

    async def sync_with(peer, domains=None):
        await trio.sleep(10 * REPAIR_PEER_BUDGET_S)

    monkeypatch.setattr(sync, "sync_with", sync_with)
    trio.run(sync.sync_all, clock=trio.testing.MockClock(autojump_threshold=0))
    assert res.host.disconnected == [slow]


def test_hanging_up_is_bounded_and_never_raises(monkeypatch, caplog):
    a, b = peer_id(1), peer_id(2)
    timeout = repair.RepairError(repair.TIMEOUT, "no answer")
    sync, res, _state, _ = make(monkeypatch, {a: timeout, b: Peer([(1, cid(1), "coding")])})
    res.host.hang = True

    async def timed():
        start = trio.current_time()
        got = await sync.sync_all()
        return got, trio.current_time() - start

    got, took = trio.run(timed, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == 1 and took == pytest.approx(5.0)  # the next peer is still served
    res.host.hang, res.host.fail = False, True
    with caplog.at_level(logging.INFO, logger="fai_net.node.node"):
        trio.run(sync._hang_up, a)
    assert f"disconnect {a}: already closing" in caplog.text
