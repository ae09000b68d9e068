"""The edges of fai_core/reputation.py that `make mutate` found untested (docs/mutation.md):
the bounds of the parameters, the exact threshold, recovery on a fixed clock, what a
reputation file must hold to be loaded, and how it is written (atomically, beside itself).
"""

from __future__ import annotations

import json
import os

import pytest

from fai_core import reputation
from fai_core.reputation import ReputationBook, atomic_write_json

PEER = b"\x01" * 32
OTHER = b"\x02" * 32


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, -0.1])
def test_gamma_must_lie_strictly_between_zero_and_one(gamma):
    with pytest.raises(ValueError, match=r"^gamma must lie in \(0, 1\)$"):
        ReputationBook(gamma=gamma)


@pytest.mark.parametrize(
    ("threshold", "initial"), [(-0.1, 1.0), (0.6, 0.5), (0.3, 1.5), (1.2, 1.2)]
)
def test_threshold_and_initial_must_be_ordered_in_zero_one(threshold, initial):
    with pytest.raises(ValueError, match=r"^need 0 <= threshold <= initial <= 1$"):
        ReputationBook(threshold=threshold, initial=initial)


def test_the_bounds_themselves_are_allowed():
    assert ReputationBook(threshold=0.0).threshold == 0.0
    assert ReputationBook(threshold=0.5, initial=0.5).score(PEER) == 0.5
    assert ReputationBook(threshold=1.0, initial=1.0).initial == 1.0
    assert ReputationBook(gamma=0.999).gamma == 0.999


@pytest.mark.parametrize("half_life", [0, -5])
def test_recovery_needs_a_positive_half_life(half_life):
    with pytest.raises(ValueError, match=r"^recovery needs a positive half-life and a clock$"):
        ReputationBook(recovery_half_life_ms=half_life, clock_ms=lambda: 0)


def test_a_one_millisecond_half_life_is_allowed():
    book = ReputationBook(recovery_half_life_ms=1, clock_ms=lambda: 0)
    assert book.recovery_half_life_ms == 1


def test_a_score_equal_to_the_threshold_is_not_deprioritised():
    book = ReputationBook(gamma=0.5, threshold=0.5)
    assert book.record(PEER, False) == 0.5
    assert not book.deprioritised(PEER)
    book.record(PEER, False)
    assert book.deprioritised(PEER)


def test_with_a_clock_but_no_recovery_a_score_stays_put():
    now = [0]
    book = ReputationBook(clock_ms=lambda: now[0])
    book.record(PEER, False)
    now[0] = 10**9
    assert book.score(PEER) == pytest.approx(0.9)


def test_recovery_starts_from_the_exact_recorded_score():
    now = [1_000]
    book = ReputationBook(recovery_half_life_ms=1_000, clock_ms=lambda: now[0])
    recorded = book.record(PEER, False)
    assert book.score(PEER) == recorded  # no time has passed: nothing recovered
    now[0] = 500  # a clock stepped back recovers nothing, and costs nothing
    assert book.score(PEER) == recorded
    now[0] = 2_000
    assert book.score(PEER) == pytest.approx(1.0 - 0.1 * 0.5)


def test_peers_lists_every_recorded_peer_with_its_current_score():
    now = [0]
    book = ReputationBook(recovery_half_life_ms=100, clock_ms=lambda: now[0])
    book.record(PEER, False)
    book.record(OTHER, True)
    now[0] = 100
    assert book.peers() == {PEER: pytest.approx(0.95), OTHER: 1.0}


def test_the_file_records_format_gamma_scores_and_stamps(tmp_path):
    path = tmp_path / "rep.json"
    book = ReputationBook(path, gamma=0.8, clock_ms=lambda: 1234)
    book.record(PEER, False)
    book.save()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {
        "format": 1,
        "gamma": 0.8,
        "peers": {PEER.hex(): pytest.approx(0.8)},
        "stamps": {PEER.hex(): 1234},
    }


def test_a_file_that_is_not_a_map_is_refused(tmp_path):
    path = tmp_path / "rep.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"rep\.json: not a reputation file of format 1$"):
        ReputationBook(path)
    path.write_text(json.dumps({"format": 2, "peers": {}}))
    with pytest.raises(ValueError, match=r"not a reputation file of format 1$"):
        ReputationBook(path)


@pytest.mark.parametrize(
    ("key", "score"),
    [("01" * 31, 0.5), ("01" * 32, "0.5"), ("01" * 32, -0.01), ("01" * 32, 1.01)],
)
def test_a_bad_entry_is_refused(tmp_path, key, score):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps({"format": 1, "peers": {key: score}}))
    with pytest.raises(ValueError, match=r"bad entry"):
        ReputationBook(path)


@pytest.mark.parametrize("score", [0, 1, 0.0, 1.0])
def test_scores_at_the_bounds_load(tmp_path, score):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps({"format": 1, "peers": {PEER.hex(): score}}))
    assert ReputationBook(path).score(PEER) == score


def test_stamps_load_only_for_known_peers_with_valid_times(tmp_path):
    path = tmp_path / "rep.json"
    peers = {PEER.hex(): 0.5, OTHER.hex(): 0.5}
    stamps = {PEER.hex(): 0, OTHER.hex(): -1, ("03" * 32): 5}
    path.write_text(json.dumps({"format": 1, "peers": peers, "stamps": stamps}))
    now = [1_000]
    book = ReputationBook(path, recovery_half_life_ms=1_000, clock_ms=lambda: now[0])
    # PEER's stamp (0) is valid: it has recovered for one half-life since.
    assert book.score(PEER) == pytest.approx(0.75)
    # OTHER's stamp is refused: without one a score does not recover.
    assert book.score(OTHER) == 0.5
    assert set(book.peers()) == {PEER, OTHER}


def test_stamps_need_integers(tmp_path):
    path = tmp_path / "rep.json"
    data = {"format": 1, "peers": {PEER.hex(): 0.5}, "stamps": {PEER.hex(): 10.0}}
    path.write_text(json.dumps(data))
    book = ReputationBook(path, recovery_half_life_ms=1, clock_ms=lambda: 10**6)
    assert book.score(PEER) == 0.5


def test_save_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "rep.json"
    book = ReputationBook(path)
    book.record(PEER, False)
    book.save()
    assert ReputationBook(path).score(PEER) == pytest.approx(0.9)


def test_an_in_memory_book_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ReputationBook().save()
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path, monkeypatch):
    path = tmp_path / "rep.json"
    renamed = []
    real = os.replace

    def replace(src, dst):
        renamed.append((os.path.dirname(src), os.path.basename(src), dst))
        real(src, dst)

    monkeypatch.setattr(reputation.os, "replace", replace)
    atomic_write_json(path, {"a": 1})
    [(folder, name, dst)] = renamed
    assert folder == str(tmp_path) and dst == path
    assert name.startswith(".rep.json.") and name.endswith(".tmp")
    assert json.loads(path.read_text()) == {"a": 1}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "rep.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["rep.json"]
