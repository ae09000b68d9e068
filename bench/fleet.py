"""A fleet of real FAI node processes on loopback, and bare py-libp2p gossipsub beside it.

    .venv/bin/python bench/fleet.py [--json] [--quick] [--embedder minilm|hashing]
        [--nodes N] [--duration S] [--interval S] [--grace S] [--no-bare] [--keep]
    .venv/bin/python bench/fleet.py --hosts ...   (as root: loopback vs network namespaces
        vs a relayed node, one run; bench/fleet_hosts.py)

Defaults: 10 nodes, the real embedder (all-MiniLM-L6-v2), 120 s; `--quick` = 4 nodes, 30 s;
`--embedder hashing` for a fast functional check (its re-embedding costs nothing; its
latencies and bytes are FAI's, its CPU figures are not the real model's). Earlier versions
dropped ~45% of hashing rows as semantic_mismatch; since wire v2 a quick hashing run drops
none (`experiences_dropped` says so in every report).

What runs. N `fai node run` processes (`--open`, one domain, `--broadcast-threshold 20`,
`--round-interval 0.5`, `--repair-interval 10`, `--event-log`), node 0 first, node 1
seeded with node 0, the rest seeded with nodes 0 and 1. Node processes (and this one) run
with OMP/MKL/OPENBLAS/NUMBA threads = 1 and TOKENIZERS_PARALLELISM=false: N processes on a
few cores gain nothing from intra-op threads. Before measuring: one `search` per node
(loads the model), one warm-up round (every node publishes one batch, all merged
everywhere: numba's cached kernels, the LanceDB table and torch's first batches are paid
for outside the window), then 10 s of idle CPU.

The load. Every `--interval` s (5) for `--duration` s (120) each node gets `add` of 20
fresh experiences, which the threshold turns into one published 20-experience batch. Node
i's slots are staggered by i x interval/N, so the fleet publishes at an even rate, not in
bursts of N. One add in flight per node: a node's add waits for its library (one limiter
serialises embedding of its own texts and merge rounds), and a slot that passes while the
previous add is still running is skipped, not caught up (reported as skipped slots; an
overloaded node publishes less rather than queueing unbounded work). Texts: coding-corpus
sentences (<= 28 words) + " (case K)", K unique in the run, so no experience id repeats
and neighbouring texts come from different sentences (DeltaSoup's near-duplicate
clustering rarely fires). Quality 0.7 for all, so no sender looks like a quality outlier.

The baseline, in the same run after the FAI nodes stopped: N `bench/bare_gossip_peer.py`
processes (the node's `build_host` and `GossipSettings`, no validator, same topic, same
topology) publish the very envelopes the FAI nodes published (read from each publisher's
batch store), each at the same offset from the start as the FAI node published it.

Figures, and why each is computed as it is:

- publish->accepted and publish->merged, per (batch, receiver): the receiver's `accepted`
  (gossip validator said yes) and `merged` (its DeltaSoup round done) event time minus the
  publisher's `publishing` event time (node `--event-log`: time.time(), one clock). p50/p95
  over all (batch, receiver) pairs; the "at_all" rows take per batch its slowest receiver
  (batches that reached every other node). Bare: a peer's `published` record to the moment
  the message left another peer's subscription channel. Latency target: FAI p95 <= 2 x
  bare p95, given for merged (delivered into the library) and for accepted.
- CPU per received batch, over the window, divided by the batches the node accepted from
  others in it. The node's `fai_stage_seconds_total`: validate = gate CPU on the event
  loop (thread_time), round = merge-thread CPU (thread_time: DeltaSoup + library merge,
  re-embedding included), embed = *wall* time in the embedder. "With re-embedding" =
  validate + round. The node cannot say how much of `round` is re-embedding: its embed
  counter is wall time (a descheduled thread keeps counting on an oversubscribed machine)
  and also counts the embedding of the node's own adds, so round - embed understates and
  can go far below zero (printed as `minus_embed_counter`). So after the fleet stopped,
  this process replays one receiver's merge rounds (the last node, a leaf) through the
  node's own merge step (`MergeRounds`) on one thread: the same batches (decoded from the
  publishers' envelopes), grouped and ordered as its `merged` events grouped them, after
  merging the warm-up round unmeasured, with a fresh library. There the embedder's thread
  CPU is timed apart. "Without re-embedding" = in-situ validate + the replay's round -
  embed per batch; "by_subtraction" = in-situ validate + round - (replay embed CPU per
  text x texts received), a cross-check. A replay runs on a quiet core: in-situ CPU per
  operation under contention is likely a little higher.
- `round` is one thread's CPU; what LanceDB does for a merge on its own tokio threads is
  outside it. The replay measures that too (`other_threads_ms_per_batch`) and
  "plus_lancedb_threads" adds it. In situ, per-thread CPU by thread name
  (/proc/<pid>/task) is listed; there the LanceDB threads also serve the node's own adds,
  its broadcasts (one filtered scan per outbox id) and its 10 s stats refresh.
- libp2p's own delivery cost = bare process CPU (utime+stime over its window, psutil) /
  batches delivered to it: noise, yamux, protobuf, message signatures, forwarding,
  heartbeats and its own publishes, per batch received. Cost target: FAI receive CPU per
  batch without re-embedding <= 10% of it. FAI whole-process CPU per received batch, its
  event-loop thread alone, and both figures net of idle CPU are printed beside it.
- bytes per node per round (a round = one interval in which every node publishes once;
  divided by the rounds actually published = batches / N): the node's counters
  (`fai_bytes_sent_total` counts a published envelope once, not per peer, and nothing
  forwarded; `fai_bytes_received_total` counts what reached the validator), and TCP payload
  bytes from `ss -ti` (bytes_acked / bytes_received of each libp2p connection of the
  process, sampled at both ends of the window): framing, encryption, gossip control,
  forwarding and repair, for FAI and bare alike.
- lost batches = published (publisher, cid) pairs missing from some other node's batch
  store (control `batches`) at the end of the window. The window ends when every batch is
  merged everywhere, or when nothing was published or merged anywhere for `--grace` s
  (default 60), or 600 s after the last add. Bare: messages not delivered to every other
  peer `--grace` s after the last publish.

Load average (before and after) and core count are in the report: on 2 cores with other
work on the machine, every figure carries that load.
"""

from __future__ import annotations

import os

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _var, _value in THREAD_ENV.items():
    os.environ.setdefault(_var, _value)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from fai_core import dagcbor  # noqa: E402
from fai_core.corpus import load_pattern_corpus  # noqa: E402
from fai_core.experience import text_problem  # noqa: E402
from fai_core.wire import decode_envelope  # noqa: E402
from fai_net.api.control import ControlClient  # noqa: E402
from fai_net.devnet.launch import (  # noqa: E402
    NODE_READY,
    Launched,
    launch,
    log_tail,
    node_command,
)
from fai_net.p2p.topics import topic_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BARE_PEER = Path(__file__).resolve().parent / "bare_gossip_peer.py"
DOMAIN = "coding"
#: Threads named by native code (LanceDB's tokio and CPU pools, jemalloc); "python" is a
#: Python thread trio did not start (the metrics HTTP server, the control server's...).
NATIVE_THREADS = {"lancedb-tokio-w", "lance-cpu", "jemalloc_bg_thd", "python"}


