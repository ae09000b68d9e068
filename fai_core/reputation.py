"""Per-peer reputation (paper section 8.3): an EMA over pass/fail outcomes of received batches.

rep <- gamma * rep + (1 - gamma) * r, r in {0, 1}, starting at 1.0 with gamma = 0.9, so one
failure costs a trusted peer 0.1 and twelve failures in a row take it from 1.0 below the
0.3 threshold (0.9^11 = 0.314, 0.9^12 = 0.282). A peer below the
threshold is deprioritised: DeltaSoup skips its batches and the gossip layer prefers others.

Only outcomes that are provably the peer's doing, and that this node verifies itself, may
be recorded: a batch whose signature did not verify could claim any sender, so it must not
cost that sender anything; a batch anyone could have re-published (replay, stale) proves
nothing about its signer; and a verdict relative to the round's other senders (an outlier
among them) is one Sybils can choose, so it drops rows but is never recorded
(`deltasoup.CHARGED`, docs/deltasoup.md "What costs reputation").

Optionally a score recovers toward `initial` with time (`recovery_half_life_ms`, with an
explicit clock, so the core stays deterministic): a peer below the threshold is refused
before any of its batches is evaluated, so without recovery one bad spell (or a bug, or a
badly calibrated check) would exclude an honest peer for good. A Byzantine peer recovers
too, but at half the distance per half-life, and loses 0.1 per failure again at once.

The scores survive restarts in a small JSON file, replaced atomically (temp file, fsync,
rename, fsync of the directory), so a crash leaves either the old or the new file, never a
torn one; without that a Byzantine peer would be forgiven by every restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

DEFAULT_GAMMA = 0.9
DEFAULT_INITIAL = 1.0
DEFAULT_THRESHOLD = 0.3
_FORMAT = 1


class ReputationBook:
    """Scores of the peers this node has heard from; unknown peers start at `initial`."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        gamma: float = DEFAULT_GAMMA,
        initial: float = DEFAULT_INITIAL,
        threshold: float = DEFAULT_THRESHOLD,
        recovery_half_life_ms: int | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if not 0.0 < gamma < 1.0:
            raise ValueError("gamma must lie in (0, 1)")
        if not 0.0 <= threshold <= initial <= 1.0:
            raise ValueError("need 0 <= threshold <= initial <= 1")
        self.gamma = gamma
        self.initial = initial
        self.threshold = threshold
        if recovery_half_life_ms is not None and (recovery_half_life_ms <= 0 or clock_ms is None):
            raise ValueError("recovery needs a positive half-life and a clock")
        self.recovery_half_life_ms = recovery_half_life_ms
        self.clock_ms = clock_ms
        self.path = Path(path) if path is not None else None
        self._scores: dict[bytes, float] = {}
        self._stamps: dict[bytes, int] = {}  # when each score was last recorded (recovery)
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def score(self, peer: bytes) -> float:
        """The peer's current score: `initial` if unknown, with time's recovery applied
        when the book recovers."""
        stored = self._scores.get(peer)
        if stored is None:
            return self.initial
        if self.recovery_half_life_ms is None or peer not in self._stamps:
            return stored
        elapsed = max(0, self.clock_ms() - self._stamps[peer])
        return self.initial - (self.initial - stored) * 0.5 ** (
            elapsed / self.recovery_half_life_ms
        )

    def deprioritised(self, peer: bytes) -> bool:
        """True when the peer's score is below the threshold: its batches are skipped."""
        return self.score(peer) < self.threshold

    def record(self, peer: bytes, passed: bool) -> float:
        """Fold one outcome into the peer's score and return the new score (not saved yet)."""
        new = self.gamma * self.score(peer) + (1.0 - self.gamma) * (1.0 if passed else 0.0)
        self._scores[peer] = new
        if self.clock_ms is not None:
            self._stamps[peer] = self.clock_ms()
        return new

    def peers(self) -> dict[bytes, float]:
        """The current score of every peer with a recorded outcome, for status reports."""
        return {peer: self.score(peer) for peer in list(self._scores)}

    def save(self) -> None:
        """Write all scores atomically to `path` (no-op for an in-memory book)."""
        if self.path is None:
            return
        data = {
            "format": _FORMAT,
            "gamma": self.gamma,
            "peers": {peer.hex(): score for peer, score in sorted(self._scores.items())},
        }
        if self._stamps:
            data["stamps"] = {peer.hex(): t for peer, t in sorted(self._stamps.items())}
        atomic_write_json(self.path, data)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a reputation file of format {_FORMAT}")
        for hex_key, score in data["peers"].items():
            peer = bytes.fromhex(hex_key)
            if len(peer) != 32 or not isinstance(score, float | int) or not 0 <= score <= 1:
                raise ValueError(f"{path}: bad entry {hex_key!r}: {score!r}")
            self._scores[peer] = float(score)
        for hex_key, stamp in data.get("stamps", {}).items():
            peer = bytes.fromhex(hex_key)
            if peer in self._scores and isinstance(stamp, int) and stamp >= 0:
                self._stamps[peer] = stamp


def atomic_write_json(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON so that readers see the old or the new file only."""
    atomic_write(path, lambda f: f.write(json.dumps(data, sort_keys=True).encode("utf-8")))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace `path` with what `write` writes to a binary file: a temp file in the same
    directory, fsync, rename, fsync of the directory; a crash leaves the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
