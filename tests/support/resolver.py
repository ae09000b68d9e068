"""A wire-v2 `BaselineResolver` outside a node, with scripted repair peers.

For attacks on the resolver's own logic (its park, its fetch passes, who it charges) a real
node is overkill and too slow to show time-dependent behaviour: `resolver_for` builds the
resolver over a real batch store and reputation book, and `RepairPeers` stands in for the
connected peers, answering `repair.request` from scripts (install it with
`monkeypatch.setattr(repair, "request", peers.request)`). Requests and responses go through
the real `validate_request` and `validate_response`, so a hostile answer is refused exactly
as the node's client refuses it. Run under `trio.testing.MockClock(autojump_threshold=0)`,
a peer that never answers costs the resolver its full timeout in simulated time only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import trio
from libp2p.peer.id import ID

from fai_core import wire
from fai_core.baseline_block import BaselineBlock, make_baseline_block
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.reputation import ReputationBook
from fai_net.admission.gate import GatePolicy
from fai_net.admission.store import BatchStore
from fai_net.node.baselines import BaselineResolver
from fai_net.node.identity import NodeIdentity
from fai_net.node.pending import FairQueue, QueueLimits
from fai_net.node.state import Pending, Wakeup
from fai_net.p2p import repair

MODEL = "fleet-model"
DIM = 16
T0 = 1_700_000_000_000

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Metrics:
    """The node metrics' `reject`, counted by reason."""

    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()

    def reject(self, reason: str) -> None:
        self.rejected[str(reason)] += 1


class RepairPeers:
    """Connected peers (in connection order) answering repair requests from scripts."""

    def __init__(self) -> None:
        self.handlers: dict[ID, Handler] = {}
        #: (peer, op, cids asked) of every request, in order.
        self.asked: list[tuple[ID, str, tuple[bytes, ...]]] = []

    def add(self, handler: Handler, seed: int) -> ID:
        peer = NodeIdentity.from_seed(bytes([seed]) * 32).peer_id
        self.handlers[peer] = handler
        return peer

    def connected(self) -> list[ID]:
        return list(self.handlers)

    def asked_of(self, peer: ID) -> int:
        return sum(1 for p, _, _ in self.asked if p == peer)

    async def request(
        self, host: Any, peer: ID, obj: dict[str, Any], timeout: float = repair.STREAM_TIMEOUT
    ) -> dict[str, Any]:
        req = repair.validate_request(obj)
        self.asked.append((peer, req["op"], tuple(req.get("cids", ()))))
        handler = self.handlers.get(peer)
        if handler is None:
            raise repair.RepairError(repair.UNREACHABLE, "not connected")
        try:
            with trio.fail_after(timeout):
                response = await handler(req)
        except trio.TooSlowError:
            raise repair.RepairError(repair.TIMEOUT, f"no answer within {timeout} s") from None
        return repair.validate_response(req, response)


def holding(*blocks: BaselineBlock | tuple[bytes, bytes]) -> Handler:
    """A peer serving these blocks (or (cid, bytes) pairs, whatever the bytes are)."""
    held = {
        (b.cid, b.data)[0] if isinstance(b, BaselineBlock) else b[0]: (
            b.data if isinstance(b, BaselineBlock) else b[1]
        )
        for b in blocks
    }

    async def handler(req: dict[str, Any]) -> Any:
        await trio.sleep(0.01)  # a round trip
        return {"blocks": [held[c] for c in req["cids"] if c in held]}

    return handler


def answering(response: Any) -> Handler:
    """A peer answering every request with `response`."""

    async def handler(req: dict[str, Any]) -> Any:
        await trio.sleep(0.01)
        return response

    return handler


async def silent(req: dict[str, Any]) -> Any:
    """A peer that accepts the request and never answers it."""
    await trio.sleep_forever()


def resolver_for(
    tmp_path: Path, peers: RepairPeers, *, queue: QueueLimits | None = None
) -> tuple[BaselineResolver, SimpleNamespace, SimpleNamespace]:
    """A resolver for a fleet of MODEL at DIM (call inside trio.run), with the parts of the
    node it touches: `res` (store, reputation, metrics, gate policy) and `state` (pending)."""
    store = BatchStore.open(tmp_path / "batches")
    res = SimpleNamespace(
        gate=SimpleNamespace(policy=GatePolicy(MODEL, DIM)),
        store=store,
        reputation=ReputationBook(),
        metrics=Metrics(),
        host=None,
    )
    state = SimpleNamespace(pending=FairQueue(queue or QueueLimits()), round_wakeup=Wakeup())
    return BaselineResolver(res, state, peers.connected), res, state


def fleet_block(seed: int, *, model: str = MODEL, dim: int = DIM) -> BaselineBlock:
    mean = np.random.default_rng(seed).standard_normal(dim) * 0.1
    return make_baseline_block(mean, model)


def v2_batch(
    n: int, base: BaselineBlock, *, attach: bool = False, rows: int = 1, seq: int = 1
) -> wire.SignedBatch:
    """A v2 batch of `rows` experiences by the n-th sender key, encoded against `base`."""
    vectors = np.random.default_rng(n).standard_normal((rows, base.dim)).astype(np.float32)
    key = sender_key(n)
    exps = [
        Experience(f"lesson {n} row {i}", vectors[i], 0.7, "coding", key.public_key, T0)
        for i in range(rows)
    ]
    return wire.encode_batch_v2(
        exps, key=key, seq=seq, timestamp_ms=T0, baseline=base, attach_baseline=attach, group=8
    )


def sender_key(n: int) -> NodeKey:
    return NodeKey(bytes([n % 256, n // 256]) + bytes(range(2, 32)))


def unresolved(signed: wire.SignedBatch, origin: str = "gossip") -> Pending:
    """The batch as the gate hands it on: decoded from its envelope, without its block."""
    batch = wire.decode_envelope(signed.envelope).batch
    assert not batch.resolved
    return Pending(batch, origin)
