"""What a node is told to be: every setting in one frozen value, with the issue's defaults.

Kept apart from node.py so the command line and the devnet can build, print and check a
configuration without importing libp2p.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fai_core.embedding import EMBEDDER_NAMES
from fai_core.experience import domain_problem
from fai_net.admission.budgets import BudgetPolicy
from fai_net.node.pending import QueueLimits
from fai_net.p2p.addresses import check_announce, check_listen, check_relay, is_unspecified

DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    domains: tuple[str, ...]
    listen: tuple[str, ...] = DEFAULT_LISTEN
    #: Multiaddrs peers should dial (without /p2p/): what node.json lists and `fai advertise`
    #: posts on-chain. Empty: the addresses the host is bound to. Needed when listening on
    #: 0.0.0.0 or behind a port mapping; kept apart from `listen`, as libp2p does.
    announce: tuple[str, ...] = ()
    #: Multiaddrs with /p2p/<peer id> of nodes to dial at start and whenever disconnected.
    seeds: tuple[str, ...] = ()
    #: Relays (multiaddrs with /p2p/<relay id>) where this node keeps a reservation, for a
    #: node no peer can dial: it announces `<relay>/p2p-circuit` (fai_net/p2p/relay.py).
    relays: tuple[str, ...] = ()
    #: Serve circuit relay v2 to fleet members (opt-in): this many reserved nodes at once,
    #: each reachable over this many relayed connections.
    relay_server: bool = False
    relay_reservations: int = 16
    relay_circuits: int = 16
    #: "minilm" (the real model as int8 ONNX, the default), "minilm-torch" (the same model on
    #: torch, the `torch` extra) or "hashing" (explicit test/offline option).
    embedder: str = "minilm"
    #: Development mode: accept any correctly signed batch without the registry.
    open_membership: bool = False
    rpc_url: str | None = None
    registry: str | None = None
    #: A file holding the operator's (or its authorised signer's) hex private key.
    operator_key_file: Path | None = None
    broadcast_interval_s: float = 60.0
    broadcast_threshold: int = 10
    max_batch: int = 100
    round_interval_s: float = 2.0
    repair_interval_s: float = 10.0
    discovery_interval_s: float = 5.0
    membership_refresh_s: float = 5.0
    #: Gap between two publishes: py-libp2p drops RPCs beyond 32 queued per peer.
    publish_spacing_s: float = 0.02
    max_age_ms: int = 300_000
    repair_max_age_ms: int = 7 * 24 * 3_600_000
    #: Prometheus port on 127.0.0.1; 0 = any free port, None = no metrics endpoint.
    metrics_port: int | None = 0
    control_socket: Path | None = None
    mdns: bool = False
    #: gossipsub's seen-message cache; redeliveries after it are caught by the batch store.
    seen_ttl_s: int = 120
    library_capacity: int | None = None
    #: JSON lines of batch events (publishing, accepted, merged) for benchmarks and audits.
    event_log: Path | None = None
    #: A peer's reputation recovers halfway to 1.0 per this long without new outcomes: a
    #: peer below the floor is never evaluated, so it could not recover otherwise.
    reputation_half_life_ms: int = 3_600_000
    #: Rows a merge round takes from the pending queue: bounds how long a round holds the
    #: CPU and the library, hence how long an honest batch waits behind a flood. Measured
    #: (bench/flood.py): 256 rows of 20-32-word texts took 11 s of MiniLM alone and 23 s
    #: under a flood on 2 cores; 64 rows keep a round to a few seconds.
    round_rows: int = 64
    #: Rows one sender may have evaluated per round, however alone it is (DeltaSoup max_cap).
    max_cap_rows: int = 64
    #: Receive budgets and the pending queue's bounds (fai_net/admission/budgets.py, pending.py).
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)
    queue: QueueLimits = field(default_factory=QueueLimits)
    #: How often stored batches older than the repair window (plus T_max) are deleted.
    prune_interval_s: float = 600.0
    #: OTLP/HTTP trace receiver (POST /v1/traces) on 127.0.0.1: None = off (the default),
    #: 0 = any free port (node.json tells which).
    otlp_port: int | None = None
    #: Domain of imported traces that name none (OTLP, hooks, SDK processors), and rules
    #: `ATTRIBUTE=VALUE:DOMAIN[/KIND]` that pick one from a trace's attributes.
    telemetry_domain: str = "general"
    telemetry_rules: tuple[str, ...] = ()
    #: A trace with no end marker closes after this long without a new span.
    telemetry_idle_s: float = 600.0
    #: Devnet demonstrations only: the control socket may publish unchecked bytes.
    allow_raw_publish: bool = False
    #: Wire format this node publishes (docs/wire-format.md); it reads 1 and 2 whatever
    #: this says. 2 sends the baseline by reference: a fleet still running version-1-only
    #: nodes keeps 1 until they are upgraded.
    wire_version: int = 2
    #: Wire v2: make a new baseline block once the library mean moved this far (L2;
    #: fai_core/baseline_block.py, DEFAULT_DRIFT_THRESHOLD, says why 0.3; a test keeps the
    #: two equal: this module does not import numpy).
    baseline_drift: float = 0.3
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.domains:
            raise ValueError("a node subscribes to at least one domain")
        for d in self.domains:
            problem = domain_problem(d)
            if problem:
                raise ValueError(problem)
        if self.embedder not in EMBEDDER_NAMES:
            raise ValueError("embedder must be 'minilm', 'minilm-torch' or 'hashing'")
        if not self.open_membership and not (self.rpc_url and self.registry):
            raise ValueError("give --rpc and --registry, or run in --open mode (development)")
        if self.open_membership and (self.rpc_url or self.registry):
            raise ValueError("--open and a registry are exclusive")
        if self.broadcast_threshold < 1 or not 1 <= self.max_batch <= 1000:
            raise ValueError("broadcast threshold >= 1 and max batch in 1..1000")
        if self.round_rows < 1 or self.max_cap_rows < 1:
            raise ValueError("round_rows and max_cap_rows must be positive")
        for name in (
            "broadcast_interval_s",
            "round_interval_s",
            "repair_interval_s",
            "prune_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for addr in self.listen:
            check_listen(addr)
        for addr in self.announce:
            check_announce(addr)
        for addr in self.relays:
            check_relay(addr)
        if self.relay_reservations < 1 or self.relay_circuits < 1:
            raise ValueError("relay_reservations and relay_circuits must be positive")
        if not self.announce and any(is_unspecified(a) for a in self.listen):
            raise ValueError(
                "listening on all interfaces (0.0.0.0 or ::): give --announce with the "
                "address peers should dial"
            )
        if self.otlp_port is not None and not 0 <= self.otlp_port <= 65535:
            raise ValueError("otlp_port must be in 0..65535")
        if self.wire_version not in (1, 2):
            raise ValueError("wire_version must be 1 or 2")
        if not self.baseline_drift > 0:
            raise ValueError("baseline_drift must be positive")
        if self.telemetry_idle_s <= 0:
            raise ValueError("telemetry_idle_s must be positive")
        self.telemetry_policy()  # validates the domain and the rules

    def telemetry_policy(self):
        """The DomainPolicy of imported traces (raises ValueError on a bad rule)."""
        from fai_core.ingest.common import DomainPolicy, DomainRule

        rules = tuple(DomainRule.parse(rule) for rule in self.telemetry_rules)
        return DomainPolicy(self.telemetry_domain, rules)

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.data_dir / "control.sock"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "telemetry.sqlite"

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "node.json"

    def with_(self, **changes) -> NodeConfig:
        return replace(self, **changes)
