"""`bench/fleet.py --hosts`: the fleet benchmark on loopback, across network namespaces and
through a relay, in one run on one machine, so that the three compare.

    .venv/bin/python bench/fleet.py --hosts [--json] [--quick] [--embedder hashing|minilm]
        [--per-site N] [--duration S] [--interval S] [--grace S] [--keep]

Needs root (Linux network namespaces, fai_net/devnet/netns.py): without it the run stops
at once with one line saying why. Defaults: the hashing embedder, 3 nodes per site (8 in
all), 40 s of publishing; `--quick` = 1 per site (4 nodes), 20 s.

Why. bench/fleet.py measures a fleet on 127.0.0.1. Issue 20 takes the nodes beyond one
machine: onto their own addresses behind a router, and onto hosts no peer can dial that
are reached through a relay. This asks what those two steps cost in delivery latency,
measured the way bench/fleet.py measures it, beside a loopback run of the same fleet.

What runs, one after the other, each with bench/fleet.py's node settings, warm-up round,
idle window, staggered schedule and drain (`fleet.measure_fai`):

1. loopback: every node on 127.0.0.1.
2. namespaces: every node in its own namespace of `Lab.standard(per_site)`: a1..aN on site
   1 (10.91.1.0/24), b1..bN on site 2 (10.91.2.0/24), joined through a router namespace
   (veth pairs and bridges, no delay added: what is measured is the extra kernel path,
   not a wide-area link); `relay` on site 1 with a second leg on site 3, running
   `--relay-server`; `hidden` alone on site 3, which no one can dial: it runs `--relay
   <relay's site-3 address>` and announces `<relay's site-1 address>/p2p-circuit`.

The fleet is the same in both: nodes a1, b1, a2, b2, ..., relay, hidden (this order is each
one's slot in the schedule), every one of them publishing, and the same seed graph, started
in waves so that a node is listening before anyone dials it (py-libp2p does not dial a peer
again for 60 s after a failed dial): relay; hidden (seeds relay); a1 (seeds relay and
hidden); b1 (seeds a1, relay and hidden); the rest (seed a1 and b1). In the namespaces a1
and b1 dial hidden by its circuit address, `<relay site-1>/p2p-circuit/p2p/<hidden>`, after
hidden holds its reservation; on loopback they dial it directly. So hidden's connections
are: to the relay directly, to a1 and b1 through the relay.

Figures (each mode):

- publish->accepted and publish->merged, p50/p95 over (batch, receiver) pairs, exactly
  bench/fleet.py's (the receiver's event time minus the publisher's `publishing` event
  time, one clock), in four groups: `all` (every pair: bench/fleet.py's figure), `direct`
  (neither end is hidden), `from_hidden` (batches hidden published, as seen by each other
  node) and `to_hidden` (batches the others published, as seen by hidden). In the
  namespaces whatever reaches or leaves hidden crosses the relay host, over a circuit or
  forwarded by the relay node's own gossip (its mesh peer): the event log does not say
  which. On loopback `hidden` is an ordinary node in the same slot with the same seeds:
  its groups are the control for the relayed ones (a leaf's position in the graph, with no
  relay). `*_at_all` = per batch, its slowest receiver in the group (batches that reached
  every one of them). publish->merged includes the wait for the receiver's next merge
  round (`--round-interval` 0.5 s), which dwarfs a network hop: the network's share shows
  in publish->accepted.
- ratios: namespaces over loopback (direct over direct, all over all), and relayed over
  direct in the namespaces (from_hidden / direct, to_hidden / direct) beside the same on
  loopback. The machine is shared: absolute figures move between runs, ratios less.
- bytes per node per round and lost batches, as bench/fleet.py reports them (`summarise`;
  TCP counters read with `ss` inside each namespace), plus the relay's and hidden's own
  TCP bytes per round (a relay carries its circuits' bytes on top of its own gossip), and
  the lost batches that involve hidden. A circuit's bytes cross two TCP connections
  (hidden-relay, relay-a1/b1) and are counted on both: that is what the wire carries.
- at the window's end, hidden's and the relay's `status`: peers, reservations held,
  relayed connections, circuits the relay opened (proof the circuits carried the traffic).

The modes run in this order (loopback first), each in its own window: the load average
before and after each is reported, as other work on the machine moves the figures.

Not here: CPU per batch, the re-embedding replay and the bare gossipsub baseline (bench/
fleet.py without --hosts). bench/fleet.py's docstring warns that long hashing runs lose
batches once reputations fall (after ~12 batches per sender): the defaults stay at 9 per
sender (8 rounds and the warm-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import fleet  # bench/fleet.py (its `hosts_main` registers itself under this name)
import psutil

from fai_net.api.control import ControlClient
from fai_net.devnet.launch import NODE_READY, node_command
from fai_net.devnet.netns import Host, Lab, lab_unavailable
from fai_net.node.identity import load_or_create

PORT = 4001
RELAY, HIDDEN = "relay", "hidden"
ENTRY = "fai_net.cli.entry"
GROUPS = ("all", "direct", "from_hidden", "to_hidden")
METRICS = ("publish_to_accepted", "publish_to_merged")
#: Fetch a URL inside a namespace (the node serves its metrics on the namespace's 127.0.0.1).
_FETCH = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=30).read().decode())"  # noqa: E501


def log(msg: str) -> None:
    print(f"[fleet --hosts {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the fleet's shape -------------------------------------------------------------------------


def node_names(per_site: int) -> list[str]:
    """a1, b1, a2, b2, ..., relay, hidden: the fleet, in schedule-slot order."""
    names = [f"{site}{i}" for i in range(1, per_site + 1) for site in ("a", "b")]
    return [*names, RELAY, HIDDEN]


def start_waves(names: list[str]) -> list[list[tuple[str, list[str]]]]:
    """[[(node, the nodes it seeds)]] per wave; a wave starts once the previous one is ready,
    so every seed listens before it is dialled (module docstring)."""
    rest = [n for n in names if n not in ("a1", "b1", RELAY, HIDDEN)]
    waves = [
        [(RELAY, [])],
        [(HIDDEN, [RELAY])],
        [("a1", [RELAY, HIDDEN])],
        [("b1", ["a1", RELAY, HIDDEN])],
        [(n, ["a1", "b1"]) for n in rest],
    ]
    return [w for w in waves if w]


# -- figures -----------------------------------------------------------------------------------


def pair_latencies(ev: dict, publishers: set[int], receivers: set[int]) -> dict:
    """bench/fleet.py's latency figures over the (batch, receiver) pairs whose publisher is in
    `publishers` and receiver in `receivers` (never the publisher itself). `ev` is
    `fleet.fai_events`' output (node indices)."""
    acc, mer, acc_all, mer_all = [], [], [], []
    origins: dict[str, int] = {}
    expected = 0
    for cid, pub in sorted(ev["published"].items(), key=lambda kv: kv[1]["t"]):
        if pub["node"] not in publishers:
            continue
        got = [j for j in sorted(receivers) if j != pub["node"]]
        expected += len(got)
        a_t, m_t = [], []
        for j in got:
            a = ev["accepted"][j].get(cid)
            if a is not None:
                a_t.append(a["t"] - pub["t"])
                origins[a["origin"]] = origins.get(a["origin"], 0) + 1
            m = ev["merged"][j].get(cid)
            if m is not None:
                m_t.append(m - pub["t"])
        acc += a_t
        mer += m_t
        if got and len(a_t) == len(got):
            acc_all.append(max(a_t))
        if got and len(m_t) == len(got):
            mer_all.append(max(m_t))
    return {
        "pairs_expected": expected,
        "pairs_accepted": len(acc),
        "pairs_merged": len(mer),
        "delivered_by": origins,
        "publish_to_accepted": fleet.stats(acc),
        "publish_to_merged": fleet.stats(mer),
        "publish_to_accepted_at_all": fleet.stats(acc_all),
        "publish_to_merged_at_all": fleet.stats(mer_all),
    }


