"""NodeMetrics scraped over real HTTP on 127.0.0.1 and parsed as Prometheus would."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fai_core.deltasoup import Drop
from fai_core.errors import Reject
from fai_net.api.metrics import MetricsServer, NodeMetrics, serve_metrics


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def served() -> Iterator[tuple[NodeMetrics, MetricsServer]]:
    metrics = NodeMetrics()
    server, port = serve_metrics(metrics)
    assert port == server.port > 0
    try:
        yield metrics, server
    finally:
        server.stop()
    assert not server.running


def test_scraped_values_match_what_the_node_reported(served):
    metrics, server = served
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    metrics.sent(1200)
    metrics.sent(300, batches=0)
    metrics.received(500, "gossip")
    metrics.received(700, "repair", batches=2)
    metrics.received(50, "gossip")
    metrics.reject(Reject.BAD_SIGNATURE)
    metrics.reject(Reject.BAD_SIGNATURE)
    metrics.reject(Drop.EQUIVOCATION)
    metrics.reject("not_member")
    metrics.drop(Drop.SCALE_OUTLIER, 3)
    metrics.drop("semantic_mismatch")
    metrics.merged(40)
    metrics.merged(2)
    metrics.set_library_sizes({"coding": 120, "writing": 7})
    metrics.set_peers_connected(4)
    metrics.set_reputations({"peerA": 0.9, "peerB": 0.25})
    metrics.observe_round(0.3)
    metrics.observe_round(7.0)

    samples = scrape(server.url)
    assert samples[("fai_bytes_sent_total", ())] == 1500
    assert samples[("fai_batches_sent_total", ())] == 1
    assert samples[("fai_bytes_received_total", ())] == 1250
    assert samples[("fai_batches_received_total", (("origin", "gossip"),))] == 2
    assert samples[("fai_batches_received_total", (("origin", "repair"),))] == 2
    assert samples[("fai_batches_rejected_total", (("reason", "bad_signature"),))] == 2
    assert samples[("fai_batches_rejected_total", (("reason", "equivocation"),))] == 1
    assert samples[("fai_batches_rejected_total", (("reason", "not_member"),))] == 1
    assert samples[("fai_experiences_dropped_total", (("reason", "scale_outlier"),))] == 3
    assert samples[("fai_experiences_dropped_total", (("reason", "semantic_mismatch"),))] == 1
    assert samples[("fai_experiences_merged_total", ())] == 42
    assert samples[("fai_library_experiences", (("domain", "coding"),))] == 120
    assert samples[("fai_library_experiences", (("domain", "writing"),))] == 7
    assert samples[("fai_peers_connected", ())] == 4
    assert samples[("fai_peer_reputation", (("peer", "peerA"),))] == 0.9
    assert samples[("fai_peer_reputation", (("peer", "peerB"),))] == 0.25
    assert samples[("fai_round_seconds_count", ())] == 2
    assert samples[("fai_round_seconds_sum", ())] == pytest.approx(7.3)
    assert samples[("fai_round_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("fai_round_seconds_bucket", (("le", "10.0"),))] == 2

    # The status API reads the same numbers back without HTTP.
    assert metrics.rejections() == {"bad_signature": 2, "equivocation": 1, "not_member": 1}
    assert metrics.drops() == {"scale_outlier": 3, "semantic_mismatch": 1}
    assert metrics.traffic() == {"bytes_sent": 1500, "bytes_received": 1250}


def test_departed_peers_and_domains_lose_their_labels(served):
    metrics, server = served
    metrics.set_reputations({"peerA": 0.9, "peerB": 0.4, "peerC": 0.1})
    metrics.set_library_sizes({"coding": 3, "writing": 5})
    samples = scrape(server.url)
    peers = {dict(labels)["peer"] for name, labels in samples if name == "fai_peer_reputation"}
    assert peers == {"peerA", "peerB", "peerC"}

    metrics.set_reputations({"peerB": 0.5, "peerD": 0.7})
    metrics.set_library_sizes({"writing": 6})
    samples = scrape(server.url)
    reputations = {
        dict(labels)["peer"]: value
        for (name, labels), value in samples.items()
        if name == "fai_peer_reputation"
    }
    assert reputations == {"peerB": 0.5, "peerD": 0.7}
    domains = {
        dict(labels)["domain"]: value
        for (name, labels), value in samples.items()
        if name == "fai_library_experiences"
    }
    assert domains == {"writing": 6}

    metrics.set_reputations({})
    samples = scrape(server.url)
    assert not [name for name, _ in samples if name == "fai_peer_reputation"]


def test_fresh_metrics_read_back_as_zero():
    metrics = NodeMetrics()
    assert metrics.rejections() == {}
    assert metrics.drops() == {}
    assert metrics.traffic() == {"bytes_sent": 0, "bytes_received": 0}


def test_several_nodes_in_one_process_keep_separate_registries():
    one, two = NodeMetrics(), NodeMetrics()  # the global registry would refuse the second
    one.reject("stale")
    two.sent(10)
    assert one.rejections() == {"stale": 1} and two.rejections() == {}
    assert one.traffic()["bytes_sent"] == 0 and two.traffic()["bytes_sent"] == 10
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("fai_bytes_sent_total") is None


@pytest.mark.parametrize(
    "call",
    [
        (lambda m: m.received(10, "carrier-pigeon"), r"origin must be one of"),
        (lambda m: m.sent(-1), r"nbytes must be a non-negative integer, got -1"),
        (lambda m: m.sent(10, batches=-1), r"batches must be a non-negative integer, got -1"),
        (
            lambda m: m.received(10, "gossip", batches=-1),
            r"batches must be a non-negative integer, got -1",
        ),
        (lambda m: m.sent(True), r"nbytes must be a non-negative integer, got True"),
        (lambda m: m.drop("stale", -2), r"count must be a non-negative integer, got -2"),
        (lambda m: m.merged(1.5), r"count must be a non-negative integer, got 1\.5"),
        (lambda m: m.reject(""), r"reason must be a non-empty string"),
        (lambda m: m.observe_round(float("nan")), r"round duration must be finite"),
        (lambda m: m.observe_round(-1.0), r"round duration must be finite and >= 0, got -1"),
        (lambda m: m.set_peers_connected(-1), r"count must be a non-negative integer, got -1"),
    ],
)
def test_invalid_reports_are_refused(call):
    call, message = call
    metrics = NodeMetrics()
    with pytest.raises(ValueError, match=message):
        call(metrics)
    assert metrics.traffic() == {"bytes_sent": 0, "bytes_received": 0}


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "", "::", "localhost", "192.168.1.10", "10.0.0.1", "example.com"]
)
def test_non_loopback_bind_address_is_refused(host):
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="loopback"):
        serve_metrics(NodeMetrics(), host=host)
    assert set(threading.enumerate()) - before == set()  # no server thread was started


def test_bad_port_is_refused():
    with pytest.raises(ValueError, match="port"):
        serve_metrics(NodeMetrics(), port=70000)


def test_stopped_server_no_longer_listens_and_stop_is_idempotent():
    metrics = NodeMetrics()
    with serve_metrics(metrics)[0] as server:
        assert server.running
        assert ("fai_peers_connected", ()) in scrape(server.url)
    assert not server.running
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
