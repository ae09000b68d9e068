"""ExperienceLibrary behaviour: storage, search, merge rules, capacity, baseline, stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.library import ExperienceLibrary, LibraryError, record_key
from tests.support.library import assert_baseline_matches_rows

DIM = 32
EMB = HashingEmbedder(DIM)
LOCAL = bytes(32)
PEER_A = b"\x0a" * 32
PEER_B = b"\x0b" * 32


def exp(text, quality=0.5, domain="coding", source=LOCAL, created_ms=1_000, iteration=0):
    return Experience(text, EMB.embed([text])[0], quality, domain, source, created_ms, iteration)


def texts(n, prefix="pattern"):
    return [f"{prefix} number {i} works" for i in range(n)]


def open_lib(path, **kw):
    kw.setdefault("embedder", EMB)
    return ExperienceLibrary.open(path, DIM, **kw)


def test_add_get_count_and_domains(tmp_path):
    with open_lib(tmp_path / "lib") as lib:
        batch = [exp(t) for t in texts(5)] + [exp("check exit codes", domain="ops")]
        result = lib.add_local(batch)
        assert (result.inserted, result.replaced, result.ignored) == (6, 0, 0)
        assert lib.count() == 6
        assert lib.count("coding") == 5
        assert lib.count("ops") == 1
        assert lib.count("absent") == 0
        entry = lib.get(batch[-1].id)
        assert entry.experience == batch[-1]
        assert entry.origin == "local"
        assert entry.received_from is None and entry.batch_cid is None
        assert lib.get(exp("never stored").id) is None
        assert lib.ids() == {e.id for e in batch}
        with pytest.raises(LibraryError):
            lib.count("Bad Domain'; drop")


def test_search_text_vector_and_domain(tmp_path):
    with open_lib(tmp_path / "lib") as lib:
        lib.add_local([exp(t) for t in texts(20)])
        lib.add_local([exp("retry with backoff after timeouts", domain="ops")])
        hits = lib.search("retry with backoff after timeouts", k=3)
        assert hits[0].entry.experience.text == "retry with backoff after timeouts"
        assert hits[0].distance == pytest.approx(0.0, abs=1e-5)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        in_coding = lib.search("retry with backoff after timeouts", domain="coding", k=5)
        assert len(in_coding) == 5
        assert all(h.entry.experience.domain == "coding" for h in in_coding)
        target = exp("pattern number 7 works")
        assert lib.search(target.embedding, k=1)[0].entry.experience.id == target.id
        assert lib.search(target.embedding, domain="nowhere") == []


def test_search_errors(tmp_path):
    with ExperienceLibrary.open(tmp_path / "lib", DIM) as lib:
        assert lib.search(np.ones(DIM)) == []
        with pytest.raises(LibraryError, match="embedder"):
            lib.search("text needs an embedder")
        with pytest.raises(LibraryError):
            lib.search(np.ones(DIM + 1))
        with pytest.raises(LibraryError):
            lib.search(np.full(DIM, np.nan))
    with pytest.raises(LibraryError):
        ExperienceLibrary.open(tmp_path / "lib2", DIM, embedder=HashingEmbedder(DIM * 2))


def test_dimension_is_fixed_per_library(tmp_path):
    with open_lib(tmp_path / "lib") as lib, pytest.raises(LibraryError):
        lib.add_local([Experience("x y", np.ones(DIM + 1), 0.5, "coding", LOCAL, 1)])
    with pytest.raises(LibraryError):
        ExperienceLibrary.open(tmp_path / "lib", DIM * 2)


def test_merge_keeps_higher_quality_and_records_provenance(tmp_path):
    with open_lib(tmp_path / "lib") as lib:
        local = exp("pin the dependency", quality=0.4)
        lib.add_local([local])
        better = exp("pin the dependency", quality=0.9, source=PEER_A, created_ms=5)
        worse = exp("pin the dependency", quality=0.1, source=PEER_B)
        r = lib.merge([worse], received_from=PEER_B, batch_cid=b"\x01batch-b")
        assert (r.inserted, r.replaced, r.ignored) == (0, 0, 1)
        assert lib.get(local.id).experience == local
        r = lib.merge([better], received_from=PEER_B, batch_cid=b"\x01batch-a")
        assert (r.inserted, r.replaced, r.ignored) == (0, 1, 0)
        entry = lib.get(local.id)
        assert entry.experience == better
        assert (entry.origin, entry.received_from, entry.batch_cid) == (
            "remote",
            PEER_B,
            b"\x01batch-a",
        )
        assert lib.count() == 1
        assert_baseline_matches_rows(lib)
        with pytest.raises(LibraryError):
            lib.merge([better], received_from=b"short")


def test_ties_break_on_the_record_not_on_arrival(tmp_path):
    a = exp("read the traceback", quality=0.5, source=PEER_A)
    b = exp("read the traceback", quality=0.5, source=PEER_B)
    winner = max([a, b], key=record_key)
    for order, path in (([a, b], "ab"), ([b, a], "ba")):
        with open_lib(tmp_path / path) as lib:
            for e in order:
                lib.merge([e], received_from=PEER_A)
            assert lib.get(a.id).experience == winner
    # Within one batch too.
    with open_lib(tmp_path / "one") as lib:
        r = lib.merge([b, a, b], received_from=PEER_A)
        assert (r.inserted, r.ignored) == (1, 2)
        assert lib.get(a.id).experience == winner


def test_replay_is_a_no_op_without_a_commit(tmp_path):
    with open_lib(tmp_path / "lib") as lib:
        batch = [exp(t, source=PEER_A) for t in texts(4)]
        lib.merge(batch, received_from=PEER_A, batch_cid=b"\x01first")
        version = lib.version
        r = lib.merge(batch, received_from=PEER_B, batch_cid=b"\x01second")
        assert (r.inserted, r.replaced, r.ignored) == (0, 0, 4)
        assert lib.version == version
        assert lib.get(batch[0].id).received_from == PEER_A  # first copy's provenance stays


def test_capacity_evicts_lowest_quality_then_id(tmp_path):
    with open_lib(tmp_path / "lib", capacity=4) as lib:
        qualities = [0.5, 0.2, 0.9, 0.2, 0.7, 0.3]
        batch = [exp(t, quality=q) for t, q in zip(texts(6), qualities, strict=True)]
        r = lib.add_local(batch)
        expected_evicted = sorted([batch[1], batch[3]], key=lambda e: (e.quality, e.id))
        assert set(r.evicted) == {e.id for e in expected_evicted}
        assert lib.ids() == {e.id for e in batch} - set(r.evicted)
        assert lib.count() == 4
        # A newcomer below the floor is dropped at once; one above it evicts the floor.
        r = lib.add_local([exp("tiny value", quality=0.1)])
        assert r.inserted == 0 and r.evicted == (exp("tiny value").id,)
        r = lib.add_local([exp("great value", quality=0.95)])
        assert r.inserted == 1 and r.evicted == (batch[5].id,)
        # Raising a stored row's quality through a merge can save it from eviction.
        r = lib.merge([exp(texts(6)[0], quality=0.99, source=PEER_A)], received_from=PEER_A)
        assert r.replaced == 1 and r.evicted == ()
        assert_baseline_matches_rows(lib)
    # Lowering the capacity on reopen trims by the same rule.
    with open_lib(tmp_path / "lib", capacity=2) as lib:
        qualities = sorted(e.quality for e in lib.experiences())
        assert qualities == [0.95, 0.99]
        assert_baseline_matches_rows(lib)


def test_capacity_tie_on_quality_evicts_smaller_id(tmp_path):
    batch = [exp(t, quality=0.5) for t in texts(5)]
    with open_lib(tmp_path / "lib", capacity=3) as lib:
        r = lib.add_local(batch)
        assert list(r.evicted) == sorted(e.id for e in batch)[:2]


def test_baseline_across_merges_evictions_and_reopen(tmp_path):
    path = tmp_path / "lib"
    rng = np.random.default_rng(1)
    with open_lib(path, capacity=30) as lib:
        assert lib.baseline() is None
        for round_ in range(4):
            batch = [
                exp(t, quality=float(rng.uniform(0.05, 0.95)), source=PEER_A)
                for t in texts(15, prefix=f"r{round_ % 3}")
            ]
            lib.merge(batch, received_from=PEER_A)
            assert_baseline_matches_rows(lib)
        before = lib.baseline().copy()
    with open_lib(path, capacity=30) as lib:
        np.testing.assert_array_equal(lib.baseline(), before)  # persisted, not rescanned
        assert_baseline_matches_rows(lib)


def test_state_lagging_the_table_is_rebuilt(tmp_path):
    path = tmp_path / "lib"
    with open_lib(path) as lib:
        lib.add_local([exp(t) for t in texts(3)])
        stale = (path / "state.json").read_text()
        lib.add_local([exp(t) for t in texts(3, prefix="more")])
    # As if killed after the second commit but before its state write.
    (path / "state.json").write_text(stale)
    with open_lib(path) as lib:
        assert lib.count() == 6
        assert_baseline_matches_rows(lib)
    (path / "state.json").write_text("{not json")
    with open_lib(path) as lib:
        assert lib.count() == 6
        assert_baseline_matches_rows(lib)
    assert json.loads((path / "state.json").read_text())["count"] == 6


def test_one_writer_at_a_time(tmp_path):
    lib = open_lib(tmp_path / "lib")
    with pytest.raises(LibraryError, match="another writer"):
        open_lib(tmp_path / "lib")
    lib.close()
    with pytest.raises(LibraryError, match="closed"):
        lib.count()
    open_lib(tmp_path / "lib").close()


def test_stats_coverage_quality_staleness(tmp_path):
    day = 86_400_000
    now = 100 * day
    with open_lib(tmp_path / "lib") as lib:
        lib.add_local(
            [
                exp("a b", quality=0.2, created_ms=now - 1 * day),
                exp("c d", quality=0.4, created_ms=now - 10 * day),
                exp("e f", quality=0.6, created_ms=now - 40 * day, domain="ops"),
            ]
        )
        lib.merge([exp("g h", quality=0.8, created_ms=now - 90 * day)], received_from=PEER_A)
        s = lib.stats(now_ms=now, stale_after_ms=30 * day)
    assert s["count"] == 4
    assert s["origins"] == {"local": 3, "remote": 1}
    assert s["domains"]["coding"]["count"] == 3
    assert s["domains"]["ops"] == {
        "count": 1,
        "mean_quality": pytest.approx(0.6),
        "newest_age_ms": 40 * day,
    }
    assert s["quality"]["mean"] == pytest.approx(0.5)
    assert s["quality"]["p50"] == pytest.approx(0.5)
    assert s["quality"]["min"] == pytest.approx(0.2) and s["quality"]["max"] == pytest.approx(0.8)
    assert s["staleness"]["newest_age_ms"] == day
    assert s["staleness"]["oldest_age_ms"] == 90 * day
    assert s["staleness"]["stale_fraction"] == pytest.approx(0.5)
    json.dumps(s)  # plain JSON values


def test_stats_of_empty_library(tmp_path):
    with open_lib(tmp_path / "lib") as lib:
        s = lib.stats()
    assert s["count"] == 0 and s["quality"] is None and s["domains"] == {}


def _random_experiences(n, seed, prefix):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        Experience(f"{prefix} {i}", vecs[i], float(rng.uniform(0.05, 0.95)), "coding", LOCAL, i)
        for i in range(n)
    ]


def test_ann_index_and_unindexed_rows_are_searched(tmp_path):
    with open_lib(tmp_path / "lib", index_threshold=256, maintain_every=1000) as lib:
        indexed = _random_experiences(600, seed=2, prefix="indexed")
        lib.add_local(indexed)
        report = lib.maintain()
        assert report["vector_index"] == "trained"
        assert lib.stats()["table"]["indexed_rows"] == 600
        fresh = _random_experiences(50, seed=3, prefix="fresh")
        lib.add_local(fresh)  # not yet folded into the index
        for e in fresh[:10] + indexed[:10]:
            hit = lib.search(e.embedding, k=1)[0]
            assert hit.entry.experience.id == e.id
            assert hit.distance == pytest.approx(0.0, abs=1e-3)
        lib.maintain()
        assert lib.search(fresh[0].embedding, k=1)[0].entry.experience.id == fresh[0].id
        assert_baseline_matches_rows(lib)


def test_periodic_maintenance_compacts_fragments(tmp_path):
    with open_lib(tmp_path / "lib", maintain_every=5) as lib:
        for i in range(4):
            lib.add_local([exp(t) for t in texts(3, prefix=f"b{i}")])
        assert lib.stats()["table"]["fragments"] == 4
        lib.add_local([exp(t) for t in texts(3, prefix="b4")])  # fifth commit: maintenance
        assert lib.stats()["table"]["fragments"] == 1
        assert lib.count() == 15
        assert lib.search("b4 number 1 works", k=1)[0].entry.experience.text == "b4 number 1 works"


def test_known_ids_are_found_after_reopen_and_across_writes(tmp_path):
    """Writes skip the id lookup for ids never stored; ids that were stored must not."""
    path = tmp_path / "lib"
    batch = [exp(t, quality=0.3) for t in texts(8)]
    with open_lib(path) as lib:
        lib.add_local(batch[:4])
        lib.add_local(batch[2:])  # half known (in-memory filter), half new
        assert lib.count() == 8
    with open_lib(path) as lib:  # filter rebuilt from the table
        r = lib.merge([exp(t, quality=0.6, source=PEER_A) for t in texts(8)], received_from=PEER_A)
        assert (r.inserted, r.replaced) == (0, 8)
        assert lib.count() == 8
        assert_baseline_matches_rows(lib)


def test_id_filter_keeps_every_added_id(monkeypatch):
    from fai_core.library import _IdFilter

    monkeypatch.setattr(_IdFilter, "_MERGE_AT", 4)  # exercise the merge into the sorted base
    ids = [exp(t).id for t in texts(10)]
    f = _IdFilter([ids[0].hex()])
    f.add(ids[1:9])
    assert f.maybe(ids) == ids[:9]
    assert _IdFilter([]).maybe(ids) == []


def test_indexed_search_returns_whole_entries_filtered_and_refined(tmp_path, capfd):
    with open_lib(tmp_path / "lib", index_threshold=256, refine_factor=2) as lib:
        mine = _random_experiences(300, seed=5, prefix="mine")
        lib.add_local(mine)
        theirs = _random_experiences(300, seed=6, prefix="theirs")
        theirs = [
            Experience(e.text, e.embedding, e.quality, "ops", e.source, e.created_ms, 3)
            for e in theirs
        ]
        lib.merge(theirs, received_from=PEER_A, batch_cid=b"\x01batch")
        assert lib.maintain()["vector_index"] == "trained"
        for e in mine[:5] + theirs[:5]:
            hit = lib.search(e.embedding, k=3)[0]
            assert hit.entry == lib.get(e.id)  # every column, provenance included
            assert record_key(hit.entry.experience) == record_key(e)
            assert hit.entry.experience.id == e.id
        hits = lib.search(mine[0].embedding, domain="ops", k=4)
        assert len(hits) == 4
        assert all(h.entry.experience.domain == "ops" for h in hits)
        assert all(h.entry.received_from == PEER_A for h in hits)
    assert "_distance" not in capfd.readouterr().err  # no per-query Lance warning


def test_indexed_search_reports_exact_cosine_distances(tmp_path):
    """Recall cuts on the distance: it must mean 1 - cos whether or not a row is indexed
    (LanceDB's IVF_SQ alone reported twice that for indexed rows)."""
    with open_lib(tmp_path / "lib", index_threshold=256) as lib:
        rows = _random_experiences(400, seed=11, prefix="idx")
        lib.add_local(rows)
        assert lib.maintain()["vector_index"] == "trained"
        by_id = {e.id: e for e in rows}
        for e in rows[:10]:
            for hit in lib.search(e.embedding, k=5):
                other = by_id[hit.entry.experience.id].embedding
                cos = float(
                    np.dot(e.embedding, other)
                    / (np.linalg.norm(e.embedding) * np.linalg.norm(other))
                )
                assert hit.distance == pytest.approx(1.0 - cos, abs=2e-3)
