"""Prometheus metrics of one FAI node, served on a loopback port.

Every node owns its own CollectorRegistry rather than prometheus_client's global one: the
simulator and the tests run several nodes in one process, and the global registry refuses
a second metric of the same name. The node calls the small methods below at the points
where something happens; nothing here knows about trio, libp2p or the library.

Rejection and drop reasons are plain strings, so the codes of fai_core.errors.Reject,
fai_core.deltasoup.Drop and the node's own refusals (not_member, bad_operator_sig,
equivocation, duplicate, ...) all fit one label without this module importing them. They
come from fixed vocabularies, never from peer-controlled text, which keeps the label
cardinality bounded.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ORIGINS = ("gossip", "repair")
#: Merge rounds take milliseconds on an idle node and tens of seconds on a loaded one.
ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _label(value: object, what: str) -> str:
    text = str(value)
    if not text:
        raise ValueError(f"{what} must be a non-empty string")
    return text


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _labelled_totals(counter: Counter) -> dict[str, int]:
    totals: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                (label,) = sample.labels.values()
                totals[label] = int(sample.value)
    return totals


class NodeMetrics:
    """The metrics of one node, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_sent = Counter(
            "fai_bytes_sent", "Bytes of batches and repair traffic sent to peers", registry=r
        )
        self.bytes_received = Counter(
            "fai_bytes_received", "Bytes received from peers, before verification", registry=r
        )
        self.batches_sent = Counter("fai_batches_sent", "Batches published", registry=r)
        self.batches_received = Counter(
            "fai_batches_received",
            "Batches received, by how they arrived (gossip or repair)",
            ["origin"],
            registry=r,
        )
        self.batches_rejected = Counter(
            "fai_batches_rejected", "Batches refused, by reason code", ["reason"], registry=r
        )
        self.experiences_dropped = Counter(
            "fai_experiences_dropped",
            "Experiences not merged (DeltaSoup drops), by reason code",
            ["reason"],
            registry=r,
        )
        self.experiences_merged = Counter(
            "fai_experiences_merged", "Experiences merged into the library", registry=r
        )
        self.library_experiences = Gauge(
            "fai_library_experiences",
            "Experiences in the library, by domain",
            ["domain"],
            registry=r,
        )
        self.peers_connected = Gauge("fai_peers_connected", "Peers currently connected", registry=r)
        self.peer_reputation = Gauge(
            "fai_peer_reputation", "Reputation of each known peer", ["peer"], registry=r
        )
        self.stage_seconds = Counter(
            "fai_stage_seconds",
            "Time spent per receive stage: validate (gate CPU on the event loop), "
            "round (merge-thread CPU), embed (wall time re-embedding received texts), "
            "embed_local (wall time embedding the node's own new experiences)",
            ["stage"],
            registry=r,
        )
        self.embed_cache_hits = Counter(
            "fai_embed_cache_hits",
            "Texts whose embedding came from the node's text cache instead of the model, "
            "by stage (embed: received texts and recall queries; embed_local: own texts)",
            ["stage"],
            registry=r,
        )
        self.embed_cache_misses = Counter(
            "fai_embed_cache_misses",
            "Texts the node's model embedded (not in the text cache), by stage",
            ["stage"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "fai_round_seconds", "Duration of one merge round", buckets=ROUND_BUCKETS, registry=r
        )
        # Which label values are live, so that departed ones can be removed (a gauge
        # left behind would report a peer or a domain that no longer exists).
        self._lock = threading.Lock()
        self._domains: set[str] = set()
        self._peers: set[str] = set()

    # -- traffic ---------------------------------------------------------------------------

    def sent(self, nbytes: int, *, batches: int = 1) -> None:
        """Count outgoing traffic; `batches=0` for bytes that carried no batch."""
        nbytes, batches = _count(nbytes, "nbytes"), _count(batches, "batches")
        self.bytes_sent.inc(nbytes)
        self.batches_sent.inc(batches)

    def received(self, nbytes: int, origin: str, *, batches: int = 1) -> None:
        """Count incoming traffic by origin, "gossip" or "repair"."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
        nbytes, batches = _count(nbytes, "nbytes"), _count(batches, "batches")
        self.bytes_received.inc(nbytes)
        self.batches_received.labels(origin).inc(batches)

    # -- verdicts --------------------------------------------------------------------------

    def reject(self, reason: str) -> None:
        """Count one refused batch; `reason` is a member of a fai_core.refusals vocabulary."""
        self.batches_rejected.labels(_label(reason, "reason")).inc()

    def drop(self, reason: str, count: int = 1) -> None:
        """Count experiences that DeltaSoup did not merge."""
        self.experiences_dropped.labels(_label(reason, "reason")).inc(_count(count, "count"))

    def merged(self, count: int) -> None:
        self.experiences_merged.inc(_count(count, "count"))

    def spent(self, stage: str, seconds: float) -> None:
        """Add time spent in one receive stage (see fai_stage_seconds)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        self.stage_seconds.labels(_label(stage, "stage")).inc(seconds)

    def embed_cache(self, stage: str, hits: int, misses: int) -> None:
        """Count one embed call's cache hits and misses (texts) in a stage."""
        stage = _label(stage, "stage")
        self.embed_cache_hits.labels(stage).inc(_count(hits, "hits"))
        self.embed_cache_misses.labels(stage).inc(_count(misses, "misses"))

    def embed_cache_totals(self) -> dict[str, dict[str, int]]:
        """{stage: {"hits": n, "misses": n}} so far, for status and tests."""
        hits, misses = (
            _labelled_totals(self.embed_cache_hits),
            _labelled_totals(self.embed_cache_misses),
        )
        return {
            stage: {"hits": hits.get(stage, 0), "misses": misses.get(stage, 0)}
            for stage in sorted(hits.keys() | misses.keys())
        }

    def stages(self) -> dict[str, float]:
        return {
            s.labels["stage"]: s.value
            for metric in self.stage_seconds.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }

    def observe_round(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"round duration must be finite and >= 0, got {seconds!r}")
        self.round_seconds.observe(seconds)

    # -- state -----------------------------------------------------------------------------

    def set_library_sizes(self, sizes: Mapping[str, int]) -> None:
        """Set the per-domain library sizes; domains absent from `sizes` are removed."""
        with self._lock:
            self._domains = self._replace(self.library_experiences, self._domains, sizes)

    def set_peers_connected(self, count: int) -> None:
        self.peers_connected.set(_count(count, "count"))

    def set_reputations(self, reputations: Mapping[str, float]) -> None:
        """Set each known peer's reputation; peers absent from `reputations` are removed."""
        with self._lock:
            self._peers = self._replace(self.peer_reputation, self._peers, reputations)

    @staticmethod
    def _replace(gauge: Gauge, live: set[str], values: Mapping[str, float]) -> set[str]:
        fresh = {_label(key, "label"): float(value) for key, value in values.items()}
        for key, value in fresh.items():
            gauge.labels(key).set(value)
        for gone in live - fresh.keys():
            gauge.remove(gone)
        return set(fresh)

    # -- read-back for the status API --------------------------------------------------------

    def rejections(self) -> dict[str, int]:
        """Refused batches so far, by reason."""
        return _labelled_totals(self.batches_rejected)

    def drops(self) -> dict[str, int]:
        """Experiences not merged so far, by reason."""
        return _labelled_totals(self.experiences_dropped)

    def traffic(self) -> dict[str, int]:
        """Byte totals, as the dso_network status action reports them."""
        return {
            "bytes_sent": int(self.registry.get_sample_value("fai_bytes_sent_total") or 0),
            "bytes_received": int(self.registry.get_sample_value("fai_bytes_received_total") or 0),
        }


class MetricsServer:
    """A running metrics endpoint; `stop()` it (or use it as a context manager) when done."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str, port: int) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread. Safe to call twice."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def check_loopback(host: str) -> str:
    """Refuse anything but a loopback IP literal: metrics are for the local operator only.

    Names such as "localhost" are refused too, since what they resolve to is configuration.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"metrics bind address must be a loopback IP, got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"metrics bind address must be loopback (127.0.0.1), got {host!r}")
    return str(address)


def serve_metrics(
    metrics: NodeMetrics, port: int = 0, host: str = "127.0.0.1"
) -> tuple[MetricsServer, int]:
    """Serve `metrics` over HTTP on host:port (0 picks a free port) in a daemon thread.

    Returns the server and the bound port.
    """
    host = check_loopback(host)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    httpd, thread = start_http_server(port, host, metrics.registry)
    bound = int(httpd.server_port)
    return MetricsServer(httpd, thread, host, bound), bound
