from __future__ import annotations

import json

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
    with pytest.raises(ValueError):
        ReputationBook(path)
