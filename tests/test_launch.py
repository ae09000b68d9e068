"""fai_net.devnet.launch: start a process, wait for its ready file, stop it.

The fast tests launch small Python scripts that behave like a node would (write a ready
file, exit early with output, ignore SIGTERM); one slow test starts a real node.
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
from pathlib import Path

import pytest

from fai_net.devnet import fleet as devnet
from fai_net.devnet import launch as L

# argv[1] is the ready file. Writes a half file first: a reader must wait for it whole.
READY_LATER = """
import json, os, sys, time
print("booting", flush=True)
time.sleep(0.3)
open(sys.argv[1], "w").write('{"addrs": ')
time.sleep(0.3)
info = {"addrs": ["/ip4/127.0.0.1/tcp/1"], "cwd": os.getcwd(), "env": os.environ.get("X_FAI")}
open(sys.argv[1], "w").write(json.dumps(info))
print("ready", flush=True)
time.sleep(60)
"""

EXITS_EARLY = """
import sys
for i in range(50):
    print(f"line {i}")
print("boom: bad flag", file=sys.stderr)
sys.exit(3)
"""

NEVER_READY = """
import time
print("thinking", flush=True)
time.sleep(60)
"""

IGNORES_SIGTERM = """
import json, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write(json.dumps({"pid": 1}))
time.sleep(60)
"""


def start(tmp_path: Path, script: str, name: str = "p0", **options) -> L.Launched:
    ready = tmp_path / name / "ready.json"
    ready.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", script, str(ready)]
    return L.launch(argv, name=name, ready=ready, log=tmp_path / f"{name}.log", **options)


@pytest.fixture
def launched():
    """Every process a test starts, killed afterwards whatever happened."""
    procs: list[L.Launched] = []
    yield procs
    for proc in procs:
        proc.kill()


def test_waits_for_the_whole_ready_file_and_logs_output(tmp_path, launched, monkeypatch):
    monkeypatch.setenv("X_FAI", "inherited")
    proc = start(tmp_path, READY_LATER, env={**os.environ, "X_FAI": "given"}, cwd=tmp_path)
    launched.append(proc)
    info = proc.wait_ready(10, interval=0.05)
    assert info["addrs"] == ["/ip4/127.0.0.1/tcp/1"] and proc.info == info
    assert info["env"] == "given" and Path(info["cwd"]) == tmp_path
    assert proc.running and proc.returncode is None
    assert proc.pid == proc.popen.pid
    assert proc.log_path == tmp_path / "p0.log"
    assert L.poll_until(lambda: "ready" in proc.tail(), 5, 0.05)
    assert proc.tail().splitlines() == ["booting", "ready"]
    assert proc.tail(1) == "ready"
    assert proc.stop(10) == -signal.SIGTERM
    assert not proc.running and not proc.killed


def test_the_environment_is_inherited_by_default(tmp_path, launched, monkeypatch):
    monkeypatch.setenv("X_FAI", "inherited")
    proc = start(tmp_path, READY_LATER)
    launched.append(proc)
    assert proc.wait_ready(10)["env"] == "inherited"
    assert Path(proc.wait_ready(10)["cwd"]) == L.REPO_ROOT


def test_a_stale_ready_file_is_removed_before_the_start(tmp_path, launched):
    stale = tmp_path / "p0" / "ready.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"addrs": ["stale"]}))
    proc = start(tmp_path, READY_LATER)
    launched.append(proc)
    assert not stale.exists() or json.loads(stale.read_text())["addrs"] != ["stale"]
    assert proc.wait_ready(10)["addrs"] != ["stale"]


def test_the_log_is_appended_to_across_launches(tmp_path, launched):
    for _ in range(2):
        proc = start(tmp_path, EXITS_EARLY)
        launched.append(proc)
        proc.popen.wait(10)
    text = (tmp_path / "p0.log").read_text()
    assert text.count("boom: bad flag") == 2


def test_an_early_exit_reports_the_code_and_the_output_tail(tmp_path, launched):
    proc = start(tmp_path, EXITS_EARLY)
    launched.append(proc)
    with pytest.raises(L.ProcessExited) as caught:
        proc.wait_ready(30, tail_lines=5)
    exc = caught.value
    assert isinstance(exc, RuntimeError)
    assert exc.returncode == 3 and exc.name == "p0"
    assert exc.tail.splitlines() == ["line 46", "line 47", "line 48", "line 49", "boom: bad flag"]
    assert str(exc) == "p0 exited 3:\n" + exc.tail
    assert not proc.running and proc.returncode == 3
    assert proc.stop(1) == 3 and not proc.killed  # already gone: nothing to stop


def test_no_ready_file_by_the_deadline_is_a_timeout_with_the_tail(tmp_path, launched):
    proc = start(tmp_path, NEVER_READY)
    launched.append(proc)
    L.poll_until(lambda: proc.tail(), 10, 0.05)
    began = time.monotonic()
    with pytest.raises(L.NotReady) as caught:
        proc.wait_ready(0.5)
    assert time.monotonic() - began >= 0.5
    assert isinstance(caught.value, TimeoutError)
    assert str(caught.value) == "p0 not ready in 0.5 s:\nthinking"
    assert proc.running
    assert proc.stop(10) == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, launched):
    proc = start(tmp_path, IGNORES_SIGTERM)
    launched.append(proc)
    proc.wait_ready(10)
    began = time.monotonic()
    assert proc.stop(0.5) == -signal.SIGKILL
    assert time.monotonic() - began >= 0.5
    assert proc.killed and not proc.running


def test_stop_can_send_another_signal(tmp_path, launched):
    proc = start(tmp_path, IGNORES_SIGTERM)
    launched.append(proc)
    proc.wait_ready(10)
    assert proc.stop(10, sig=signal.SIGINT) != -signal.SIGKILL
    assert not proc.killed


def test_signal_and_kill_leave_a_finished_process_alone(tmp_path, launched):
    proc = start(tmp_path, EXITS_EARLY)
    launched.append(proc)
    proc.popen.wait(10)
    proc.send_signal(signal.SIGTERM)
    proc.kill()
    assert proc.returncode == 3


def test_terminate_group_escalates_to_sigkill(tmp_path, launched):
    stubborn = start(tmp_path, IGNORES_SIGTERM, name="stubborn", new_session=True)
    polite = start(tmp_path, NEVER_READY, name="polite", new_session=True)
    launched += [stubborn, polite]
    stubborn.wait_ready(10)
    assert os.getpgid(stubborn.pid) == stubborn.pid  # its own process group
    assert L.terminate_group(stubborn.pid, grace=0.5) is True
    assert stubborn.popen.wait(10) == -signal.SIGKILL
    assert L.terminate_group(polite.pid, grace=10) is False
    # terminate_group reaps a child of ours itself: Popen then no longer sees its status.
    assert polite.popen.wait(10) in (0, -signal.SIGTERM)
    assert not L.alive(polite.pid, "thinking")
    assert L.terminate_group(polite.pid) is False  # gone: nothing to do


def test_alive_checks_the_pid_and_its_command_line(tmp_path, launched):
    proc = start(tmp_path, NEVER_READY, name="marked")
    launched.append(proc)
    L.poll_until(lambda: proc.tail(), 10, 0.05)
    assert L.alive(proc.pid, "thinking")  # the script is in its argv
    assert not L.alive(proc.pid, "no-such-marker")
    assert not L.alive(None, "python") and not L.alive(0, "python")
    proc.kill()
    assert not L.alive(proc.pid, "thinking")
    assert devnet._alive(os.getpid(), "python") == L.alive(os.getpid(), "python")


def test_node_command_and_launch_node_paths():
    command = L.node_command(["--open"])
    assert command[0] == sys.executable
    assert " ".join(command[1:]) == "-m fai_net.cli node run --open"
    assert L.node_command([], module="fai_net.cli.entry")[2] == "fai_net.cli.entry"
    assert L.NODE_READY == "node.json"


def test_poll_until():
    calls = iter([0, None, "", "got it"])
    assert L.poll_until(lambda: next(calls), 5, 0.01) == "got it"
    assert L.poll_until(lambda: [], 0.05, 0.01) == []
    assert L.poll_until(lambda: 1, 0, 0.01) is None


def test_the_devnet_keeps_its_error_texts(tmp_path, launched):
    """`fai devnet up` says `<node> exited N:` and the last 15 lines, or `did not start`."""
    early = start(tmp_path, EXITS_EARLY, name="node0")
    launched.append(early)
    with pytest.raises(devnet.DevnetError) as caught:
        devnet._wait_ready(tmp_path / "node0", early, early.log_path)
    lines = str(caught.value).splitlines()
    assert lines[0] == "node0 exited 3:" and len(lines) == 16 and lines[-1] == "boom: bad flag"
    slow = start(tmp_path, NEVER_READY, name="node1")
    launched.append(slow)
    with pytest.raises(devnet.DevnetError) as caught:
        devnet._wait_ready(tmp_path / "node1", slow, slow.log_path, timeout=0.5)
    assert str(caught.value) == f"node1 did not start within 0 s (log: {slow.log_path})"


@pytest.mark.slow
def test_a_real_node_starts_writes_node_json_and_stops_cleanly():
    root = Path(tempfile.mkdtemp(prefix="fai-", dir="/tmp"))  # AF_UNIX paths stay short
    try:
        data_dir = root / "n0"
        args = ["--data-dir", str(data_dir), "--open", "--domain", "coding"]
        args += ["--embedder", "hashing", "--metrics-port", "0"]
        proc = L.launch_node(args, data_dir=data_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            info = proc.wait_ready(120)
            assert proc.name == "n0" and proc.log_path == root / "n0.log"
            assert info["addrs"] and "/p2p/" in info["addrs"][0]
            assert (data_dir / "node.json").exists()
            assert L.alive(proc.pid, "fai_net")
            assert proc.stop(30) == 0 and not proc.killed
        finally:
            proc.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_launched_process_gets_no_pipe(tmp_path, launched):
    proc = start(tmp_path, EXITS_EARLY, stdin=subprocess.DEVNULL)
    launched.append(proc)
    assert proc.popen.stdout is None and proc.popen.stdin is None
    assert proc.popen.wait(10) == 3


def test_stopping_another_users_devnet_is_a_clear_refusal(monkeypatch):
    """A non-root `fai devnet down` on a root-made --hosts devnet: os.killpg raises
    PermissionError, which must reach the user as one line, not a traceback."""

    def refuse(pid, grace):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(devnet, "terminate_group", refuse)
    with pytest.raises(devnet.DevnetError, match="run `fai devnet down` as that user"):
        devnet._terminate(4242)