def latency_groups(ev: dict, n_nodes: int, hidden: int) -> dict:
    """`pair_latencies` for the four groups (module docstring)."""
    everyone = set(range(n_nodes))
    others = everyone - {hidden}
    return {
        "all": pair_latencies(ev, everyone, everyone),
        "direct": pair_latencies(ev, others, others),
        "from_hidden": pair_latencies(ev, {hidden}, others),
        "to_hidden": pair_latencies(ev, others, {hidden}),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def ratios(modes: dict) -> dict:
    """The comparisons the run is for, p50 and p95 of both latencies; None where a side is
    missing (a mode that failed, a group with no pair)."""
    lat = {m: modes[m].get("latency_s") for m in ("loopback", "namespaces")}
    pairs = {
        "namespaces_over_loopback (direct pairs)": (
            ("namespaces", "direct"),
            ("loopback", "direct"),
        ),
        "namespaces_over_loopback (all pairs)": (("namespaces", "all"), ("loopback", "all")),
        "relayed_over_direct: from_hidden (namespaces)": (
            ("namespaces", "from_hidden"),
            ("namespaces", "direct"),
        ),
        "relayed_over_direct: to_hidden (namespaces)": (
            ("namespaces", "to_hidden"),
            ("namespaces", "direct"),
        ),
        "same slot, no relay: from_hidden over direct (loopback)": (
            ("loopback", "from_hidden"),
            ("loopback", "direct"),
        ),
        "same slot, no relay: to_hidden over direct (loopback)": (
            ("loopback", "to_hidden"),
            ("loopback", "direct"),
        ),
    }

    def value(mode: str, group: str, metric: str, q: str) -> float | None:
        return (lat[mode] or {}).get(group, {}).get(metric, {}).get(q)

    out = {}
    for name, ((m1, g1), (m2, g2)) in pairs.items():
        out[name] = {
            f"{metric.removeprefix('publish_to_')}_{q}": ratio(
                value(m1, g1, metric, q), value(m2, g2, metric, q)
            )
            for metric in METRICS
            for q in ("p50", "p95")
        }
    return out


def mode_figures(s: fleet.Settings, fai: dict, names: list[str]) -> dict:
    """One mode's report: latency groups, and bench/fleet.py's batch and byte figures."""
    hidden, relay = names.index(HIDDEN), names.index(RELAY)
    groups = latency_groups(fai["events"], len(names), hidden)
    summary = fleet.summarise(s, fai["result"], None, None)["fai"]
    rounds = summary["published_batches"] / s.nodes

    def own_bytes(i: int) -> dict | None:
        tcp = summary["per_node"][i]["tcp"]
        if tcp is None or not rounds:
            return None
        return {k: round(v / rounds, 1) for k, v in tcp.items()}

    lost = summary["lost"]
    return {
        "window_s": summary["window_s"],
        "complete": summary["complete"],
        "published_batches": summary["published_batches"],
        "expected_batches": summary["expected_batches"],
        "delivered_pairs": summary["delivered_pairs"],
        "expected_pairs": summary["expected_pairs"],
        "delivered_by": summary["delivered_by"],
        "not_merged_pairs": summary["not_merged_pairs"],
        "lost_batches": summary["lost_batches"],
        "lost_batches_involving_hidden": sum(
            1 for x in lost if x["publisher"] == HIDDEN or HIDDEN in x["missing_at"]
        ),
        "lost": lost,
        "latency_s": groups,
        "bytes_per_node_per_round": summary["bytes_per_node_per_round"],
        "tcp_bytes_per_round": {"relay": own_bytes(relay), "hidden": own_bytes(hidden)},
        "experiences_dropped": summary["experiences_dropped"],
        "gate_rejections": summary["gate_rejections"],
        "schedule": {
            k: summary["schedule"][k] for k in ("add_calls", "skipped_slots", "add_errors")
        },
        "warmup_s": summary["warmup_s"],
        "at_window_end": {
            "hidden": relay_status(fai["status"][hidden]),
            "relay": relay_status(fai["status"][relay]),
        },
    }


def relay_status(status: dict) -> dict:
    """What a node's `status` says about its connections and relaying: whether hidden's
    peers were reached over circuits (`relayed_connections`), what the relay served."""
    return {"peers": status.get("peers"), "relay": status.get("relay")}


# -- placing the nodes -------------------------------------------------------------------------


@dataclass
class HostProc(fleet.Proc):
    """A node process inside a lab host's namespace (`ip netns exec` execs, so the pid is the
    node's own, for CPU sampling and `ss`)."""

    host: Host | None = None

    def scrape(self) -> dict:
        url = f"http://127.0.0.1:{self.info['metrics_port']}/metrics"
        done = subprocess.run(
            self.host.argv(sys.executable, "-c", _FETCH, url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"metrics of {self.name}: {done.stderr.strip()[-500:]}")
        return fleet.parse_metrics(done.stdout)


def netns_tcp(nodes: list[HostProc]) -> dict | None:
    """`fleet.tcp_counters` of every node, each read inside its own namespace."""
    counters: dict = {}
    for n in nodes:
        got = fleet.tcp_counters({n.pid}, {PORT}, tuple(n.host.argv()))
        if got is None:
            return None
        counters.update(got)
    return counters


def loopback_fleet(s: fleet.Settings, root: Path, names: list[str]) -> tuple[dict, Callable]:
    """The nodes on 127.0.0.1, and how one dials another (its node.json address)."""
    procs = {}
    for name in names:
        d = root / name
        procs[name] = fleet.Proc(
            name, d, node_command(fleet.node_args(s, d), module=ENTRY), NODE_READY
        )

    def seed(dialer: str, target: str) -> list[str]:
        return [procs[target].addr]

    return procs, seed


def netns_fleet(s: fleet.Settings, root: Path, names: list[str], lab: Lab) -> tuple:
    """The nodes in the lab's hosts, listening on port PORT of each of their addresses, with
    their keys made first (seed addresses carry peer ids); and how one dials another."""
    ids = {name: str(load_or_create(root / name).peer_id) for name in names}
    relay = lab.hosts[RELAY]
    relay_site1 = f"/ip4/{relay.ips[0]}/tcp/{PORT}/p2p/{ids[RELAY]}"
    relay_site3 = f"/ip4/{relay.ips[1]}/tcp/{PORT}/p2p/{ids[RELAY]}"
    procs = {}
    for name in names:
        d, host = root / name, lab.hosts[name]
        args = fleet.node_args(s, d)
        args += [a for ip in host.ips for a in ("--listen", f"/ip4/{ip}/tcp/{PORT}")]
        if name == RELAY:
            args += ["--relay-server"]
        elif name == HIDDEN:
            args += ["--relay", relay_site3, "--announce", f"{relay_site1}/p2p-circuit"]
        cmd = host.argv(*node_command(args, module=ENTRY))
        procs[name] = HostProc(name, d, cmd, NODE_READY, host=host)

    def seed(dialer: str, target: str) -> list[str]:
        if target == HIDDEN:
            return [f"{relay_site1}/p2p-circuit/p2p/{ids[HIDDEN]}"]
        if dialer == HIDDEN:
            return []  # its --relay: discovery dials relays like seeds
        return [f"/ip4/{lab.hosts[target].ip}/tcp/{PORT}/p2p/{ids[target]}"]

    return procs, seed


def start(procs: dict, seed: Callable, names: list[str], timeout: float) -> None:
    """Launch the waves of `start_waves`, each once the previous one is ready; in the
    namespaces, hidden must also hold its reservation before anyone dials its circuit."""
    env = fleet.child_env()
    for wave in start_waves(names):
        for name, targets in wave:
            p = procs[name]
            p.cmd += [a for t in targets for addr in seed(name, t) for a in ("--seed", addr)]
            p.launch(env)
        for name, _ in wave:
            procs[name].wait_ready(timeout)
            if name == HIDDEN and isinstance(procs[name], HostProc):
                wait_reserved(procs[name], timeout)


def wait_reserved(node: fleet.Proc, timeout: float) -> None:
    client = ControlClient(node.dir / "control.sock", timeout=30)
    deadline = time.monotonic() + timeout
    while not (client.call("status").get("relay") or {}).get("reserved_at"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.name} holds no relay reservation after {timeout} s")
        time.sleep(0.25)


# -- running -----------------------------------------------------------------------------------


def run_mode(s: fleet.Settings, mode: str, root: Path, procs: list) -> dict:
    """Start the fleet in `mode`, measure it (`fleet.measure_fai`), and summarise it; the
    lab of the namespace mode is removed on the way out, also after a failure."""
    names = node_names((s.nodes - 2) // 2)
    texts = fleet.make_texts(s)
    load0 = [round(x, 2) for x in psutil.getloadavg()]
    lab = None
    try:
        if mode == "loopback":
            fleet_procs, seed = loopback_fleet(s, root / "lo", names)
            tcp = fleet.loopback_tcp
        else:
            lab = Lab.standard(per_site=(s.nodes - 2) // 2)
            fleet_procs, seed = netns_fleet(s, root / "ns", names, lab)
            tcp = netns_tcp
        nodes = [fleet_procs[n] for n in names]
        procs.extend(nodes)
        log(f"{mode}: starting {len(nodes)} nodes ({s.embedder})")
        start(fleet_procs, seed, names, timeout=180)
        fai = fleet.measure_fai(s, nodes, texts, tcp=tcp)
    finally:
        fleet.stop_all(procs)
        if lab is not None:
            lab.close()
    out = mode_figures(s, fai, names)
    out["loadavg_before_after"] = [load0, [round(x, 2) for x in psutil.getloadavg()]]
    return out


def measure(s: fleet.Settings, root: Path, procs: list) -> dict:
    """Both modes; a mode that fails is reported as its error, the other still measured."""
    started = time.time()
    modes = {}
    for mode in ("loopback", "namespaces"):
        try:
            modes[mode] = run_mode(s, mode, root, procs)
        except Exception as exc:  # report the other mode's figures all the same
            log(f"{mode} failed: {exc!r}")
            modes[mode] = {"error": repr(exc)}
    return {
        "settings": {**asdict(s), "rounds": s.rounds, "per_site": (s.nodes - 2) // 2},
        "machine": {
            "cores": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0],
        },
        "nodes": node_names((s.nodes - 2) // 2),
        "modes": modes,
        "ratios": ratios(modes),
        "total_wall_s": round(time.time() - started, 1),
    }


def print_table(report: dict) -> None:
    st = report["settings"]
    print(
        f"fleet --hosts: {st['nodes']} nodes {report['nodes']} x {st['rounds']} rounds x "
        f"{st['batch_size']} experiences, every {st['interval_s']} s, embedder {st['embedder']}"
    )
    for mode, m in report["modes"].items():
        if "error" in m:
            print(f"{mode}: FAILED {m['error']}")
            continue
        print(
            f"{mode}: window {m['window_s']} s, load {m['loadavg_before_after']}, published "
            f"{m['published_batches']}/{m['expected_batches']}, pairs "
            f"{m['delivered_pairs']}/{m['expected_pairs']} {m['delivered_by']}, not merged "
            f"{m['not_merged_pairs']}, lost {m['lost_batches']} "
            f"({m['lost_batches_involving_hidden']} involving hidden)"
        )
        for group, g in m["latency_s"].items():
            for metric in METRICS:
                x = g[metric]
                print(
                    f"  {group:<12} {metric:<20} n={x['n']:<5} p50={x['p50']} s  "
                    f"p95={x['p95']} s  max={x['max']} s"
                )
        print(f"  bytes per node per round {m['bytes_per_node_per_round']}")
        print(f"  tcp bytes per round of relay / hidden {m['tcp_bytes_per_round']}")
        print(f"  at the window's end {m['at_window_end']}")
    print("ratios")
    for name, r in report["ratios"].items():
        print(f"  {name:<58} {r}")


def refusal() -> str | None:
    """One line saying why this machine cannot run the namespaces, or None."""
    why = lab_unavailable()
    return None if why is None else f"bench/fleet.py --hosts: {why}; nothing was run"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fleet.py --hosts", description=__doc__.splitlines()[0].strip("`")
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="1 node per site (4 in all), 20 s")
    parser.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--per-site", type=int, help="nodes per site (default 3; + relay, hidden)")
    parser.add_argument("--duration", type=float, help="seconds of publishing (default 40)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    parser.add_argument("--grace", type=float, default=60.0, help="wait after the last publish")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    args = parser.parse_args(argv)
    per_site = args.per_site or (1 if args.quick else 3)
    if per_site < 1:
        parser.error("--per-site must be at least 1")
    why = refusal()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    s = fleet.Settings(
        nodes=2 * per_site + 2,
        duration_s=args.duration or (20.0 if args.quick else 40.0),
        interval_s=args.interval,
        embedder=args.embedder,
        grace_s=args.grace,
        replay=False,
    )

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    root = Path(tempfile.mkdtemp(prefix="faih-", dir="/tmp"))  # short: socket paths
    procs: list = []
    ok = False
    try:
        report = measure(s, root, procs)
        ok = not any("error" in m for m in report["modes"].values())
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        fleet.stop_all(procs)  # run_mode stopped them and closed its lab; again, in case
        if args.keep or not ok:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    return 0 if ok else 1
