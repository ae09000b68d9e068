"""Crash safety: SIGKILL a real writer process at random instants, many times.

Every experience whose write call returned (and was acknowledged on stdout) before the
kill must be in the library afterwards, and the library must open and stay usable: its
count, search and baseline agree with its rows. Kills are cumulative on one library, so
later writers also start from a library a previous kill left behind.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fai_core.library import ExperienceLibrary

WRITER = Path(__file__).with_name("library_writer.py")
REPO = Path(__file__).resolve().parents[2]
DIM = 16
KILLS = 20
_EXIT = re.compile(r"EXIT (\d+) (\d+)$")


def _reader(stream, lines: queue.Queue) -> None:
    for raw in stream:
        lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)


def _take_acks(line: str, acked: set[bytes]) -> None:
    if line.startswith("ACK ") and line.endswith(" END"):
        acked.update(bytes.fromhex(h) for h in line[4:-4].split(","))


def _check_library(path: Path, acked: set[bytes]) -> int:
    with ExperienceLibrary.open(path, DIM) as lib:
        ids = lib.ids()
        missing = acked - ids
        assert not missing, f"{len(missing)} acknowledged experiences lost"
        assert lib.count() == len(ids)
        if ids:
            rows = np.stack([e.embedding for e in lib.experiences()]).astype(np.float64)
            np.testing.assert_allclose(lib.baseline(), rows.mean(axis=0), atol=1e-9)
            probe = lib.get(next(iter(acked))) if acked else next(lib.entries())
            hit = lib.search(probe.experience.embedding, k=1)[0]
            assert hit.distance < 1e-3
        return len(ids)


@pytest.mark.slow  # a SIGKILL soak: ~15 s
def test_sigkill_mid_write_keeps_every_acknowledged_experience(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp_path / "writer.stderr", "wb") as err:
        server = subprocess.Popen(
            [sys.executable, str(WRITER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=env,
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(server.stdout, lines), daemon=True).start()
    rng = random.Random(20240611)
    path = tmp_path / "lib"
    acked: set[bytes] = set()
    acks_seen = 0
    try:
        for run in range(KILLS):
            server.stdin.write(f"run {path} {run}\n".encode())
            server.stdin.flush()
            first = lines.get(timeout=60)
            assert first and first.startswith("PID "), first
            pid = int(first.split()[1])
            deadline = time.monotonic() + rng.uniform(0.0, 1.2)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    line = lines.get(timeout=left)
                except queue.Empty:
                    break
                assert line is not None and not _EXIT.search(line), (
                    f"writer died on its own: {line}; "
                    + (tmp_path / "writer.stderr").read_text()[-2000:]
                )
                _take_acks(line, acked)
                acks_seen += line.endswith(" END")
            os.kill(pid, signal.SIGKILL)
            while True:
                line = lines.get(timeout=60)
                assert line is not None, "fork server died"
                _take_acks(line, acked)
                if m := _EXIT.search(line):
                    status = int(m.group(2))
                    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                        tmp_path / "writer.stderr"
                    ).read_text()[-2000:]
                    break
            _check_library(path, acked)
        server.stdin.write(b"quit\n")
        server.stdin.flush()
    finally:
        server.kill()
        server.wait()
    assert acks_seen >= KILLS // 2, "too few writes acknowledged for the kills to mean much"
    # After all that, the library still takes writes and maintenance.
    with ExperienceLibrary.open(path, DIM) as lib:
        lib.maintain()
        assert lib.ids() >= acked
