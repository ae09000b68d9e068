from __future__ import annotations

import json
import re

import pytest

from fai_core.reputation import ReputationBook

PEER = b"\x01" * 32


def test_ema_from_one():
    book = ReputationBook()
    assert book.score(PEER) == 1.0
    assert book.record(PEER, False) == pytest.approx(0.9)
    assert book.record(PEER, True) == pytest.approx(0.91)


def test_deprioritised_after_twelve_failures():
    book = ReputationBook()
    for i in range(12):
        assert not book.deprioritised(PEER), i
        book.record(PEER, False)
    assert book.deprioritised(PEER)


def test_persisted_atomically(tmp_path):
    path = tmp_path / "rep.json"
    book = ReputationBook(path)
    book.record(PEER, False)
    book.save()
    assert json.loads(path.read_text())["peers"][PEER.hex()] == pytest.approx(0.9)
    assert ReputationBook(path).score(PEER) == pytest.approx(0.9)
    assert [p.name for p in tmp_path.iterdir()] == ["rep.json"]


def test_corrupt_file_refused(tmp_path):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps({"format": 1, "peers": {PEER.hex(): 7}}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: bad entry '{PEER.hex()}': 7$"):
        ReputationBook(path)


def test_scores_recover_toward_initial_with_the_given_clock(tmp_path):
    """Without recovery a peer below the floor is never evaluated again: excluded for good."""
    now = [1_000_000]
    hour = 3_600_000
    book = ReputationBook(
        tmp_path / "rep.json", recovery_half_life_ms=hour, clock_ms=lambda: now[0]
    )
    for _ in range(12):
        book.record(PEER, passed=False)
    low = book.score(PEER)
    assert low < book.threshold and book.deprioritised(PEER)
    now[0] += hour  # one half-life: half the distance back to 1.0
    assert book.score(PEER) == pytest.approx(1.0 - (1.0 - low) / 2)
    assert not book.deprioritised(PEER)
    # A failure after recovery costs the usual 10% of the recovered score at once.
    recovered = book.score(PEER)
    assert book.record(PEER, passed=False) == pytest.approx(0.9 * recovered)
    book.save()
    reopened = ReputationBook(
        tmp_path / "rep.json", recovery_half_life_ms=hour, clock_ms=lambda: now[0]
    )
    assert reopened.score(PEER) == pytest.approx(book.score(PEER))
    now[0] += 10 * hour
    assert reopened.score(PEER) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match=r"^recovery needs a positive half-life and a clock$"):
        ReputationBook(recovery_half_life_ms=hour)  # a half-life without a clock


def test_without_recovery_a_score_stays_put():
    book = ReputationBook()
    book.record(PEER, passed=False)
    assert book.score(PEER) == pytest.approx(0.9)
