"""Real node processes on 127.0.0.1 for the fleet tests: start, talk to, stop.

Each node is `python -m fai_net.cli node run` in its own OS process (its own trio loop,
libp2p host, LanceDB library and sqlite store), driven through its control socket exactly
as the CLI and the MCP server drive it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fai_core.corpus import load_pattern_corpus
from fai_net.api.control import ControlClient
from fai_net.devnet.launch import Launched, launch_node, log_tail, poll_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProc:
    name: str
    data_dir: Path
    domains: tuple[str, ...]
    args: list[str]
    proc: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)
    log_path: Path | None = None
    launched: Launched | None = field(default=None, repr=False)

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.data_dir / "control.sock", timeout=60)

    def call(self, action: str, **args) -> dict:
        return self.client.call(action, **args)

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    def start(self, timeout: float = 90.0) -> NodeProc:
        return self.launch().wait_ready(timeout)

    def launch(self) -> NodeProc:
        self.launched = launch_node(
            self.args,
            data_dir=self.data_dir,
            name=self.name,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.proc, self.log_path = self.launched.popen, self.launched.log_path
        return self

    def wait_ready(self, timeout: float = 90.0) -> NodeProc:
        self.info = self.launched.wait_ready(timeout, tail_lines=40)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait; a node still running after `timeout` s is killed, and then
        TimeoutExpired is raised."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        code = self.launched.stop(timeout, sig)
        if self.launched.killed:
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        return code

    def kill(self) -> None:
        if self.launched is not None:
            self.launched.kill()

    def tail(self, n: int = 40) -> str:
        return log_tail(self.log_path, n)


class Fleet:
    """Nodes in one temp directory; every node seeds from the ones started before it."""

    def __init__(self, root: Path | None = None, **defaults) -> None:
        # AF_UNIX paths are limited to ~107 bytes: keep the root short.
        self.root = root or Path(tempfile.mkdtemp(prefix="fai-", dir="/tmp"))
        self.nodes: dict[str, NodeProc] = {}
        self.defaults = {
            "embedder": "hashing",
            "broadcast-interval": "2",
            "round-interval": "0.5",
            "repair-interval": "3",
            "discovery-interval": "1",
            "metrics-port": "0",
            **defaults,
        }

    def add(
        self,
        name: str,
        domains: tuple[str, ...],
        seeds: list[str] | None = None,
        membership: list[str] | None = None,
        **opts,
    ):
        return self.spawn(name, domains, seeds, membership, **opts).wait_ready()

    def add_many(self, specs: dict[str, tuple[str, ...]], seeds: list[str], **opts) -> None:
        """Start several nodes at once (all seeded with `seeds`), then wait for them all."""
        procs = [self.spawn(name, domains, seeds, **opts) for name, domains in specs.items()]
        for node in procs:
            node.wait_ready()

    def spawn(
        self,
        name: str,
        domains: tuple[str, ...],
        seeds: list[str] | None = None,
        membership: list[str] | None = None,
        **opts,
    ):
        """Launch a node; `membership` defaults to ["--open"] (registry flags otherwise)."""
        data_dir = self.root / name
        args = ["--data-dir", str(data_dir), *(membership or ["--open"]), "--log-level", "info"]
        for d in domains:
            args += ["--domain", d]
        if seeds is None:
            seeds = [n.addr for n in self.nodes.values() if n.info][-2:]
        for s in seeds:
            args += ["--seed", s]
        for k, v in {**self.defaults, **opts}.items():
            args += [f"--{k}", str(v)]
        node = NodeProc(name, data_dir, domains, args)
        self.nodes[name] = node
        return node.launch()

    def stop_all(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception:  # teardown must reach every node
                node.kill()

    def __getitem__(self, name: str) -> NodeProc:
        return self.nodes[name]


@contextmanager
def temporary_fleet(**defaults) -> Iterator[Fleet]:
    """A Fleet whose nodes are stopped and whose directory is removed afterwards."""
    fleet = Fleet(**defaults)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        shutil.rmtree(fleet.root, ignore_errors=True)


def corpus_by_domain() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for domain, text in load_pattern_corpus():
        out.setdefault(domain, []).append(text)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    last = poll_until(predicate, timeout, interval)
    if last:
        return last
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
