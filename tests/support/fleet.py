"""Real node processes on 127.0.0.1 for the fleet tests: start, talk to, stop.

Each node is `python -m fai_net.cli node run` in its own OS process (its own trio loop,
libp2p host, LanceDB library and sqlite store), driven through its control socket exactly
as the CLI and the MCP server drive it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fai_core.corpus import load_pattern_corpus
from fai_net.api.control import ControlClient

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
        (self.data_dir / "node.json").unlink(missing_ok=True)
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fai_net.cli", "node", "run", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 90.0) -> NodeProc:
        ready = self.data_dir / "node.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            if ready.exists():
                try:
                    self.info = json.loads(ready.read_text())
                    return self
                except ValueError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


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
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
