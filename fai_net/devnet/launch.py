"""Start a process that says it is ready by writing a file; wait for it; stop it.

One implementation for everything that runs node processes: the devnet (`fleet.up`), the
tests' fleets (tests/support/fleet.py) and the fleet benchmark (bench/fleet.py). A node,
`python -m fai_net.cli node run --data-dir D ...`, writes `D/node.json` (its addresses,
control socket and ports) once it serves; the bench's bare gossip peers write `ready.json`
the same way.

- `launch(argv, name=, ready=, log=)` starts the process with its stdout and stderr
  appended to `log` (never a pipe nobody reads), in the repository root, after removing
  any `ready` file an earlier run left (it would read as ready at once).
- `Launched.wait_ready(timeout)` polls for the ready file until a deadline and returns its
  JSON; if the process exits first it raises `ProcessExited`, on the deadline `NotReady`,
  both carrying the tail of the log (and saying it in their message).
- `Launched.stop(grace)` sends SIGTERM (or `sig`), waits `grace` seconds, then SIGKILLs;
  `running` says whether it still runs.

For processes known only by pid (the devnet's `down` runs in another process than its `up`):
`alive(pid, marker)` and `terminate_group(pid, grace)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from fai_net.settings import REPO_ROOT

#: The file a node writes in its data directory once it serves.
NODE_READY = "node.json"

T = TypeVar("T")


class ProcessExited(RuntimeError):
    """The process exited before it was ready."""

    def __init__(self, name: str, returncode: int, tail: str) -> None:
        super().__init__(f"{name} exited {returncode}:\n{tail}")
        self.name, self.returncode, self.tail = name, returncode, tail


class NotReady(TimeoutError):
    """The process runs but wrote no ready file before the deadline."""

    def __init__(self, name: str, timeout: float, tail: str) -> None:
        super().__init__(f"{name} not ready in {timeout} s:\n{tail}")
        self.name, self.timeout, self.tail = name, timeout, tail


def node_command(args: Sequence[str], *, module: str = "fai_net.cli") -> list[str]:
    """The command line of a node process: `python -m fai_net.cli node run ARGS`."""
    return [sys.executable, "-m", module, "node", "run", *args]


def log_tail(path: Path | None, lines: int) -> str:
    """The last `lines` lines of a log file ("" if there is none yet)."""
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def poll_until(predicate: Callable[[], T], timeout: float, interval: float) -> T | None:
    """Call `predicate` every `interval` s until it returns something true or `timeout` s
    have passed; returns its last value (falsy on the deadline; None if never called)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    return last


@dataclass
class Launched:
    """A process `launch` started: its Popen, its log and the file it writes when ready."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    ready_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    #: True once `stop` had to SIGKILL it.
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def wait_ready(
        self, timeout: float, *, interval: float = 0.1, tail_lines: int = 40
    ) -> dict[str, Any]:
        """The ready file's JSON once it is there (and whole); `ProcessExited` if the
        process ends first, `NotReady` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessExited(self.name, self.popen.returncode, self.tail(tail_lines))
            if self.ready_path.exists():
                try:
                    self.info = json.loads(self.ready_path.read_text())
                    return self.info
                except ValueError:  # half written: the next poll reads it whole
                    pass
            time.sleep(interval)
        raise NotReady(self.name, timeout, self.tail(tail_lines))

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the process (not its group), if it still runs."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, grace: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Send `sig`, wait up to `grace` s for the process to exit, then SIGKILL it (and
        set `killed`). Returns its exit code; a process already gone is left as it is."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.popen.kill()
            return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the process and reap it, if it still runs."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def launch(
    argv: Sequence[str],
    *,
    name: str,
    ready: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    new_session: bool = False,
    stdin: int | IO | None = None,
) -> Launched:
    """Start `argv` with stdout and stderr appended to `log`; it is ready once it writes
    `ready` (removed first). `env` None inherits ours; `new_session` detaches it from our
    terminal and process group (a Ctrl-C then reaches only us); `stdin` as for Popen."""
    ready, log = Path(ready), Path(log)
    ready.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child holds its own copy of the descriptor
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=new_session,
        )
    return Launched(name, popen, log, ready)


def launch_node(
    args: Sequence[str],
    *,
    data_dir: Path,
    name: str | None = None,
    log: Path | None = None,
    module: str = "fai_net.cli",
    **options: Any,
) -> Launched:
    """Start `python -m fai_net.cli node run ARGS` (ARGS hold `--data-dir data_dir`); ready
    at `data_dir/node.json`. `name` defaults to the data directory's name and `log` to
    `<data_dir's parent>/<name>.log`; `options` go to `launch`."""
    data_dir = Path(data_dir)
    name = name or data_dir.name
    log = log or data_dir.parent / f"{name}.log"
    argv = node_command(args, module=module)
    return launch(argv, name=name, ready=data_dir / NODE_READY, log=log, **options)


# -- processes known by pid only ---------------------------------------------------------------


def alive(pid: int | None, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (pids are reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def terminate_group(pid: int, grace: float = 20.0) -> bool:
    """SIGTERM the process group `pid` leads, then SIGKILL it after `grace` s; True if it
    had to be killed. Reaps the leader if it is our child."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        _reap(pid)
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