@dataclass(frozen=True)
class Settings:
    nodes: int = 10
    duration_s: float = 120.0
    interval_s: float = 5.0
    batch_size: int = 20
    embedder: str = "minilm"
    round_interval_s: float = 0.5
    repair_interval_s: float = 10.0
    grace_s: float = 60.0
    drain_cap_s: float = 600.0
    lead_s: float = 1.0
    idle_s: float = 10.0
    replay: bool = True

    @property
    def rounds(self) -> int:
        return max(1, int(self.duration_s // self.interval_s))

    def offset(self, node: int, k: int) -> float:
        """When node `node` publishes its k-th batch, in seconds after t0."""
        return self.lead_s + k * self.interval_s + node * self.interval_s / self.nodes


def log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    dir: Path
    cmd: list[str]
    ready_name: str
    popen: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)
    launched: Launched | None = field(default=None, repr=False)

    def launch(self, env: dict[str, str]) -> Proc:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Own session: a Ctrl-C reaches only the bench, which then stops them in order.
        self.launched = launch(
            self.cmd,
            name=self.name,
            ready=self.dir / self.ready_name,
            log=self.log_path,
            env=env,
            cwd=ROOT,
            new_session=True,
        )
        self.popen = self.launched.popen
        return self

    @property
    def log_path(self) -> Path:
        return self.dir.parent / f"{self.name}.log"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float) -> Proc:
        self.info = self.launched.wait_ready(timeout, tail_lines=30)
        return self

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    @property
    def listen_port(self) -> int:
        return int(self.addr.split("/")[4])

    def tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def scrape(self) -> dict:
        """The node's metrics (`scrape`); bench/fleet_hosts.py reads them in its namespace."""
        return scrape(self.info["metrics_port"])

    def stop(self, timeout: float = 30.0) -> None:
        if self.launched is not None:
            self.launched.stop(timeout)


def stop_all(procs: list[Proc]) -> None:
    for p in procs:  # signal every one first, so they shut down in parallel
        if p.launched is not None:
            p.launched.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.stop()
        except Exception:  # teardown must reach every process
            if p.launched is not None:
                p.launched.kill()


def child_env() -> dict[str, str]:
    return {**os.environ, **THREAD_ENV, "PYTHONUNBUFFERED": "1"}


def start_topology(procs: list[Proc], seeds_arg, timeout: float) -> None:
    """procs[0] first, procs[1] seeded with it, the rest seeded with both (in parallel)."""
    env = child_env()
    procs[0].cmd += seeds_arg([])
    procs[0].launch(env).wait_ready(timeout)
    if len(procs) > 1:
        procs[1].cmd += seeds_arg([procs[0].addr])
        procs[1].launch(env).wait_ready(timeout)
    rest = procs[2:]
    for p in rest:
        p.cmd += seeds_arg([procs[0].addr, procs[1].addr])
        p.launch(env)
    for p in rest:
        p.wait_ready(timeout)


# -- measurements of processes --------------------------------------------------------------


