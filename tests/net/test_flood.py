"""The issue's flood against a real node process, shortened for CI.

The measured attack: one peer sending ~200 messages/s for 60 s (batches signed by 2,000
fresh keys in open mode claiming the node's model, plus junk, bad signatures and stale
batches) took a MiniLM node's control socket down for minutes, left honest batches
unmerged and grew its memory without bound. Here: the same peer (bench/flood_peer.py, a
real py-libp2p host) at 200 msg/s for 25 s against a node with the hashing embedder, an
honest node beside it publishing every 3 s; bench/flood.py is the full-length MiniLM run.

Budgets are per forwarding connection in open mode (fai_net/admission/budgets.py), so most of the
flood is refused before it is decoded; what passes is queued fairly (fai_net/node/pending.py),
so an honest batch waits for its own turn, not behind the flood.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fai_net.api.control import ControlClient
from fai_net.p2p.topics import topic_for
from tests.support.fleet import ROOT, corpus_by_domain, temporary_fleet, wait_for

FLOOD_PEER = ROOT / "bench/flood_peer.py"
DOMAIN = "coding"
RATE = 200
FLOOD_S = 25
KEYS = 2000


@pytest.fixture
def fleet():
    with temporary_fleet() as f:
        yield f


class Every(threading.Thread):
    """Calls `fn()` every `interval` s (absolute schedule, no catch-up) and keeps
    (unix time, seconds fn took, result or exception)."""

    def __init__(self, interval: float, fn) -> None:
        super().__init__(daemon=True)
        self.interval, self.fn = interval, fn
        self.halt = threading.Event()
        self.samples: list[tuple[float, float, object]] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            sent, started = time.time(), time.perf_counter()
            try:
                result = self.fn()
            except Exception as exc:  # a timeout is a sample too
                result = exc
            self.samples.append((sent, time.perf_counter() - started, result))
            next_at = max(next_at + self.interval, time.monotonic())
            self.halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)

    def between(self, lo: float, hi: float) -> list[tuple[float, float, object]]:
        return [s for s in self.samples if lo <= s[0] < hi]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def library_texts(node, source_hex: str) -> set[str]:
    out: set[str] = set()
    offset = 0
    while offset is not None:
        page = node.call("export", domain=DOMAIN, offset=offset, limit=1000)
        out |= {item["text"] for item in page["items"] if item["source"] == source_hex}
        offset = page["next"]
    return out


def decided(status: dict) -> int:
    """Messages the node's gate decided on: refusals (any reason) and stored batches."""
    return sum(status["rejections"].values()) + status["batches_stored"]


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def published_at(path: Path) -> dict[str, float]:
    return {e["cid"]: e["t"] for e in events(path) if e.get("ev") == "publishing"}


