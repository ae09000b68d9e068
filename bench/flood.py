"""One real node under the issue's flood, with an honest peer beside it: does it stay up?

    .venv/bin/python bench/flood.py [--json] [--embedder minilm|hashing] [--rate 200]
        [--duration 60] [--keys 2000] [--drain 60] [--baseline 15] [--keep]

The attack the node must survive (the issue): one peer sending ~200 messages/s for 60 s
(signed batches from 2,000 fresh keys in open mode claiming the node's model, plus junk,
bad signatures and stale batches) took a MiniLM node's control socket down for minutes,
stopped honest batches from being merged and grew its memory without bound.

What runs, all on 127.0.0.1:
- the target: `fai node run --open --embedder minilm --round-interval 0.5 --event-log F
  --log-level info`, one domain (coding), no seeds; everything else at its defaults;
- an honest peer: the same command (same model: the gate refuses any other as
  wrong_model), seeded with the target;
- the hostile peer, bench/flood_peer.py: `--rate` msg/s for `--duration` s from `--keys`
  fresh keys against the target, mix 55% valid / 15% junk / 15% bad signature / 15% stale
  (its docstring). It builds every envelope before it connects, during the warm-up.

Phases. Warm-up: both nodes ready, the honest driver running, until `--warmup-batches` (3)
honest batches are merged at the target (the first pays for loading MiniLM) and the flood
peer is meshed. Baseline: `--baseline` s (15) of the same load without the flood: the
anchor for every figure below. Flood: until the flood peer's last message left its queue.
Drain: until the target's pending queue is empty and its gate has decided on every message
the flood peer wrote (a loaded node reads megabytes of backlog from its yamux window and
socket buffers after the sender is done; the flood peer stays connected until the end), or
`--drain` s (60). Settle: 10 s more, for the last honest merges and the memory figure
after.

Throughout:
- `status` on the target's control socket every 0.2 s (absolute schedule; a slow answer
  delays only the next call), timeout `--status-timeout` (10 s): latency per call;
- every 3 s the honest node gets `add` of 5 new coding experiences, then `broadcast`;
  honest publish->merged = the target's event log `merged` event holding the CID minus
  the honest node's own `publishing` event (both time.time() on this machine);
- the target's VmRSS (/proc/PID/status) every 0.5 s, and both nodes' CPU seconds.

Report (`--json`: one object): status latency p50/p99/max per phase and the flood/baseline
ratio (target p99 <= 0.25 s during the flood); honest batches published during the flood,
how many the target merged and their publish->merged p50/p95 (target p95 <= 10 s), how
each reached the target (gossip or repair); RSS before/peak/after (target peak <= before +
300 MB); the target's stored bytes (batch store, library) before and after; refusals by
reason and contained faults from `status`; the pending queue's peak; the flood peer's
achieved rate and counts; the honest `add` latency per phase.

On 2 shared cores the flood peer, the honest node and the target compete for the CPU: the
flood peer's own CPU is in its report (`cpu_s_flooding`), and the load average is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from fleet import Proc  # bench/fleet.py: the same process wrapper

from fai_core.corpus import load_pattern_corpus
from fai_net.api.control import ControlClient
from fai_net.p2p.topics import topic_for

ROOT = Path(__file__).resolve().parents[1]
FLOOD_PEER = Path(__file__).resolve().parent / "flood_peer.py"
DOMAIN = "coding"
TOPIC = topic_for(DOMAIN, 1)


@dataclass(frozen=True)
class Settings:
    embedder: str = "minilm"
    rate: float = 200.0
    duration_s: float = 60.0
    keys: int = 2000
    seed: int = 1
    drain_s: float = 60.0
    settle_s: float = 10.0
    baseline_s: float = 15.0
    warmup_batches: int = 3
    warmup_timeout_s: float = 300.0
    honest_interval_s: float = 3.0
    honest_n: int = 5
    status_interval_s: float = 0.2
    status_timeout_s: float = 10.0
    rss_interval_s: float = 0.5
    round_interval_s: float = 0.5


def log(msg: str) -> None:
    print(f"[flood {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------


@dataclass
class NodeRun(Proc):
    """A `fai node run` process (bench/fleet.py's Proc) with its event log and client."""

    cmd: list[str] = field(default_factory=list)
    ready_name: str = "node.json"
    args: list[str] = field(default_factory=list)

    @property
    def events_path(self) -> Path:
        return self.dir.parent / f"{self.name}.events"

    @property
    def log_path(self) -> Path:
        return self.dir.parent / f"{self.name}.log"

    def launch(self) -> NodeRun:  # type: ignore[override]
        self.cmd = [sys.executable, "-m", "fai_net.cli", "node", "run", *self.args]
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        return super().launch({**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 180.0) -> NodeRun:  # type: ignore[override]
        return super().wait_ready(timeout)

    def client(self, timeout: float) -> ControlClient:
        return ControlClient(self.dir / "control.sock", timeout=timeout)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def node_args(s: Settings, data_dir: Path, events: Path, seeds: list[str]) -> list[str]:
    args = [
        "--data-dir",
        str(data_dir),
        "--domain",
        DOMAIN,
        "--open",
        "--embedder",
        s.embedder,
        "--round-interval",
        str(s.round_interval_s),
        "--event-log",
        str(events),
        "--log-level",
        "info",
    ]
    for seed in seeds:
        args += ["--seed", seed]
    return args


class FloodPeer:
    """bench/flood_peer.py as a subprocess; its JSON lines collected by a reader thread."""

    def __init__(self, s: Settings, target: NodeRun, model: str, workdir: Path) -> None:
        cmd = [
            sys.executable,
            str(FLOOD_PEER),
            "--target",
            target.addr,
            "--topic",
            TOPIC,
            "--model",
            model,
            "--dim",
            "384",
            "--rate",
            str(s.rate),
            "--duration",
            str(s.duration_s),
            "--keys",
            str(s.keys),
            "--seed",
            str(s.seed),
            "--wait-go",
            "--hold",
            "900",  # connected until told: the target reads its backlog after the flood
        ]
        self.stderr_path = workdir / "flood_peer.log"
        with open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        self.events: dict[str, dict] = {}
        self.seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _flag(self, name: str) -> threading.Event:
        with self._lock:
            return self.seen.setdefault(name, threading.Event())

    def _read(self) -> None:
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = event.get("event", "?")
            self.events[name] = event
            self._flag(name).set()
        self._flag("exit").set()

    def wait(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._flag(name).wait(0.5):
                return self.events[name]
            if self._flag("exit").is_set():
                break
        raise RuntimeError(f"flood peer: no {name!r} (rc {self.popen.poll()}):\n{self.tail()}")

    def tell(self) -> None:
        """A line on its stdin: "go" before the flood, "stop" after it."""
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# -- monitors -------------------------------------------------------------------------------


class Ticker(threading.Thread):
    """Calls `tick()` every `interval` s on an absolute schedule until stopped; a tick that
    overruns delays the next one only (no catch-up burst)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.halt = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            self.tick()
            next_at = max(next_at + self.interval, time.monotonic())
            self.halt.wait(max(0.0, next_at - time.monotonic()))

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


class StatusPoller(Ticker):
    """`status` on one node: (unix time sent, latency s, result or None, error or None)."""

    def __init__(self, client: ControlClient, interval: float) -> None:
        super().__init__(interval)
        self.client = client
        self.samples: list[tuple[float, float, dict | None, str | None]] = []

    def tick(self) -> None:
        sent = time.time()
        started = time.perf_counter()
        try:
            result, error = self.client.call("status"), None
        except Exception as exc:  # timeouts, busy, a dead node: all are data here
            result, error = None, f"{type(exc).__name__}: {exc}"
        self.samples.append((sent, time.perf_counter() - started, result, error))

    def latest(self) -> dict | None:
        for _, _, result, _ in reversed(self.samples):
            if result is not None:
                return result
        return None


def read_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def read_cpu_s(pid: int) -> float | None:
    """utime + stime of the process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(Ticker):
    def __init__(self, pids: dict[str, int], interval: float) -> None:
        super().__init__(interval)
        self.pids = pids
        self.samples: dict[str, list[tuple[float, float | None]]] = {n: [] for n in pids}

    def tick(self) -> None:
        now = time.time()
        for name, pid in self.pids.items():
            self.samples[name].append((now, read_rss_mb(pid)))


class HonestDriver(Ticker):
    """Every interval: `add` of n new experiences on the honest node, then `broadcast`."""

    def __init__(self, client: ControlClient, interval: float, n: int) -> None:
        super().__init__(interval)
        self.client = client
        self.n = n
        self.sentences = [
            " ".join(t.split(" ")[:26]) for d, t in load_pattern_corpus() if d == DOMAIN
        ]
        self.k = 0
        #: (unix time add sent, add latency, broadcast latency, batch ids, error)
        self.calls: list[tuple[float, float | None, float | None, list[str], str | None]] = []
        #: (unix time add sent, texts) of every add that succeeded
        self.added: list[tuple[float, list[str]]] = []

    def texts(self) -> list[str]:
        out = []
        for _ in range(self.n):
            self.k += 1
            out.append(f"{self.sentences[self.k % len(self.sentences)]} (honest {self.k})")
        return out

    def tick(self) -> None:
        texts = self.texts()
        items = [{"text": t, "domain": DOMAIN, "quality": 0.7} for t in texts]
        sent = time.time()
        add_s = bcast_s = None
        ids: list[str] = []
        error = None
        try:
            started = time.perf_counter()
            self.client.call("add", experiences=items)
            add_s = time.perf_counter() - started
            self.added.append((sent, texts))
            started = time.perf_counter()
            ids = self.client.call("broadcast", domain=DOMAIN)["batch_ids"]
            bcast_s = time.perf_counter() - started
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.calls.append((sent, add_s, bcast_s, ids, error))


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def merged_times(events: list[dict]) -> dict[str, float]:
    """CID -> first `merged` event time."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("ev") == "merged":
            for cid in e.get("cids", ()):
                out.setdefault(cid, e["t"])
    return out


def scrape_stages(port: int | None) -> dict[str, float]:
    if not port:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fai_stage_seconds_total":
                out[sample.labels["stage"]] = sample.value
            elif sample.name in ("fai_round_seconds_sum", "fai_round_seconds_count"):
                out[sample.name] = sample.value
    return out


def dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def stored_bytes(data_dir: Path) -> dict[str, int]:
    return {
        "batch_store": dir_bytes(data_dir / "batches"),
        "library": dir_bytes(data_dir / "library"),
        "total": dir_bytes(data_dir),
    }


# -- figures --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values), q)), 4)


def latency_stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": round(max(values), 4) if values else None,
    }


def window(samples, lo: float, hi: float):
    return [x for x in samples if lo <= x[0] < hi]


def status_figures(poller: StatusPoller, phases: dict[str, tuple[float, float]]) -> dict:
    out = {}
    for name, (lo, hi) in phases.items():
        got = window(poller.samples, lo, hi)
        lat = [x[1] for x in got]
        out[name] = {
            **latency_stats(lat),
            "errors": sum(1 for x in got if x[3] is not None),
            "over_0_25_s": sum(1 for v in lat if v > 0.25),
        }
    base, during = out["baseline"]["p99"], out["flood"]["p99"]
    out["flood_p99_over_baseline_p99"] = round(during / base, 2) if base and during else None
    base50, during50 = out["baseline"]["p50"], out["flood"]["p50"]
    out["flood_p50_over_baseline_p50"] = (
        round(during50 / base50, 2) if base50 and during50 else None
    )
    errors = [x[3] for x in poller.samples if x[3] is not None]
    out["first_errors"] = errors[:3]
    return out


def honest_figures(
    driver: HonestDriver,
    honest_events: list[dict],
    target_events: list[dict],
    phases: dict[str, tuple[float, float]],
    in_target_library: set[str],
) -> dict:
    published = {e["cid"]: e["t"] for e in honest_events if e.get("ev") == "publishing"}
    merged = merged_times(target_events)
    accepted = {}
    for e in target_events:
        if e.get("ev") == "accepted":
            accepted.setdefault(e["cid"], e)
    out: dict = {}
    for name, (lo, hi) in phases.items():
        cids = [c for c, t in published.items() if lo <= t < hi]
        lat = [merged[c] - published[c] for c in cids if c in merged]
        origins: dict[str, int] = {}
        for c in cids:
            origin = accepted[c]["origin"] if c in accepted else "never_accepted"
            origins[origin] = origins.get(origin, 0) + 1
        out[name] = {
            "published": len(cids),
            "merged": len(lat),
            "not_merged": sorted(c[:16] for c in cids if c not in merged),
            "publish_to_merged_s": latency_stats(lat),
            "reached_target_by": origins,
        }
        add_lat = [x[1] for x in window(driver.calls, lo, hi) if x[1] is not None]
        bcast_lat = [x[2] for x in window(driver.calls, lo, hi) if x[2] is not None]
        out[name]["add_s"] = latency_stats(add_lat)
        out[name]["broadcast_s"] = latency_stats(bcast_lat)
        out[name]["call_errors"] = [x[4] for x in window(driver.calls, lo, hi) if x[4]][:3]
        texts = [t for _, batch in window(driver.added, lo, hi) for t in batch]
        out[name]["experiences_added"] = len(texts)
        out[name]["experiences_in_target_library"] = sum(t in in_target_library for t in texts)
    return out


def library_texts(client: ControlClient, source_hex: str) -> set[str]:
    """Texts in a node's library (domain coding) whose source is `source_hex`."""
    out: set[str] = set()
    offset: int | None = 0
    while offset is not None:
        page = client.call("export", domain=DOMAIN, offset=offset, limit=1000)
        out |= {item["text"] for item in page["items"] if item["source"] == source_hex}
        offset = page["next"]
    return out


def rss_figures(samples: list[tuple[float, float | None]], t_flood: float, t_drained: float):
    before = [v for t, v in samples if t < t_flood and v is not None][-10:]
    under = [v for t, v in samples if t >= t_flood and v is not None]
    after = [v for t, v in samples if t >= t_drained and v is not None]
    start = float(np.median(before)) if before else None
    peak = max(under) if under else None
    end = float(np.median(after[-10:])) if after else None
    return {
        "before_mb": round(start, 1) if start else None,
        "peak_mb": round(peak, 1) if peak else None,
        "after_mb": round(end, 1) if end else None,
        "peak_minus_before_mb": round(peak - start, 1) if start and peak else None,
        "after_minus_before_mb": round(end - start, 1) if start and end else None,
    }


def rss_timeline(samples: dict[str, list], lo: float) -> list[dict]:
    """Both nodes' RSS every 5 s from `lo`."""
    out = []
    next_t = lo
    names = list(samples)
    for i, (t, _) in enumerate(samples[names[0]]):
        if t >= next_t:
            row = {"t": round(t - lo, 1)}
            for name in names:
                value = samples[name][i][1] if i < len(samples[name]) else None
                row[name] = round(value) if value is not None else None
            out.append(row)
            next_t = t + 5.0
    return out


def processed(status: dict) -> int:
    """Messages the node's gate has decided on: every refusal (by reason) and every stored
    batch."""
    if not status:
        return 0
    return sum(status.get("rejections", {}).values()) + status.get("batches_stored", 0)


def queue_figures(poller: StatusPoller, lo: float, hi: float) -> dict:
    got = [x for x in window(poller.samples, lo, hi) if x[2] is not None]
    pending = [x[2]["pending"] for x in got]
    rows = [x[2]["pending_rows"] for x in got]
    timeline = []
    next_t = lo
    for t, _, result, _ in got:
        if t >= next_t:
            timeline.append(
                {
                    "t": round(t - lo, 1),
                    "pending": result["pending"],
                    "pending_rows": result["pending_rows"],
                    "processed": processed(result),
                    "batches_stored": result["batches_stored"],
                    "library_size": result["library_size"],
                }
            )
            next_t = t + 5.0
    return {
        "pending_peak": max(pending) if pending else None,
        "pending_rows_peak": max(rows) if rows else None,
        "timeline_every_5s": timeline,
    }


def diff_counts(before: dict, after: dict) -> dict:
    keys = sorted(set(before) | set(after))
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)
    }


# -- the run --------------------------------------------------------------------------------


def run(s: Settings, root: Path) -> dict:
    target = NodeRun("target", root / "target")
    target.args = node_args(s, target.dir, target.events_path, [])
    honest = NodeRun("honest", root / "honest")
    nodes = [target, honest]
    flood: FloodPeer | None = None
    monitors: list[Ticker] = []
    try:
        log(f"starting the target ({s.embedder}) in {root}")
        target.launch().wait_ready()
        honest.args = node_args(s, honest.dir, honest.events_path, [target.addr])
        honest.launch().wait_ready()
        model = target.info["model"]
        flood = FloodPeer(s, target, model, root)
        log(f"nodes up ({model}); flood peer building its pool meanwhile")

        poller = StatusPoller(target.client(s.status_timeout_s), s.status_interval_s)
        rss = RssSampler({"target": target.pid, "honest": honest.pid}, s.rss_interval_s)
        driver = HonestDriver(honest.client(120.0), s.honest_interval_s, s.honest_n)
        monitors = [poller, rss, driver]
        t_warm = time.time()
        for m in monitors:
            m.start()

        deadline = time.monotonic() + s.warmup_timeout_s
        while True:  # warm-up: honest batches merged at the target (model loaded there)
            published = {
                e["cid"] for e in read_events(honest.events_path) if e.get("ev") == "publishing"
            }
            done = len(published & set(merged_times(read_events(target.events_path))))
            if done >= s.warmup_batches:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm-up: {done} honest batches merged in time")
            if not target.alive():
                raise RuntimeError(f"target died in warm-up:\n{target.tail()}")
            time.sleep(0.5)
        pregen = flood.wait("pregen", 600)
        flood.wait("meshed", 120)
        log(f"warm-up done in {time.time() - t_warm:.0f} s; pool {pregen}; baseline window")
        t_base = time.time()
        time.sleep(s.baseline_s)
        before_status = poller.latest() or {}
        before_stored = stored_bytes(target.dir)
        before_stages = scrape_stages(target.info.get("metrics_port"))
        cpu_before = {n.name: read_cpu_s(n.pid) for n in nodes}
        load_before = os.getloadavg()

        flood.tell()
        t_flood = flood.wait("flooding", 30)["t"]
        log(f"flooding at {s.rate:g} msg/s for {s.duration_s:g} s")
        dead_during = False
        while not flood._flag("done").wait(0.5):
            if flood._flag("exit").is_set():
                break
            dead_during = dead_during or not target.alive()
        done = flood.wait("done", 60)
        t_flood_end = done["t"]
        cpu_flood = {n.name: read_cpu_s(n.pid) for n in nodes}
        flood_stages = scrape_stages(target.info.get("metrics_port"))
        load_flood = os.getloadavg()
        processed_at_end_of_flood = processed(poller.latest() or {}) - processed(before_status)
        log(
            f"flood over: {done['written']} messages written; the target had processed "
            f"{processed_at_end_of_flood}; draining"
        )

        # Drained: the queue is empty and the target's gate has decided on as many messages
        # as the flood peer wrote (refusals + stored batches since the flood started; the
        # few honest batches in that count end it a little early). A loaded node reads
        # megabytes of backlog from its yamux window and socket buffers after the last write.
        drain_deadline = time.time() + s.drain_s
        drained = None
        while time.time() < drain_deadline:
            latest = [x for x in poller.samples if x[0] > t_flood_end and x[2] is not None]
            if latest:
                result = latest[-1][2]
                seen = processed(result) - processed(before_status)
                if result["pending"] == 0 and seen >= done["written"]:
                    drained = latest[-1][0]
                    break
            time.sleep(0.5)
        t_drained = time.time()
        driver.stop()  # no new honest batches after the drain
        log(
            f"drain: {'pending 0' if drained else 'not drained'} after "
            f"{t_drained - t_flood_end:.1f} s; settling {s.settle_s:g} s"
        )
        time.sleep(s.settle_s)
        t_end = time.time()
        poller.stop()
        rss.stop()
        after_status = poller.latest() or {}
        flood.tell()  # stop: it may hang up now
        report = flood.wait("report", 60)
        honest_status = honest.client(30).call("status") if honest.alive() else {}
        honest_key = honest.info["public_key"]
        in_library = library_texts(target.client(60), honest_key)
        honest_rep = None
        for row in target.client(30).call("peers")["peers"]:
            if row["node_id"] == honest.info["peer_id"]:
                honest_rep = row["reputation"]
        alive = target.alive()
        dead_during = dead_during or not alive

        phases = {
            "baseline": (t_base, t_flood),
            "flood": (t_flood, t_flood_end),
            "drain": (t_flood_end, t_drained),
        }
        honest_phases = {**phases, "warm_up": (t_warm, t_base), "drain": (t_flood_end, t_end)}
        target_events = read_events(target.events_path)
        out = {
            "settings": asdict(s),
            "machine": {
                "cores": os.cpu_count(),
                "load_before": load_before,
                "load_after_flood": load_flood,
            },
            "model": model,
            "target_alive_throughout": not dead_during,
            "status_latency_s": status_figures(poller, phases),
            "honest": honest_figures(
                driver, read_events(honest.events_path), target_events, honest_phases, in_library
            ),
            "honest_reputation_at_target_end": honest_rep,
            "rss_mb": {
                "target": rss_figures(rss.samples["target"], t_flood, t_drained),
                "honest": rss_figures(rss.samples["honest"], t_flood, t_drained),
                "timeline_every_5s_from_flood": rss_timeline(rss.samples, t_flood),
            },
            "stored_bytes": {"before": before_stored, "after": stored_bytes(target.dir)},
            "refusals": {
                "total": after_status.get("rejections", {}),
                "since_flood_start": diff_counts(
                    before_status.get("rejections", {}), after_status.get("rejections", {})
                ),
            },
            "drops_since_flood_start": diff_counts(
                before_status.get("drops", {}), after_status.get("drops", {})
            ),
            "contained_faults": after_status.get("contained_faults"),
            "queue": queue_figures(poller, t_flood, t_end),
            "processed_by_target_gate": {
                "flood_messages_written": done["written"],
                "at_end_of_flood": processed_at_end_of_flood,
                "at_end": processed(after_status) - processed(before_status),
                "note": "refusals + stored batches since flood start (honest batches included)",
            },
            "drain": {
                "drained_after_s": round(drained - t_flood_end, 1) if drained else None,
                "pending_at_end": after_status.get("pending"),
                "pending_rows_at_end": after_status.get("pending_rows"),
            },
            "target_counts": {
                k: (before_status.get(k), after_status.get(k))
                for k in ("batches_stored", "library_size", "evidence", "peers")
            },
            "target_events": {
                "accepted": sum(1 for e in target_events if e.get("ev") == "accepted"),
                "merged_batches": len(merged_times(target_events)),
            },
            "cpu_s_during_flood": {
                name: round(cpu_flood[name] - cpu_before[name], 1)
                if cpu_flood[name] is not None and cpu_before[name] is not None
                else None
                for name in cpu_before
            },
            "target_stage_s_during_flood": diff_counts(before_stages, flood_stages),
            "honest_node": {
                "rejections": honest_status.get("rejections"),
                "pending": honest_status.get("pending"),
                "library_size": honest_status.get("library_size"),
            },
            "flood_peer": {**report, "pool": pregen},
            "target_log": log_summary(target.log_path),
        }
        return out
    finally:
        for m in monitors:
            m.halt.set()
        if flood is not None:
            flood.stop()
        for node in nodes:
            try:
                node.stop()
            except Exception:  # teardown must reach every process
                if node.popen is not None:
                    node.popen.kill()


def log_summary(path: Path) -> dict:
    """What the target logged: refusal lines (rate-limited), warnings, errors, tracebacks."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    return {
        "lines": len(lines),
        "rejected_batch_lines": sum(1 for ln in lines if "rejected batch" in ln),
        "warnings": sum(1 for ln in lines if " WARNING " in ln or "WARNING:" in ln),
        "errors": sum(1 for ln in lines if " ERROR " in ln or "ERROR:" in ln),
        "tracebacks": text.count("Traceback"),
    }


def print_human(r: dict) -> None:
    st = r["status_latency_s"]
    print(
        f"model {r['model']}, {r['machine']['cores']} cores, load before "
        f"{r['machine']['load_before'][0]:.2f}"
    )
    fp = r["flood_peer"]
    print(
        f"flood peer: {fp['sent_total']} messages in {fp['elapsed_s']} s = "
        f"{fp['achieved_rate']} msg/s (target {fp['rate_target']}), by kind {fp['sent']}, "
        f"waited for queue room {fp['queue_full_waits']}x ({fp['queue_full_wait_s']} s), "
        f"unsent {fp['unsent']}, pool built in {fp['pregen_s']} s"
    )
    print(f"target alive throughout: {r['target_alive_throughout']}")
    for phase in ("baseline", "flood", "drain"):
        x = st[phase]
        print(
            f"status {phase:8s}: n={x['n']:4d} p50={x['p50']} p99={x['p99']} max={x['max']} "
            f"errors={x['errors']} >0.25s={x['over_0_25_s']}"
        )
    print(
        f"status p99 flood/baseline = {st['flood_p99_over_baseline_p99']} "
        f"(p50 {st['flood_p50_over_baseline_p50']})"
    )
    for phase in ("baseline", "flood", "drain"):
        h = r["honest"][phase]
        m = h["publish_to_merged_s"]
        print(
            f"honest {phase:8s}: merged {h['merged']}/{h['published']} p50={m['p50']} "
            f"p95={m['p95']} max={m['max']} via {h['reached_target_by']} "
            f"add p50={h['add_s']['p50']} max={h['add_s']['max']}; in target library "
            f"{h['experiences_in_target_library']}/{h['experiences_added']}"
        )
    print(
        f"honest node's reputation at the target at the end: {r['honest_reputation_at_target_end']}"
    )
    t = r["rss_mb"]["target"]
    print(
        f"target RSS MB: before {t['before_mb']} peak {t['peak_mb']} "
        f"(+{t['peak_minus_before_mb']}) after {t['after_mb']} (+{t['after_minus_before_mb']})"
    )
    print(f"stored bytes: before {r['stored_bytes']['before']} after {r['stored_bytes']['after']}")
    print(f"refusals since flood start: {r['refusals']['since_flood_start']}")
    print(f"contained faults: {r['contained_faults']}")
    q = r["queue"]
    print(
        f"pending peak {q['pending_peak']} batches / {q['pending_rows_peak']} rows; "
        f"drain {r['drain']}"
    )
    print(
        f"CPU s during flood: {r['cpu_s_during_flood']}; target stages "
        f"{r['target_stage_s_during_flood']}"
    )
    print(f"honest node: {r['honest_node']}")
    print(f"target log: {r['target_log']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--keys", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain", type=float, default=60.0)
    p.add_argument("--baseline", type=float, default=15.0)
    p.add_argument("--round-interval", type=float, default=0.5)
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    a = p.parse_args(argv)
    s = Settings(
        embedder=a.embedder,
        rate=a.rate,
        duration_s=a.duration,
        keys=a.keys,
        seed=a.seed,
        drain_s=a.drain,
        baseline_s=a.baseline,
        round_interval_s=a.round_interval,
    )
    root = Path(tempfile.mkdtemp(prefix="fai-flood-", dir="/tmp"))  # AF_UNIX paths: short
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = run(s, root)
        report["run_dir"] = str(root) if a.keep else None
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_human(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
