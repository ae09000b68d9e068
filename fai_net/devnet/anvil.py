"""Start and stop a local Anvil chain from the project's pinned npm tooling.

Tests and the devnet need a real EVM, not a mock: Anvil starts in ~0.1 s. On this machine's
own network it only ever binds 127.0.0.1, on a port the OS reports free, and is killed with
its process group so no stray chain survives a crashed test run.

The devnet on several hosts (`fai devnet up --hosts`) runs it inside a lab namespace
(fai_net/devnet/netns.py) instead, on that host's 10.91.x address and the fixed LAB_PORT
(the namespace is new and empty, so the port is free, and the URL is predictable). Its
readiness probe must then reach that address: `start()` is called from a thread inside
the same namespace (`netns.in_netns`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

REPO_DIR = Path(__file__).resolve().parents[2]
DEVNET_DIR = REPO_DIR / "devnet"
ANVIL_BIN = DEVNET_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
SETUP_HINT = "run `npm ci --prefix devnet` (or `make test`, which does it) to install it"
#: Anvil's port inside a lab namespace (Anvil's own default).
LAB_PORT = 8545


class AnvilError(RuntimeError):
    """Anvil is missing or did not come up."""


def anvil_binary() -> Path:
    """Path of the pinned anvil; a readable error when the npm set-up step was skipped."""
    if not ANVIL_BIN.is_file():
        raise AnvilError(f"anvil not found at {ANVIL_BIN}: {SETUP_HINT}")
    return ANVIL_BIN


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 1.0):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())["result"]


@dataclass
class Anvil:
    """A running Anvil; use as a context manager or call `stop()`."""

    chain_id: int = 31337
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    #: The address to bind: 127.0.0.1, or a lab host's address together with its `netns`.
    host: str = "127.0.0.1"
    #: The lab namespace to run in (None: this machine's own network, loopback only).
    netns: str | None = None
    process: subprocess.Popen | None = None
    _log: BinaryIO | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0, attempts: int = 3) -> Anvil:
        """Start on a free loopback port (LAB_PORT in a namespace); retries if another
        process grabbed the port first.

        Refuses to start twice (a second process would be orphaned). Anvil's output goes to
        a temporary log file, never to an unread pipe that could fill up and block it; the
        file is read only to explain a failed start and is removed by `stop()`.
        """
        if self.process is not None and self.process.poll() is None:
            raise AnvilError(f"anvil is already running on {self.url}")
        self.stop()  # a process that already exited: release its log
        if self.netns is None and not ipaddress.ip_address(self.host).is_loopback:
            raise AnvilError(
                f"anvil binds only loopback on this machine's own network, not {self.host}: "
                "a lab address needs its namespace (netns=)"
            )
        binary = anvil_binary()
        last_error = ""
        for _ in range(attempts):
            self.port = LAB_PORT if self.netns else free_port()
            # Closed by stop(), which every path out of start() (or the caller) reaches.
            self._log = tempfile.TemporaryFile(prefix="anvil-", suffix=".log")  # noqa: SIM115
            try:
                self.process = self._spawn(binary)
            except OSError:
                self.stop()
                raise
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = self._read_log()
                    break
                try:
                    if int(_rpc(self.url, "eth_chainId"), 16) == self.chain_id:
                        return self
                except (OSError, urllib.error.URLError, KeyError, ValueError):
                    time.sleep(0.05)
            else:
                self.stop()
                raise AnvilError(f"anvil did not answer on {self.url} within {timeout} s")
            self.stop()
        raise AnvilError(f"anvil failed to start: {last_error.strip()}")

    def _spawn(self, binary: Path) -> subprocess.Popen:
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.Popen(
            [
                *inside,
                str(binary),
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--chain-id",
                str(self.chain_id),
                "--silent",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _read_log(self) -> str:
        log = self._log
        if log is None:
            return ""
        log.seek(0)
        return log.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        """Terminate the process group, escalating to SIGKILL if it lingers. Idempotent."""
        proc, self.process = self.process, None
        try:
            if proc is None or proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        finally:
            log, self._log = self._log, None
            if log is not None:
                log.close()

    def __enter__(self) -> Anvil:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