def proc_cpu(pid: int) -> dict:
    """Process CPU (user + system) and per-thread CPU keyed by tid, with thread names."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    threads = {}
    for th in p.threads():
        try:
            name = Path(f"/proc/{pid}/task/{th.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        if th.id == pid:
            name = "main (event loop)"
        elif name not in NATIVE_THREADS:
            # trio names a worker thread after its job ("Trio thread 3", "_merge_in_threa"
            # - /proc keeps 15 characters), so the name at sampling time says nothing.
            name = "trio worker threads"
        threads[th.id] = (name, th.user_time + th.system_time)
    return {"cpu": t.user + t.system, "threads": threads}


def cpu_delta(start: dict, end: dict) -> dict:
    by_name: dict[str, float] = {}
    for tid, (name, cpu) in end["threads"].items():
        before = start["threads"].get(tid, (name, 0.0))[1]
        by_name[name] = by_name.get(name, 0.0) + max(0.0, cpu - before)
    total = end["cpu"] - start["cpu"]
    by_name["(exited threads)"] = max(0.0, total - sum(by_name.values()))
    return {"cpu_s": total, "threads_cpu_s": dict(sorted(by_name.items(), key=lambda kv: -kv[1]))}


_SS_PID = re.compile(r"pid=(\d+)")


def tcp_counters(
    pids: set[int], ports: set[int], prefix: tuple[str, ...] = ()
) -> dict[tuple, tuple[int, int]] | None:
    """TCP payload counters of the libp2p connections of `pids` (None if `ss` is missing).
    `prefix` runs `ss` through it (`ip netns exec NS`: the sockets of another namespace)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        [*prefix, "ss", "-tinpH", "state", "established"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counters: dict[tuple, tuple[int, int]] = {}
    key = None
    for line in out.splitlines():
        if not line[:1].isspace():
            key = None
            parts = line.split()
            m = _SS_PID.search(line)
            if len(parts) < 4 or m is None or int(m.group(1)) not in pids:
                continue
            local, peer = parts[2], parts[3]
            lport, pport = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
            if lport in ports or pport in ports:
                key = (int(m.group(1)), local, peer)
        elif key is not None:
            sent = re.search(r"bytes_acked:(\d+)", line)
            recv = re.search(r"bytes_received:(\d+)", line)
            counters[key] = (int(sent.group(1)) if sent else 0, int(recv.group(1)) if recv else 0)
            key = None
    return counters


def tcp_delta(start, end, pid: int) -> dict | None:
    if start is None or end is None:
        return None
    sent = recv = 0
    for key, (s, r) in end.items():
        if key[0] == pid:
            s0, r0 = start.get(key, (0, 0))
            sent += max(0, s - s0)
            recv += max(0, r - r0)
    return {"sent": sent, "received": recv}


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return parse_metrics(resp.read().decode())


def parse_metrics(text: str) -> dict:
    """The node's Prometheus text reduced to the counters the bench reads."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {"stage": {}, "received": {}, "dropped": {}, "rejected": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fai_stage_seconds_total":
                out["stage"][s.labels["stage"]] = s.value
            elif s.name == "fai_batches_received_total":
                out["received"][s.labels["origin"]] = s.value
            elif s.name == "fai_experiences_dropped_total":
                out["dropped"][s.labels["reason"]] = s.value
            elif s.name == "fai_batches_rejected_total":
                out["rejected"][s.labels["reason"]] = s.value
            elif s.name in (
                "fai_bytes_sent_total",
                "fai_bytes_received_total",
                "fai_experiences_merged_total",
                "fai_batches_sent_total",
            ):
                out[s.name] = s.value
    return out


def metric_delta(start: dict, end: dict) -> dict:
    def sub(a: dict, b: dict) -> dict:
        return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in sorted(set(a) | set(b))}

    out = {k: sub(start[k], end[k]) for k in ("stage", "received", "dropped", "rejected")}
    for k in (
        "fai_bytes_sent_total",
        "fai_bytes_received_total",
        "fai_experiences_merged_total",
        "fai_batches_sent_total",
    ):
        out[k] = end.get(k, 0.0) - start.get(k, 0.0)
    return out


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            events.append(json.loads(line))
    return events


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 4),
        "p95": round(float(np.percentile(a, 95)), 4),
        "mean": round(float(a.mean()), 4),
        "max": round(float(a.max()), 4),
    }


def div(a: float, b: float) -> float | None:
    return None if not b else a / b


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


# -- texts ----------------------------------------------------------------------------------


def make_texts(s: Settings) -> dict[tuple[int, int], list[str]]:
    """(node, round) -> batch_size unique texts."""
    sentences = [t for d, t in load_pattern_corpus() if d == DOMAIN]
    out = {}
    for r in range(s.rounds):
        for i in range(s.nodes):
            texts = []
            for j in range(s.batch_size):
                k = (r * s.nodes + i) * s.batch_size + j
                base = " ".join(sentences[k % len(sentences)].split(" ")[:28])
                text = f"{base} (case {k})"
                problem = text_problem(text)
                if problem is not None:
                    raise ValueError(f"bench text refused ({problem[1]}): {text!r}")
                texts.append(text)
            out[(i, r)] = texts
    return out


# -- the FAI run ----------------------------------------------------------------------------


def node_args(s: Settings, d: Path) -> list[str]:
    """The `fai node run` arguments of a bench node with data directory `d`: the settings of
    every fleet (bench/fleet_hosts.py adds listen addresses, seeds and relay flags)."""
    return [
        "--data-dir",
        str(d),
        "--domain",
        DOMAIN,
        "--open",
        "--embedder",
        s.embedder,
        "--broadcast-threshold",
        str(s.batch_size),
        "--broadcast-interval",
        "600",
        "--round-interval",
        str(s.round_interval_s),
        "--repair-interval",
        str(s.repair_interval_s),
        "--metrics-port",
        "0",
        "--event-log",
        str(d / "events.jsonl"),
        "--log-level",
        "info",
    ]


def run_fai(s: Settings, root: Path, procs: list[Proc]) -> dict:
    texts = make_texts(s)
    nodes = []
    for i in range(s.nodes):
        d = root / f"n{i}"
        cmd = node_command(node_args(s, d), module="fai_net.cli.entry")
        nodes.append(Proc(f"n{i}", d, cmd, NODE_READY))
    procs.extend(nodes)

    def seeds(addrs: list[str]) -> list[str]:
        return [a for addr in addrs for a in ("--seed", addr)]

    log(f"starting {s.nodes} FAI nodes ({s.embedder}) in {root}")
    start_topology(nodes, seeds, timeout=180)
    return measure_fai(s, nodes, texts)


def loopback_tcp(nodes: list[Proc]) -> dict[tuple, tuple[int, int]] | None:
    """TCP counters of the nodes' libp2p connections, all in this network namespace."""
    return tcp_counters({n.pid for n in nodes}, {n.listen_port for n in nodes})


def measure_fai(s: Settings, nodes: list[Proc], texts: dict, tcp=loopback_tcp) -> dict:
    """Measure a started fleet: warm it up, publish on the schedule, wait until every batch
    is merged everywhere (or nothing moves for grace_s), then stop the nodes and read their
    figures. `tcp(nodes)` samples the TCP counters (bench/fleet_hosts.py: per namespace)."""
    clients = [ControlClient(n.dir / "control.sock", timeout=300) for n in nodes]
    warmup_s, warm_s, idle = warm_up(s, nodes, clients)
    cpu0 = {n.name: proc_cpu(n.pid) for n in nodes}
    met0 = {n.name: n.scrape() for n in nodes}
    tcp0 = tcp(nodes)
    t0 = time.time()
    log(f"measuring: {s.rounds} rounds x {s.nodes} nodes, one batch each per {s.interval_s} s")
    calls, skipped = run_schedule(s, clients, texts, t0)
    expected = sum(1 for v in calls.values() for c in v if c["error"] is None)
    log(f"{expected} adds made; waiting for every batch to be merged everywhere")
    complete = drain(s, nodes, t0, expected)
    t_end = time.time()
    cpu1 = {n.name: proc_cpu(n.pid) for n in nodes}
    met1 = {n.name: n.scrape() for n in nodes}
    tcp1 = tcp(nodes)
    log(f"window {t_end - t0:.1f} s ({'complete' if complete else 'incomplete'})")
    stored = [set(c.call("batches", domain=DOMAIN)["cids"]) for c in clients]
    status = [c.call("status") for c in clients]
    ev = fai_events(nodes, t0)
    log("stopping FAI nodes")
    stop_all(nodes)
    for n in nodes:
        if "Traceback" in n.tail(10_000):
            log(f"{n.name} logged a traceback (see {n.dir.parent / (n.name + '.log')})")

    envelopes = own_envelopes(nodes)
    blocks = stored_blocks(nodes)
    result = fai_figures(s, nodes, ev, stored, status, t0, t_end, complete)
    result["warmup_s"] = {"model_load": round(warmup_s, 1), "warm_up_round": round(warm_s, 1)}
    result["idle_cpu_per_node_s_per_s"] = stats([x["cpu_s"] / s.idle_s for x in idle.values()])
    per_node = result["per_node"]
    for i, n in enumerate(nodes):
        d = cpu_delta(cpu0[n.name], cpu1[n.name])
        m = metric_delta(met0[n.name], met1[n.name])
        per_node[i].update(
            cpu_s=round(d["cpu_s"], 3),
            idle_cpu_s_per_s=round(idle[n.name]["cpu_s"] / s.idle_s, 4),
            idle_lancedb_cpu_s_per_s=round(
                idle[n.name]["threads_cpu_s"].get("lancedb-tokio-w", 0.0) / s.idle_s, 4
            ),
            threads_cpu_s={k: round(v, 3) for k, v in d["threads_cpu_s"].items()},
            metrics=m,
            tcp=tcp_delta(tcp0, tcp1, n.pid),
        )
    slips = [c["slip"] for i in calls for c in calls[i]]
    durations = [c["call"] for i in calls for c in calls[i]]
    result["schedule"] = {
        "add_calls": sum(len(v) for v in calls.values()),
        "skipped_slots": sum(len(v) for v in skipped.values()),
        "skipped_by_node": {nodes[i].name: len(v) for i, v in skipped.items() if v},
        "add_errors": [c["error"] for v in calls.values() for c in v if c["error"]],
        "start_slip_s": stats(slips),
        "add_call_s": stats(durations),
    }
    return {
        "result": result,
        "envelopes": envelopes,
        "blocks": blocks,
        "events": ev,
        "nodes": nodes,
        "t0": t0,
        "status": status,  # each node's `status` at the window's end
    }


def warm_up(s: Settings, nodes: list[Proc], clients: list[ControlClient]):
    """Load every embedder, wait for two peers each and a mesh, run the warm-up round, then
    sample idle CPU: (model load s, warm-up round s, {node: idle cpu_delta})."""
    log("warming up the embedders (first embed loads the model)")
    started = time.monotonic()
    parallel([lambda c=c: c.call("search", query="warm up", k=1) for c in clients])
    warmup_s = time.monotonic() - started
    want = min(2, s.nodes - 1)
    deadline = time.monotonic() + 120
    while not all(c.call("status")["peers"] >= want for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("not every node has two peers after 120 s")
        time.sleep(0.5)

    time.sleep(2.0)  # a couple of gossipsub heartbeats to build the mesh
    warm_s = warm_up_round(s, nodes, clients)
    log(f"idle CPU over {s.idle_s} s")
    idle0 = {n.name: proc_cpu(n.pid) for n in nodes}
    time.sleep(s.idle_s)
    idle = {n.name: cpu_delta(idle0[n.name], proc_cpu(n.pid)) for n in nodes}
    return warmup_s, warm_s, idle


def run_schedule(s: Settings, clients: list[ControlClient], texts: dict, t0: float):
    """Every node's adds on its staggered slots, one thread per node, until the last round:
    ({node: [{slip, call, error}]}, {node: [skipped rounds]})."""
    calls: dict[int, list[dict]] = {i: [] for i in range(s.nodes)}
    halt = threading.Event()

    skipped: dict[int, list[int]] = {i: [] for i in range(s.nodes)}

    def schedule(i: int) -> None:
        # One add in flight per node: a slot that passes while the previous add is still
        # running (the node's library is busy merging) is skipped, not caught up later.
        r = 0
        while r < s.rounds:
            when = t0 + s.offset(i, r)
            if halt.wait(max(0.0, when - time.time())):
                return
            items = [{"text": t, "domain": DOMAIN, "quality": 0.7} for t in texts[(i, r)]]
            began = time.time()
            try:
                clients[i].call("add", experiences=items)
                error = None
            except Exception as exc:  # recorded, and the run goes on
                error = repr(exc)
            done = time.time()
            calls[i].append({"slip": began - when, "call": done - began, "error": error})
            r += 1
            while r < s.rounds and t0 + s.offset(i, r) < done:
                skipped[i].append(r)
                r += 1

    threads = [threading.Thread(target=schedule, args=(i,), daemon=True) for i in range(s.nodes)]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.5)
    finally:
        halt.set()
    return calls, skipped


def drain(s: Settings, nodes: list[Proc], t0: float, expected: int) -> bool:
    """Wait until every batch is merged everywhere (True), or until nothing was published or
    merged anywhere for grace_s or drain_cap_s passed (False)."""
    last_change, seen = time.time(), -1
    drain_deadline = time.time() + s.drain_cap_s
    while True:
        ev = fai_events(nodes, t0)
        complete = len(ev["published"]) >= expected and everywhere(ev["publisher"], ev["merged"])
        if complete:
            return True
        progress = len(ev["published"]) + sum(len(m) for m in ev["merged"])
        if progress != seen:
            last_change, seen = time.time(), progress
        if time.time() - last_change > s.grace_s or time.time() > drain_deadline:
            return False  # nothing published or merged anywhere for grace_s: give up
        time.sleep(0.5)


def warm_up_round(s: Settings, nodes: list[Proc], clients: list[ControlClient]) -> float:
    """Every node publishes one batch and merges everyone else's, before the window.

    First uses cost what steady state does not: numba loading its cached BitDelta and LSH
    kernels, the library creating its LanceDB table, torch's first batch of a new shape.
    """
    sentences = [t for d, t in load_pattern_corpus() if d == DOMAIN]
    started = time.time()
    log("warm-up round: one batch per node, merged everywhere before measuring")

    def add(i: int) -> None:
        texts = [
            f"{' '.join(sentences[(i * s.batch_size + j) % len(sentences)].split(' ')[:28])}"
            f" (warm-up {i * s.batch_size + j})"
            for j in range(s.batch_size)
        ]
        items = [{"text": t, "domain": DOMAIN, "quality": 0.7} for t in texts]
        clients[i].call("add", experiences=items)

    parallel([lambda i=i: add(i) for i in range(len(nodes))])
    deadline = time.time() + 600
    while True:
        ev = fai_events(nodes, started)
        if len(ev["published"]) >= len(nodes) and everywhere(ev["publisher"], ev["merged"]):
            return time.time() - started
        if time.time() > deadline:
            raise TimeoutError("the warm-up round was not merged everywhere in 600 s")
        time.sleep(0.5)


def everywhere(publisher: dict[str, int], seen: list[dict]) -> bool:
    """Has every node seen every message the others published?"""
    for j, got in enumerate(seen):
        if any(p != j and m not in got for m, p in publisher.items()):
            return False
    return True


def parallel(fns) -> list:
    results: list = [None] * len(fns)
    errors: list = []

    def run(k: int) -> None:
        try:
            results[k] = fns[k]()
        except Exception as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(fns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def fai_events(nodes: list[Proc], t0: float) -> dict:
    published: dict[str, dict] = {}
    publisher: dict[str, int] = {}
    accepted: list[dict[str, dict]] = []
    merged: list[dict[str, float]] = []
    rounds: list[list[tuple[list[str], float]]] = []
    for i, n in enumerate(nodes):
        acc: dict[str, dict] = {}
        mer: dict[str, float] = {}
        rnd: list[tuple[list[str], float]] = []
        for e in read_events(n.dir / "events.jsonl"):
            if e["t"] < t0:
                continue
            if e["ev"] == "publishing":
                published[e["cid"]] = {"node": i, "t": e["t"], "n": e["n"]}
                publisher[e["cid"]] = i
            elif e["ev"] == "accepted":
                acc.setdefault(e["cid"], {"t": e["t"], "origin": e["origin"]})
            elif e["ev"] == "merged":
                rnd.append((e["cids"], e["t"]))
                for c in e["cids"]:
                    mer.setdefault(c, e["t"])
        accepted.append(acc)
        merged.append(mer)
        rounds.append(rnd)
    return {
        "published": published,
        "publisher": publisher,
        "accepted": accepted,
        "merged": merged,
        "round_times": rounds,
    }


def own_envelopes(nodes: list[Proc]) -> dict[str, bytes]:
    """cid text -> envelope of every batch a node published, from its store (read-only)."""
    out = {}
    for n in nodes:
        path = n.dir / "batches" / "store.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for cid, envelope in conn.execute(
                "SELECT cid, envelope FROM batches WHERE origin = 'local' ORDER BY seq"
            ):
                out[dagcbor.cid_text(bytes(cid))] = bytes(envelope)
        finally:
            conn.close()
    return out


def stored_blocks(nodes: list[Proc]) -> dict[bytes, bytes]:
    """cid -> bytes of every wire-v2 baseline block the nodes' stores hold (read-only): what
    the replay needs to complete the batches published by reference."""
    out = {}
    for n in nodes:
        path = n.dir / "batches" / "store.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for cid, data in conn.execute("SELECT cid, data FROM baseline_blocks"):
                out[bytes(cid)] = bytes(data)
        finally:
            conn.close()
    return out


def fai_figures(s: Settings, nodes, ev, stored, status, t0, t_end, complete) -> dict:
    published, accepted, merged = ev["published"], ev["accepted"], ev["merged"]
    to_acc, to_mer, all_acc, all_mer = [], [], [], []
    origins: dict[str, int] = {}
    lost = []
    not_merged = 0
    for cid, pub in sorted(published.items(), key=lambda kv: kv[1]["t"]):
        others = [j for j in range(s.nodes) if j != pub["node"]]
        acc_t, mer_t = [], []
        for j in others:
            a = accepted[j].get(cid)
            if a is not None:
                acc_t.append(a["t"] - pub["t"])
                origins[a["origin"]] = origins.get(a["origin"], 0) + 1
            m = merged[j].get(cid)
            if m is not None:
                mer_t.append(m - pub["t"])
            else:
                not_merged += 1
        to_acc += acc_t
        to_mer += mer_t
        if len(acc_t) == len(others):
            all_acc.append(max(acc_t))
        if len(mer_t) == len(others):
            all_mer.append(max(mer_t))
        missing = [nodes[j].name for j in others if cid not in stored[j]]
        if missing:
            lost.append({"publisher": nodes[pub["node"]].name, "cid": cid, "missing_at": missing})
    per_node = []
    for i, n in enumerate(nodes):
        received = [c for c in accepted[i] if ev["publisher"].get(c, i) != i]
        per_node.append(
            {
                "node": n.name,
                "published": sum(1 for p in published.values() if p["node"] == i),
                "received_batches": len(received),
                "received_texts": sum(published[c]["n"] for c in received),
                "merge_rounds": len(ev["round_times"][i]),
                "drops": status[i].get("drops"),
                "rejections": status[i].get("rejections"),
                "library_size": status[i].get("library_size"),
            }
        )
    return {
        "window_s": round(t_end - t0, 2),
        "complete": complete,
        "published_batches": len(published),
        "expected_batches": s.nodes * s.rounds,
        "batch_sizes": sorted({p["n"] for p in published.values()}),
        "delivered_pairs": len(to_acc),
        "expected_pairs": len(published) * (s.nodes - 1),
        "delivered_by": origins,
        "not_merged_pairs": not_merged,
        "lost_batches": len(lost),
        "lost": lost[:50],
        "latency_s": {
            "publish_to_accepted": stats(to_acc),
            "publish_to_merged": stats(to_mer),
            "publish_to_accepted_at_all": stats(all_acc),
            "publish_to_merged_at_all": stats(all_mer),
        },
        "per_node": per_node,
    }


# -- re-embedding replay ----------------------------------------------------------------------


class _CpuTimedEmbedder:
    """Thread CPU of every embed call (the merge runs it on the calling thread)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.dimension = inner, inner.model_id, inner.dimension
        self.cpu_s = 0.0
        self.texts = 0

    def embed(self, texts):
        started = time.thread_time()
        try:
            return self.inner.embed(texts)
        finally:
            self.cpu_s += time.thread_time() - started
            self.texts += len(texts)


def _completed(batch, blocks: dict[bytes, bytes]):
    """A wire-v2 batch completed with its baseline block from the nodes' stores (the
    reference block is stored by every node too); a version-1 batch as it is."""
    from fai_core.baseline_block import decode_baseline_block

    if batch.resolved:
        return batch
    cid = batch.baseline_cid
    return batch.with_baseline(decode_baseline_block(blocks[cid], cid))


def replay_receive(s: Settings, fai: dict, node: int, workdir: Path) -> dict:
    """Re-run one receiver's merge rounds through the node's own merge code, on one thread.

    Same batches (decoded from the publishers' envelopes), grouped and ordered as that
    node's `merged` events grouped them, `now` = the event's time; through
    the node's `MergeRounds.merge_in_thread` after DeltaSoup, with a fresh library and
    reputation book. Splits what the node's counters cannot: the embedder's thread CPU
    against the rest of the round, and the CPU LanceDB spends on its own threads.
    """
    from types import SimpleNamespace

    from fai_core.deltasoup import DeltaSoup
    from fai_core.embedding import HashingEmbedder, default_embedder
    from fai_core.library import ExperienceLibrary
    from fai_core.reputation import ReputationBook
    from fai_net.api.metrics import NodeMetrics
    from fai_net.api.outcome_book import OutcomeBook
    from fai_net.node.config import NodeConfig
    from fai_net.node.node import Pending, soup_config
    from fai_net.node.rounds import MergeRounds
    from fai_net.node.state import NodeState

    ev = fai["events"]
    batches = {
        cid: _completed(decode_envelope(env).batch, fai["blocks"])
        for cid, env in fai["envelopes"].items()
    }
    own = {batches[c].sender for c, i in ev["publisher"].items() if i == node and c in batches}
    # The warm-up round's batches (published before the window), merged unmeasured first,
    # as the node did: numba kernels, the LanceDB table, torch's first shapes.
    warm = [
        Pending(b, "gossip")
        for c, b in batches.items()
        if c not in ev["publisher"] and b.sender not in own
    ]
    rounds = []
    for cids, t in ev["round_times"][node]:
        taken = [Pending(batches[c], "gossip") for c in cids if c in batches]
        rounds.append((taken, int(t * 1000)))
    inner = HashingEmbedder(384) if s.embedder == "hashing" else default_embedder()
    inner.embed(["warm up the model"])
    embedder = _CpuTimedEmbedder(inner)
    workdir.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(data_dir=workdir, domains=(DOMAIN,), open_membership=True)
    # The node's own merge step (fai_net.node.rounds.MergeRounds) over just the parts it
    # touches: the aggregator, the library, the outcome book and the metrics.
    res = SimpleNamespace(
        config=config,
        metrics=NodeMetrics(),
        library=ExperienceLibrary.open(workdir / "library", embedder.dimension, embedder),
        outcomes=OutcomeBook(workdir / "outcomes.sqlite"),
        soup=DeltaSoup(
            embedder,
            reputation=ReputationBook(workdir / "reputation.json"),
            config=soup_config(embedder.model_id, config.max_age_ms),
        ),
    )
    # Only `merge_in_thread` runs here: no batch waits for its baseline block (all were
    # completed above), so the round needs no resolver.
    replica = MergeRounds(res, NodeState(config), resolver=None)

    def merge_round(taken, now):
        batches = [p.batch for p in taken]
        result = res.soup.aggregate(batches, now, max_age_ms=config.repair_max_age_ms)
        return replica.merge_in_thread(len(taken), result)

    me = psutil.Process()
    merged = texts = nbatches = deferred_rounds = max_backlog = 0
    thread_cpu = other_cpu = 0.0
    try:
        if warm:
            merge_round(warm, rounds[0][1] if rounds else int(time.time() * 1000))
        embedder.cpu_s, embedder.texts = 0.0, 0
        for taken, now in rounds:
            t = me.cpu_times()
            c = time.thread_time()
            report = merge_round(taken, now)
            thread = time.thread_time() - c
            t1 = me.cpu_times()
            thread_cpu += thread
            other_cpu += max(0.0, (t1.user + t1.system) - (t.user + t.system) - thread)
            merged += report.merged
            backlog = res.soup.backlog_rows()
            deferred_rounds += bool(backlog)
            max_backlog = max(max_backlog, backlog)
            texts += sum(len(p.batch) for p in taken)
            nbatches += len(taken)
    finally:
        res.library.close()
        res.outcomes.close()
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    return {
        "node": fai["nodes"][node].name,
        "warm_up_batches": len(warm),
        "rounds": len(rounds),
        "batches": nbatches,
        "texts": texts,
        "experiences_merged": merged,
        # Rows DeltaSoup deferred past a round (per-sender cap): their batch's `merged`
        # event fired before they reached the library.
        "rounds_leaving_a_backlog": deferred_rounds,
        "max_backlog_rows": max_backlog,
        "round_thread_cpu_s": round(thread_cpu, 3),
        "embed_cpu_s": round(embedder.cpu_s, 3),
        "embedded_texts": embedder.texts,
        "lancedb_and_other_threads_cpu_s": round(other_cpu, 3),
        "round_ms_per_batch": ms(div(thread_cpu, nbatches)),
        "embed_ms_per_batch": ms(div(embedder.cpu_s, nbatches)),
        "round_minus_embed_ms_per_batch": ms(div(thread_cpu - embedder.cpu_s, nbatches)),
        "other_threads_ms_per_batch": ms(div(other_cpu, nbatches)),
        "embed_cpu_per_text_s": div(embedder.cpu_s, embedder.texts),
        "torch_threads": threads,
    }


# -- the bare gossipsub run -------------------------------------------------------------------


def run_bare(s: Settings, root: Path, procs: list[Proc], fai: dict) -> dict:
    ev = fai["events"]
    by_node: dict[int, list[str]] = {i: [] for i in range(s.nodes)}
    for cid, pub in sorted(ev["published"].items(), key=lambda kv: kv[1]["t"]):
        by_node[pub["node"]].append(cid)
    peers, plans = [], []
    for i in range(s.nodes):
        d = root / f"b{i}"
        d.mkdir(parents=True, exist_ok=True)
        # The FAI node's own publish times (relative to its run's t0): same load profile.
        plan = [
            {"at": ev["published"][cid]["t"] - fai["t0"], "hex": fai["envelopes"][cid].hex()}
            for cid in by_node[i]
            if cid in fai["envelopes"]
        ]
        plans.append(plan)
        (d / "plan.json").write_text(json.dumps(plan))
        cmd = [sys.executable, str(BARE_PEER), str(d), "--topic", topic_for(DOMAIN, 2)]
        peers.append(Proc(f"b{i}", d, cmd, "ready.json"))
    procs.extend(peers)

    def seeds(addrs: list[str]) -> list[str]:
        return [a for addr in addrs for a in ("--seed", addr)]

    log(f"starting {s.nodes} bare gossipsub peers")
    start_topology(peers, seeds, timeout=60)
    want = min(2, s.nodes - 1)
    deadline = time.monotonic() + 60
    while True:
        st = []
        for p in peers:
            try:
                st.append(json.loads((p.dir / "status.json").read_text()))
            except (OSError, ValueError):
                st.append({"peers": 0, "mesh": 0})
        if all(x["peers"] >= want and x["mesh"] >= 1 for x in st):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"bare peers did not mesh: {st}")
        time.sleep(0.25)
    pids = {p.pid for p in peers}
    ports = {p.listen_port for p in peers}
    for p in peers:
        p.popen.send_signal(signal.SIGUSR2)  # stop writing status.json: idle means idle
    time.sleep(2.0)  # a couple of heartbeats after the mesh formed, as for the FAI fleet
    idle0 = {p.name: proc_cpu(p.pid)["cpu"] for p in peers}
    time.sleep(s.idle_s)
    idle = {p.name: (proc_cpu(p.pid)["cpu"] - idle0[p.name]) / s.idle_s for p in peers}
    cpu0 = {p.name: proc_cpu(p.pid) for p in peers}
    tcp0 = tcp_counters(pids, ports)
    t0 = time.time()
    for p in peers:
        (p.dir / "go.json").write_text(json.dumps({"t0": t0}))
    for p in peers:
        p.popen.send_signal(signal.SIGUSR1)
    ids = {hashlib.sha256(env).hexdigest(): cid for cid, env in fai["envelopes"].items()}
    expected = sum(len(v) for v in by_node.values())
    last = t0 + max((step["at"] for plan in plans for step in plan), default=0.0)
    deadline = last + s.grace_s
    log(f"measuring bare gossipsub: {expected} messages")
    while True:
        bev = bare_events(peers, t0)
        complete = len(bev["published"]) >= expected and everywhere(
            bev["publisher"], bev["delivered"]
        )
        if (complete and time.time() > last) or time.time() > deadline:
            break
        time.sleep(0.5)
    t_end = time.time()
    cpu1 = {p.name: proc_cpu(p.pid) for p in peers}
    tcp1 = tcp_counters(pids, ports)
    log(f"bare window {t_end - t0:.1f} s ({'complete' if complete else 'incomplete'})")
    stop_all(peers)
    bev = bare_events(peers, t0)
    to_del, all_del, lost = [], [], []
    for mid, pub in sorted(bev["published"].items(), key=lambda kv: kv[1]["t"]):
        others = [j for j in range(s.nodes) if j != pub["node"]]
        times = [bev["delivered"][j][mid] - pub["t"] for j in others if mid in bev["delivered"][j]]
        to_del += times
        if len(times) == len(others):
            all_del.append(max(times))
        else:
            missing = [peers[j].name for j in others if mid not in bev["delivered"][j]]
            lost.append(
                {"publisher": peers[pub["node"]].name, "cid": ids.get(mid), "missing_at": missing}
            )
    per_node = []
    for i, p in enumerate(peers):
        d = cpu_delta(cpu0[p.name], cpu1[p.name])
        delivered = [m for m in bev["delivered"][i] if bev["publisher"].get(m, i) != i]
        per_node.append(
            {
                "node": p.name,
                "published": sum(1 for x in bev["published"].values() if x["node"] == i),
                "delivered_batches": len(delivered),
                "cpu_s": round(d["cpu_s"], 3),
                "idle_cpu_s_per_s": round(idle[p.name], 4),
                "threads_cpu_s": {k: round(v, 3) for k, v in d["threads_cpu_s"].items()},
                "tcp": tcp_delta(tcp0, tcp1, p.pid),
            }
        )
    return {
        "window_s": round(t_end - t0, 2),
        "complete": complete,
        "published_batches": len(bev["published"]),
        "expected_batches": expected,
        "delivered_pairs": len(to_del),
        "expected_pairs": len(bev["published"]) * (s.nodes - 1),
        "lost_batches": len(lost),
        "lost": lost[:50],
        "latency_s": {
            "publish_to_delivered": stats(to_del),
            "publish_to_delivered_at_all": stats(all_del),
        },
        "idle_cpu_per_node_s_per_s": stats(list(idle.values())),
        "per_node": per_node,
    }


def bare_events(peers: list[Proc], t0: float) -> dict:
    published: dict[str, dict] = {}
    publisher: dict[str, int] = {}
    delivered: list[dict[str, float]] = []
    for i, p in enumerate(peers):
        got: dict[str, float] = {}
        for e in read_events(p.dir / "events.jsonl"):
            if e["t"] < t0:
                continue
            if e["ev"] == "published":
                published[e["id"]] = {"node": i, "t": e["t"]}
                publisher[e["id"]] = i
            elif e["ev"] == "delivered":
                got.setdefault(e["id"], e["t"])
        delivered.append(got)
    return {"published": published, "publisher": publisher, "delivered": delivered}


# -- summary ----------------------------------------------------------------------------------


def replay_problem(replay: dict | None) -> str | None:
    """Why the replay's figures cannot be used, or None when they can. The figures that
    need the replay then read None, with this reason in the report's `missing`."""
    if replay is None:
        return "no re-embedding replay was run (--no-replay)"
    if "error" in replay:
        return f"the re-embedding replay failed: {replay['error']}"
    if not replay.get("batches"):
        return "the re-embedding replay merged no batch"
    if replay.get("embed_cpu_per_text_s") is None:
        return "the re-embedding replay embedded no text"
    return None


def summarise(s: Settings, fai: dict, bare: dict | None, replay: dict | None) -> dict:
    """The derived figures, added to `fai` and `bare`, and the targets.

    Parts may be missing (no replay, no bare baseline, nothing received or published): a
    figure that needs a missing part is None and `missing` says why, while every figure
    that was measured is still computed, so a 6-minute run never ends in a traceback.
    """
    nodes = fai["per_node"]
    missing: dict[str, str] = {}
    no_replay = replay_problem(replay)
    if no_replay:
        missing["re-embedding split (replay)"] = no_replay
    if not sum(n["received_batches"] for n in nodes):
        missing["per received batch figures"] = "no node received a batch in the window"
    if not fai["published_batches"]:
        missing["bytes per node per round"] = "no batch was published in the window"
    if bare is None:
        missing["bare gossipsub comparison"] = "no bare gossipsub run (--no-bare)"
    cpu, split = fai_cpu(fai, None if no_replay else replay)
    fai["cpu"] = cpu
    # A round = one interval in which every node publishes once; nodes that skipped slots
    # published fewer, so divide by the rounds actually published (batches / nodes).
    rounds = fai["published_batches"] / s.nodes

    def per_round(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(sum(vals) / (len(vals) * rounds), 1) if vals and rounds else None

    def tcp(per_node: list[dict], key: str) -> float | None:
        return per_round([n["tcp"][key] if n["tcp"] else None for n in per_node])

    fai["bytes_per_node_per_round"] = {
        "fai_bytes_sent_counter": per_round([n["metrics"]["fai_bytes_sent_total"] for n in nodes]),
        "fai_bytes_received_counter": per_round(
            [n["metrics"]["fai_bytes_received_total"] for n in nodes]
        ),
        "tcp_sent": tcp(nodes, "sent"),
        "tcp_received": tcp(nodes, "received"),
    }
    fai["experiences_merged"] = sum(n["metrics"]["fai_experiences_merged_total"] for n in nodes)
    fai["experiences_received"] = cpu["received_texts"]
    # Experiences DeltaSoup dropped and batches the gate refused, in the window, fleet-wide
    # (a refusal is counted per copy that reached a validator, not per batch).
    fai["experiences_dropped"] = fleet_sum(nodes, "dropped")
    fai["gate_rejections"] = fleet_sum(nodes, "rejected")
    out = {"fai": fai, "replay": replay, "bare": bare}
    targets: dict = {"fai_lost_batches": fai["lost_batches"], "zero_lost": fai["lost_batches"] == 0}
    if bare is not None:
        bare["cpu"] = bare_cpu(bare)
        per = bare["per_node"]
        bare["bytes_per_node_per_round"] = {
            "tcp_sent": tcp(per, "sent"),
            "tcp_received": tcp(per, "received"),
        }
        targets.update(bare_targets(fai, bare, split))
    out["targets"] = targets
    out["missing"] = missing
    return out


def fleet_sum(nodes: list[dict], key: str) -> dict[str, float]:
    """A labelled counter (`dropped`, `rejected`) summed over the fleet, zeros left out."""
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n["metrics"][key].items():
            out[k] = out.get(k, 0.0) + v
    return {k: v for k, v in sorted(out.items()) if v}


def fai_cpu(fai: dict, replay: dict | None) -> tuple[dict, dict]:
    """(the FAI fleet's CPU figures, the per-batch receive split the targets compare).

    `replay` is None when its figures cannot be used (`replay_problem`): the figures that
    need it are then None, the others are computed as usual.
    """
    nodes = fai["per_node"]
    recv = sum(n["received_batches"] for n in nodes)
    recv_texts = sum(n["received_texts"] for n in nodes)

    def total(key: str) -> float:
        return sum(n["metrics"]["stage"].get(key, 0.0) for n in nodes)

    validate, rnd, embed = total("validate"), total("round"), total("embed")
    proc = sum(n["cpu_s"] for n in nodes)
    proc_net = proc - sum(n["idle_cpu_s_per_s"] for n in nodes) * fai["window_s"]
    threads: dict[str, float] = {}
    for n in nodes:
        for k, v in n["threads_cpu_s"].items():
            threads[k] = threads.get(k, 0.0) + v
    lance, loop = threads.get("lancedb-tokio-w", 0.0), threads.get("main (event loop)", 0.0)
    # In situ: each node's re-embedding CPU estimated as the replay's embed CPU per text x
    # the texts it received; direct: validate (in situ) + the replay's round - embed.
    reembed = direct = lance_merge = None
    if replay is not None:
        reembed = replay["embed_cpu_per_text_s"] * recv_texts
        lance_merge = replay["other_threads_ms_per_batch"] / 1000
        if recv:
            direct = validate / recv + replay["round_minus_embed_ms_per_batch"] / 1000
    cpu = {
        "received_batches": recv,
        "received_texts": recv_texts,
        "validate_ms_per_batch": ms(div(validate, recv)),
        "round_ms_per_batch": ms(div(rnd, recv)),
        "embed_wall_ms_per_batch (node counter, incl. own adds)": ms(div(embed, recv)),
        "reembed_cpu_ms_per_batch (replay cpu/text x texts)": (
            ms(div(reembed, recv)) if reembed is not None else None
        ),
        "receive_ms_per_batch_with_reembed": ms(div(validate + rnd, recv)),
        "receive_ms_per_batch_without_reembed": ms(direct),
        "receive_ms_per_batch_without_reembed_plus_lancedb_threads": (
            ms(direct + lance_merge) if direct is not None else None
        ),
        "receive_ms_per_batch_without_reembed_by_subtraction": (
            ms(div(validate + rnd - reembed, recv)) if reembed is not None else None
        ),
        "receive_ms_per_batch_minus_embed_counter": ms(div(validate + rnd - embed, recv)),
        "reembed_share_of_receive": div(reembed, validate + rnd) if reembed is not None else None,
        "reembed_share_of_process_cpu": div(reembed, proc) if reembed is not None else None,
        "process_cpu_ms_per_received_batch": ms(div(proc, recv)),
        "process_cpu_ms_per_received_batch_net_of_idle": ms(div(proc_net, recv)),
        "event_loop_thread_cpu_ms_per_received_batch": ms(div(loop, recv)),
        "lancedb_thread_cpu_ms_per_received_batch (all causes)": ms(div(lance, recv)),
        "process_cpu_s_total": round(proc, 2),
        "fleet_cpu_utilisation_of_cores": div(proc, fai["window_s"] * (os.cpu_count() or 1)),
        "threads_cpu_s_total": {
            k: round(v, 2) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
        },
    }
    split = {"validate_s": div(validate, recv), "without": direct, "lance_merge": lance_merge}
    return cpu, split


def bare_cpu(bare: dict) -> dict:
    """The bare gossipsub fleet's CPU per delivered message: libp2p's own delivery cost."""
    per = bare["per_node"]
    delivered = sum(n["delivered_batches"] for n in per)
    cpu = sum(n["cpu_s"] for n in per)
    idle = sum(n["idle_cpu_s_per_s"] for n in per) * bare["window_s"]
    return {
        "delivered_batches": delivered,
        "process_cpu_ms_per_delivered_batch": ms(div(cpu, delivered)),
        "process_cpu_ms_per_delivered_batch_net_of_idle": ms(div(cpu - idle, delivered)),
        "process_cpu_s_total": round(cpu, 2),
    }


def bare_targets(fai: dict, bare: dict, split: dict) -> dict:
    """FAI against bare gossipsub: latency ratios and the receive-cost target."""
    per = bare["per_node"]
    libp2p = div(sum(n["cpu_s"] for n in per), sum(n["delivered_batches"] for n in per))
    b95 = bare["latency_s"]["publish_to_delivered"]["p95"]
    m95 = fai["latency_s"]["publish_to_merged"]["p95"]
    a95 = fai["latency_s"]["publish_to_accepted"]["p95"]
    without, lance_merge = split["without"], split["lance_merge"]
    return {
        "p95_merged_over_bare": div(m95, b95) if m95 is not None else None,
        "p95_accepted_over_bare": div(a95, b95) if a95 is not None else None,
        "latency_target_met (merged p95 <= 2x bare)": (
            None if m95 is None or not b95 else m95 <= 2 * b95
        ),
        "latency_target_met (accepted p95 <= 2x bare)": (
            None if a95 is None or not b95 else a95 <= 2 * b95
        ),
        "receive_without_reembed_over_libp2p_delivery": (
            div(without, libp2p) if without is not None else None
        ),
        "receive_without_reembed_plus_lancedb_threads_over_libp2p_delivery": (
            div(without + lance_merge, libp2p) if without is not None else None
        ),
        "validate_only_over_libp2p_delivery": div(split["validate_s"] or 0.0, libp2p),
        "cost_target_met (<= 0.10)": (
            None if without is None or not libp2p else without <= 0.10 * libp2p
        ),
        "bare_lost_batches": bare["lost_batches"],
    }


def print_table(report: dict) -> None:
    st, fai, bare = report["settings"], report["fai"], report["bare"]
    m = report["machine"]
    print(
        f"fleet: {st['nodes']} nodes x {st['rounds']} rounds x {st['batch_size']} experiences, "
        f"every {st['interval_s']} s, embedder {st['embedder']}; {m['cores']} cores, load "
        f"{m['loadavg_before']} -> {m['loadavg_after']}; threads {THREAD_ENV}"
    )

    def lat(name: str, x: dict) -> None:
        print(f"  {name:<34} n={x['n']:<6} p50={x['p50']} s  p95={x['p95']} s  max={x['max']} s")

    print("latency (per batch x receiver; 'at all' = slowest receiver per batch)")
    for k, v in fai["latency_s"].items():
        lat("fai " + k, v)
    if bare:
        for k, v in bare["latency_s"].items():
            lat("bare " + k, v)
    print(
        f"batches: fai published {fai['published_batches']}/{fai['expected_batches']}, "
        f"pairs delivered {fai['delivered_pairs']}/{fai['expected_pairs']} "
        f"{fai['delivered_by']}, not merged {fai['not_merged_pairs']}, "
        f"lost {fai['lost_batches']}; dropped experiences {fai['experiences_dropped']}, "
        f"gate rejections {fai['gate_rejections']}"
        + (
            f"; bare published {bare['published_batches']}, pairs "
            f"{bare['delivered_pairs']}/{bare['expected_pairs']}, lost {bare['lost_batches']}"
            if bare
            else ""
        )
    )
    sch = fai["schedule"]
    print(
        f"schedule: {sch['add_calls']} adds, {sch['skipped_slots']} slots skipped (node busy), "
        f"add call p50/p95 {sch['add_call_s']['p50']}/{sch['add_call_s']['p95']} s; FAI "
        f"window {fai['window_s']} s, bare window {bare['window_s'] if bare else None} s"
    )
    print("cpu (fleet totals / received batches)")
    for k, v in fai["cpu"].items():
        if k != "threads_cpu_s_total":
            print(f"  fai {k:<60} {v}")
    print(f"  fai threads cpu s: {fai['cpu']['threads_cpu_s_total']}")
    if report["replay"]:
        print(f"  replay: {report['replay']}")
    if bare:
        for k, v in bare["cpu"].items():
            print(f"  bare {k:<59} {v}")
    print("bytes per node per round")
    for k, v in fai["bytes_per_node_per_round"].items():
        print(f"  fai {k:<40} {v}")
    if bare:
        for k, v in bare["bytes_per_node_per_round"].items():
            print(f"  bare {k:<39} {v}")
    print("targets")
    for k, v in report["targets"].items():
        print(f"  {k:<55} {v}")
    if report.get("missing"):
        print("not measured (these figures read None above)")
        for k, v in report["missing"].items():
            print(f"  {k:<55} {v}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--hosts" in argv:
        return hosts_main([a for a in argv if a != "--hosts"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="loopback vs network namespaces vs a relay, one run (bench/fleet_hosts.py; root)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="4 nodes, 30 s")
    parser.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--duration", type=float, help="seconds of publishing")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    parser.add_argument("--grace", type=float, default=60.0, help="wait after the last publish")
    parser.add_argument("--no-bare", action="store_true", help="skip the gossipsub baseline")
    parser.add_argument("--no-replay", action="store_true", help="skip the re-embed replay")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    args = parser.parse_args(argv)
    s = Settings(
        nodes=args.nodes or (4 if args.quick else 10),
        duration_s=args.duration or (30.0 if args.quick else 120.0),
        interval_s=args.interval,
        embedder=args.embedder,
        grace_s=args.grace,
        replay=not args.no_replay,
    )
    if s.nodes < 2:
        parser.error("--nodes must be at least 2")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts the bench in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    root = Path(tempfile.mkdtemp(prefix="faib-", dir="/tmp"))
    procs: list[Proc] = []
    ok = False
    try:
        report = measure(s, args.no_bare, root, procs)
        ok = "summary_error" not in report
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_all(procs)
        if args.keep or not ok:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return emit(report, args.json)


def hosts_main(argv: list[str]) -> int:
    """`--hosts`: bench/fleet_hosts.py, with this module as the `fleet` it imports (run as a
    script this module is `__main__`; importing it again would make a second copy)."""
    sys.modules.setdefault("fleet", sys.modules[__name__])
    import fleet_hosts

    return fleet_hosts.main(argv)


def measure(s: Settings, no_bare: bool, root: Path, procs: list[Proc]) -> dict:
    """Run the FAI fleet, the replay and the bare baseline, and summarise them.

    Minutes of measurement must not be lost to a later step: a failed replay or bare run
    is recorded and the rest reported without it, and if `summarise` itself fails the
    report carries the raw measurements and `summary_error` instead of the summary.
    """
    load0 = os.getloadavg()
    started = time.time()
    fai = run_fai(s, root, procs)
    replay = None
    if s.replay:
        log("replaying one receiver's merge rounds on one thread")
        try:
            replay = replay_receive(s, fai, s.nodes - 1, root / "replay")
        except Exception as exc:  # the node's internals moved: report, don't fail
            replay = {"error": repr(exc)}
    bare, bare_error = None, None
    if not no_bare:
        try:
            bare = run_bare(s, root, procs, fai)
        except Exception as exc:  # report FAI's figures without the baseline
            log(f"the bare gossipsub run failed ({exc!r}); reporting FAI without it")
            bare_error = repr(exc)
    report = {
        "settings": {**asdict(s), "rounds": s.rounds, "thread_env": THREAD_ENV},
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load0],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0],
        },
        "total_wall_s": None,
    }
    try:
        report.update(summarise(s, fai["result"], bare, replay))
    except Exception as exc:
        log(f"summarise failed ({exc!r}); reporting the raw measurements")
        traceback.print_exc()
        report.update(fai=fai["result"], replay=replay, bare=bare, summary_error=repr(exc))
    if bare_error is not None:
        report.setdefault("missing", {})["bare gossipsub comparison"] = (
            f"the bare gossipsub run failed: {bare_error}"
        )
    report["total_wall_s"] = round(time.time() - started, 1)
    return report


def emit(report: dict, as_json: bool) -> int:
    """Print the report: the table, or JSON when asked or when the table cannot be made
    (a failed summary), so every figure measured reaches the output. 1 if a step failed."""
    failed = "summary_error" in report
    if not as_json and not failed:
        try:
            print_table(report)
            return 0
        except Exception as exc:
            log(f"the table failed ({exc!r}); the whole report as JSON follows")
            failed = True
    print(json.dumps(report, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