def merged_at(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in events(path):
        if e.get("ev") == "merged":
            for cid in e["cids"]:
                out.setdefault(cid, e["t"])
    return out


class FloodPeer:
    def __init__(self, target, model: str, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(FLOOD_PEER),
                    "--target",
                    target.addr,
                    "--topic",
                    topic_for(DOMAIN, 1),
                    "--model",
                    model,
                    "--rate",
                    str(RATE),
                    "--duration",
                    str(FLOOD_S),
                    "--keys",
                    str(KEYS),
                    "--seed",
                    "7",
                    "--wait-go",  # go on a line on stdin, and stay connected until the next
                    "--hold",
                    "300",
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        # Whatever goes wrong, the flood peer does not outlive the test by much.
        self.watchdog = threading.Timer(FLOOD_S + 120, self.proc.kill)
        self.watchdog.daemon = True
        self.watchdog.start()

    def next_event(self, name: str) -> dict:
        """Read stdout up to the JSON line of event `name` (blocking; the caller's
        subprocess timeouts bound it)."""
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == name:
                return event
        raise AssertionError(f"flood peer ended before {name!r}:\n{self.log_path.read_text()}")

    def tell(self) -> None:
        """A line on its stdin: go (flood), then stop (hang up)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_under_flood_status_answers_honest_batches_merge_and_memory_stays_bounded(fleet):
    t_events, h_events = fleet.root / "target.events", fleet.root / "honest.events"
    # Honest batches leave when the test broadcasts, not on the node's own timer.
    target = fleet.add(
        "target", (DOMAIN,), seeds=[], **{"event-log": t_events, "broadcast-interval": 600}
    )
    honest = fleet.add(
        "honest",
        (DOMAIN,),
        seeds=[target.addr],
        **{"event-log": h_events, "broadcast-interval": 600},
    )
    flood = FloodPeer(target, target.info["model"], fleet.root / "flood_peer.log")
    try:
        _run(target, honest, flood, t_events, h_events)
    finally:
        flood.stop()


def _run(target, honest, flood, t_events, h_events) -> None:
    status_client = ControlClient(target.data_dir / "control.sock", timeout=10)
    honest_client = ControlClient(honest.data_dir / "control.sock", timeout=60)
    sentences = [" ".join(t.split(" ")[:26]) for t in corpus_by_domain()[DOMAIN]]
    counter = iter(range(1_000_000))

    added: list[tuple[float, list[str]]] = []

    def honest_publish() -> list[str]:
        ks = [next(counter) for _ in range(5)]
        texts = [f"{sentences[k % len(sentences)]} (honest {k})" for k in ks]
        items = [{"text": t, "domain": DOMAIN, "quality": 0.7} for t in texts]
        sent = time.time()
        honest_client.call("add", experiences=items)
        added.append((sent, texts))
        return honest_client.call("broadcast", domain=DOMAIN)["batch_ids"]

    # Warm-up (the flood peer builds its envelopes meanwhile): the honest node is connected
    # and its batches merge at the target.
    wait_for(lambda: target.call("status")["peers"] >= 1, 30, "the honest node to connect")
    for _ in range(2):
        honest_publish()
    wait_for(
        lambda: len(set(published_at(h_events)) & set(merged_at(t_events))) >= 2,
        30,
        "warm-up batches merged at the target",
    )
    flood.next_event("meshed")

    status = Every(0.2, lambda: status_client.call("status"))

    def probe() -> tuple[bool, float | None]:
        try:
            return target.proc.poll() is None, rss_mb(target.proc.pid)
        except OSError:  # /proc/PID is gone
            return target.proc.poll() is None, None

    alive = Every(0.5, probe)
    driver = Every(3.0, honest_publish)
    for thread in (status, alive, driver):
        thread.start()
    try:
        time.sleep(5)  # baseline
        before = status_client.call("status")
        rss_start = float(np.median([s[2][1] for s in alive.samples[-8:]]))
        flood.tell()
        t_flood = flood.next_event("flooding")["t"]
        done = flood.next_event("done")
        t_done = done["t"]

        def drained() -> bool:
            # Its queue is empty and its gate has decided on everything the flood peer wrote
            # (a loaded node may still be reading its backlog from the connection).
            now = status_client.call("status")
            return now["pending"] == 0 and decided(now) - decided(before) >= done["written"]

        wait_for(drained, 30, "the target to drain")
        t_drained = time.time()
        driver.stop()
        flooded = [c for c, t in published_at(h_events).items() if t_flood <= t < t_done]
        # Every one of them merged within 15 s of publishing (asserted below, with figures).
        deadline = max(published_at(h_events).values()) + 15
        while time.time() < deadline and not set(flooded) <= set(merged_at(t_events)):
            time.sleep(0.25)
        time.sleep(3)
    finally:
        for thread in (status, alive, driver):
            thread.stop()
    flood.tell()  # it may hang up now
    report = flood.next_event("report")

    assert all(s[2][0] is True for s in alive.samples), f"the target died:\n{target.tail()}"
    after = target.call("status")
    during = status.between(t_flood, t_done)
    latencies = np.array([s[1] for s in during])
    errors = [s[2] for s in during if isinstance(s[2], Exception)]
    rss_under = [s[2][1] for s in alive.samples if s[0] >= t_flood and s[2][1] is not None]
    rss_after = float(
        np.median([s[2][1] for s in alive.samples if s[0] >= t_drained and s[2][1]][-6:])
    )
    published, merged = published_at(h_events), merged_at(t_events)
    honest_lat = [merged.get(c, float("inf")) - published[c] for c in flooded]
    refused = {k: v - before["rejections"].get(k, 0) for k, v in after["rejections"].items()}
    dropped = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items()}
    # Not asserted: "merged" (the event) means DeltaSoup decided on the batch, not that it
    # kept its rows, and under a flood of Sybil senders honest rows can be dropped as
    # scale outliers (see the figures): whose rows the target kept, and the honest node's
    # reputation there.
    kept = library_texts(target, honest.info["public_key"])
    flood_texts = [t for at, texts in added if t_flood <= at < t_done for t in texts]
    reputation = {row["node_id"]: row["reputation"] for row in target.call("peers")["peers"]}.get(
        honest.info["peer_id"]
    )
    figures = {
        "flood_peer": {
            k: report[k]
            for k in ("sent", "achieved_rate", "elapsed_s", "queue_full_waits", "unsent")
        },
        "status_n": len(during),
        "status_p50_p95_p99_max": [
            round(float(np.percentile(latencies, q)), 4) for q in (50, 95, 99, 100)
        ],
        "honest_merged_s": sorted(round(x, 2) for x in honest_lat),
        "rss_start_peak_after": [round(rss_start), round(max(rss_under)), round(rss_after)],
        "refused": refused,
        "dropped_rows": dropped,
        "honest_rows_in_target_library_during_flood": [
            sum(t in kept for t in flood_texts),
            len(flood_texts),
        ],
        "honest_reputation_at_target": reputation,
        "drained_after_s": round(t_drained - t_done, 1),
        "honest_call_errors": [repr(x[2]) for x in driver.samples if isinstance(x[2], Exception)],
    }
    print(json.dumps(figures))  # shown with -s, and in the failure report

    assert report["achieved_rate"] >= 0.8 * RATE, figures
    assert len(during) >= 50 and not errors, (figures, errors[:3])
    # On 2 shared cores a p99 from ~125 samples is one or two calls: p99 holds here in
    # repeated runs; a max bounds the odd descheduled call.
    assert np.percentile(latencies, 99) <= 0.25, figures
    assert latencies.max() <= 2.0, figures
    assert len(flooded) >= FLOOD_S // 3 - 2, figures
    assert max(honest_lat) <= 15, figures
    assert max(rss_under) <= rss_start + 300, figures
    assert rss_after <= rss_start + 150, figures
    assert (
        refused.get("forwarder_budget", 0)
        + refused.get("sender_budget", 0)
        + refused.get("busy", 0)
        > 0
    ), figures
    assert refused.get("bad_signature", 0) > 0 and refused.get("malformed_cbor", 0) > 0, figures
    assert refused.get("stale", 0) > 0, figures
    assert after["pending"] == 0 and after["contained_faults"] == {}, figures
