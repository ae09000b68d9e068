"""What the node says about itself: `status`, the `peers` table, the Prometheus gauges.

All of it is answered from memory (library sizes are the ones the last merge or add left),
so a status call never waits for the library while a round is inserting.
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.peer.id import ID

from fai_net.node.identity import public_key_of
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState, PeerState
from fai_net.p2p.topics import READ_VERSIONS


class NodeStatus:
    def __init__(
        self,
        res: NodeResources,
        state: NodeState,
        connected_peers: Callable[[], list[ID]],
        connections: Callable[[], list[ID]],
        baselines: Callable[[], dict] = dict,
    ) -> None:
        self.res, self.state = res, state
        self.connected_peers, self.connections = connected_peers, connections
        self.baselines = baselines

    async def refresh_metrics(self) -> dict[str, int]:
        """Metrics from memory: library sizes are the ones the last merge or add left, so
        a status call never waits for the library (a round may be inserting)."""
        metrics = self.res.metrics
        sizes = dict(self.state.library_sizes)
        metrics.set_library_sizes(sizes)
        metrics.set_peers_connected(len(self.connections()))
        metrics.set_reputations({k.hex()[:16]: v for k, v in self.res.reputation.peers().items()})
        return sizes

    async def status(self) -> dict:
        res, state = self.res, self.state
        sizes = await self.refresh_metrics()
        return {
            "peers": len(self.connected_peers()),
            "library_size": sum(sizes.values()),
            "last_sync": state.last_sync_ms,
            **res.metrics.traffic(),
            "node_id": str(res.peer_id),
            "domains": state.domains,
            "library_by_domain": sizes,
            "batches_stored": res.store.count(),
            "outbox": res.store.outbox_count(),
            "pending": len(state.pending),
            "pending_rows": state.pending.rows,
            "contained_faults": dict(res.pubsub.faults),
            "rejections": res.metrics.rejections(),
            "drops": res.metrics.drops(),
            "evidence": res.store.evidence_count(),
            "membership": res.membership.mode,
            "telemetry": self._telemetry_status(),
            "relay": {
                **res.relay_client.status(),
                "serving": None if res.relay_server is None else res.relay_server.status(),
            },
            "wire": {
                "publishes": res.config.wire_version,
                "reads": list(READ_VERSIONS),
                **self.baselines(),
            },
        }

    def _telemetry_status(self) -> dict:
        ingest = self.res.ingest
        out = {**ingest.stats.to_json(), "spool": dict(ingest.held)}
        if self.res.otlp is not None:
            out["otlp"] = {"port": self.res.otlp.port, **self.res.otlp.stats}
        return out

    def peer_table(self) -> list[dict]:
        """The `peers` rows: connected or known peers, minus those whose operator left the
        live set (listed by membership, not by connection: a dropped peer is gone at once,
        even before its connection closes). `operator` is the live operator the peer's key
        belongs to (registry mode), else None."""
        res, state = self.res, self.state
        rows = []
        connected = set(self.connected_peers())
        known = connected | {p for p in state.peers if p not in state.dropped_peers}
        for peer in sorted(known, key=str):
            peer_state = state.peers.get(peer, PeerState())
            key = public_key_of(peer)
            rows.append(
                {
                    "node_id": str(peer),
                    "operator": None if key is None else res.membership.operator_of(key),
                    "latency_ms": peer_state.latency_ms,
                    "reputation": None if key is None else round(res.reputation.score(key), 4),
                    "last_seen": peer_state.last_seen_ms or None,
                    "connected": peer in connected,
                }
            )
        return rows
