"""Node processes in the namespace lab (fai_net/devnet/netns.py), driven through their
control sockets: what the lab tests share."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from fai_net.api.client import FaiClient
from fai_net.devnet.launch import NODE_READY, Launched, launch
from fai_net.devnet.netns import Host
from tests.support.fleet import ROOT

#: Every lab node listens on its own address, this port.
PORT = 4001
DOMAIN = "coding"
FAI = str(ROOT / ".venv/bin/fai")


@dataclass
class LabNode:
    """One `fai node run` process inside a lab host's namespace."""

    name: str
    host: Host
    data_dir: Path
    peer_id: str
    launched: Launched | None = None
    port: int = PORT

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host.ip}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def site(self) -> int:
        """The lab site of its first address (10.91.<site>.x)."""
        return int(self.host.ip.split(".")[2])

    def call(self, action: str, **args) -> dict:
        return FaiClient.from_data_dir(self.data_dir, timeout=30).call(action, **args)

    def cids(self) -> set[str]:
        return set(self.call("batches", domain=DOMAIN)["cids"])

    def publish(self, text: str) -> str:
        """Add one experience and broadcast it now: the new batch's CID."""
        self.call("add", experiences=[{"text": text, "domain": DOMAIN}])
        sent = self.call("broadcast", domain=DOMAIN)
        assert sent["experiences_sent"] == 1, sent
        return sent["batch_id"]

    def arrivals(self, cids: set[str]) -> dict[str, int]:
        """How the batches `cids` came to this node, {origin: count}, from its event log."""
        out: dict[str, int] = {}
        path = self.data_dir / "events.jsonl"
        for line in path.read_text().splitlines() if path.exists() else ():
            event = json.loads(line)
            if event["ev"] == "accepted" and event["cid"] in cids:
                out[event["origin"]] = out.get(event["origin"], 0) + 1
        return out

    def tail(self, lines: int = 60) -> str:
        return self.launched.tail(lines) if self.launched else ""


def launch_in_lab(
    node: LabNode,
    log: Path,
    *,
    seeds: list[str],
    repair_s: float,
    discovery_s: float,
    domains: tuple[str, ...] = (DOMAIN,),
    extra: tuple[str, ...] = (),
) -> None:
    """Start `fai node run` for `node` inside its host's namespace, in open mode with the
    hashing embedder, listening on its own address; nothing is published but by the tests'
    `broadcast` calls."""
    argv = node.host.argv(
        FAI, "node", "run", "--data-dir", str(node.data_dir),
        "--listen", f"/ip4/{node.host.ip}/tcp/{node.port}",
        "--open", "--embedder", "hashing", *[a for d in domains for a in ("--domain", d)],
        *[arg for seed in seeds for arg in ("--seed", seed)],
        "--repair-interval", str(repair_s),
        "--discovery-interval", str(discovery_s),
        "--broadcast-interval", "600", "--broadcast-threshold", "1000",
        "--round-interval", "0.5",
        "--metrics-port", "-1",
        "--event-log", str(node.data_dir / "events.jsonl"),
        "--log-level", "info",
        *extra,
    )  # fmt: skip
    node.launched = launch(argv, name=node.name, ready=node.data_dir / NODE_READY, log=log)


def stop_all(nodes) -> None:
    """SIGTERM every started node (they stop in parallel), then wait; SIGKILL after 15 s."""
    launched = [n.launched for n in nodes if n.launched is not None]
    for proc in launched:
        proc.send_signal()
    for proc in launched:
        proc.stop(grace=15)


def tear_down(nodes, lab, root: Path) -> dict[str, str]:
    """Stop the nodes, then remove the lab and the data directories, whatever failed
    first; the nodes' logs, for `assert_no_traceback` once everything is gone."""
    logs: dict[str, str] = {}
    try:
        stop_all(nodes)
        logs = {n.name: n.tail(5000) for n in nodes}
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
    return logs


def assert_no_traceback(logs: dict[str, str]) -> None:
    for name, log in logs.items():
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log}"
