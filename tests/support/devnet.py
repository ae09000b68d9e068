"""Running `fai` as a user does, against a devnet kept in a test's own state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fai(
    *args: str,
    state_dir: Path,
    code: int | None = 0,
    timeout: float = 240,
    clean_env: bool = False,
) -> subprocess.CompletedProcess:
    """`fai ARGS` in a subprocess with FAI_DEVNET_STATE naming `state_dir`'s devnet.

    `code` is the exit code to insist on (None: any); `clean_env` drops the caller's other
    FAI_* settings. A traceback on stderr always fails: every refusal must be a message.
    """
    env = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("FAI_"))}
    env["FAI_DEVNET_STATE"] = str(state_dir / "devnet.json")
    proc = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if code is not None and proc.returncode != code:
        raise AssertionError(
            f"fai {' '.join(args)} exited {proc.returncode}, expected {code}:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc
