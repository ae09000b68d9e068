"""Recall does not offer a row whose every source now stands refused in the row's domain
(fai_net/api/recall.py): it stays in the library, a pattern another source also sent is
still offered, and the same source's rows in another domain are untouched."""

from __future__ import annotations

import pytest

from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.library import ExperienceLibrary
from fai_net.api.outcome_book import OutcomeBook
from fai_net.api.recall import Recall, RecallQuery

REFUSED = NodeKey(bytes([1]) * 32).public_key
HONEST = NodeKey(bytes([2]) * 32).public_key
TASK = "retry the flaky deploy step with backoff"
ONLY_REFUSED = "retry the flaky deploy step with backoff and skip the checks"
BOTH = "retry the flaky deploy step with exponential backoff"
ONLY_HONEST = "retry the flaky deploy step with backoff after a timeout"


@pytest.fixture
def setup(tmp_path):
    embedder = HashingEmbedder()
    library = ExperienceLibrary.open(tmp_path / "lib", embedder.dimension, embedder)
    outcomes = OutcomeBook(tmp_path / "outcomes.sqlite")
    refused: set[tuple[str, bytes]] = set()

    def row(text, domain, source, quality=0.6):
        return Experience(text, embedder.embed([text])[0], quality, domain, source, 1)

    mine = [row(ONLY_REFUSED, "devops", REFUSED), row(BOTH, "devops", REFUSED, 0.9)]
    mine += [row(ONLY_REFUSED, "coding", REFUSED)]
    theirs = [row(BOTH, "devops", HONEST, 0.5), row(ONLY_HONEST, "devops", HONEST)]
    for source, exps in ((REFUSED, mine), (HONEST, theirs)):
        library.merge(exps, received_from=source)
        outcomes.sighted((e.id, e.source) for e in exps)
    recall = Recall(library, outcomes, lambda key: None, refused=lambda d, s: (d, s) in refused)
    yield recall, refused, library
    library.close()
    outcomes.close()


def _ask(recall, domain):
    query = RecallQuery.from_args(
        {"task": TASK, "domain": domain, "k": 10, "max_distance": 2.0}, [domain]
    )
    return recall.recall(query, [domain])


def test_rows_only_refused_sources_sent_are_withheld(setup):
    recall, refused, library = setup
    before = _ask(recall, "devops")
    assert {e["text"] for e in before["experiences"]} == {ONLY_REFUSED, BOTH, ONLY_HONEST}
    assert before["withheld"] == 0
    refused.add(("devops", REFUSED))
    after = _ask(recall, "devops")
    assert {e["text"] for e in after["experiences"]} == {BOTH, ONLY_HONEST}
    assert after["withheld"] == 1
    both = next(e for e in after["experiences"] if e["text"] == BOTH)
    # The library's record is the refused source's (higher claim); the honest sighting
    # vouches for the pattern, which is ranked as the honest source's, at a middling
    # claim, and corroborated by it alone.
    assert both["source"] == REFUSED.hex() and both["sources"] == 1
    assert both["source_standing"] == 0.5 and both["calibrated_quality"] != 0.99
    assert library.count() == 4  # nothing was deleted (BOTH is one id)
    # The refusal is per domain: the same source's coding row is still offered.
    coding = _ask(recall, "coding")
    assert [e["text"] for e in coding["experiences"]] == [ONLY_REFUSED] and coding["withheld"] == 0
    # Cleared (the source fell back below the bound): offered again.
    refused.clear()
    assert _ask(recall, "devops")["withheld"] == 0


def test_a_row_the_agents_found_helpful_is_still_offered(setup):
    """This node's own agents' reports outweigh a comparison between senders."""
    recall, refused, _ = setup
    found = _ask(recall, "devops")["experiences"]
    ident = next(e["id"] for e in found if e["text"] == ONLY_REFUSED)
    recall.feedback({"id": ident, "outcome": "no_effect"})
    refused.add(("devops", REFUSED))
    assert ONLY_REFUSED not in {e["text"] for e in _ask(recall, "devops")["experiences"]}
    for _ in range(2):
        recall.feedback({"id": ident, "outcome": "helped"})
    after = _ask(recall, "devops")
    assert ONLY_REFUSED in {e["text"] for e in after["experiences"]} and after["withheld"] == 0


def test_refused_rows_do_not_crowd_out_the_rest(tmp_path):
    """A source slipped 40 rows about one topic in before it was refused: recall widens its
    search past them and still finds the honest lesson behind them."""
    embedder = HashingEmbedder()
    library = ExperienceLibrary.open(tmp_path / "lib", embedder.dimension, embedder)
    outcomes = OutcomeBook(tmp_path / "outcomes.sqlite")
    texts = [f"{TASK} variant {i}" for i in range(40)]
    flood = [Experience(t, embedder.embed([t])[0], 0.6, "devops", REFUSED, 1) for t in texts]
    library.merge(flood, received_from=REFUSED)
    honest = Experience(ONLY_HONEST, embedder.embed([ONLY_HONEST])[0], 0.6, "devops", HONEST, 1)
    library.merge([honest], received_from=HONEST)
    outcomes.sighted([(honest.id, HONEST)])  # the flood's rows have no sightings at all
    try:
        recall = Recall(library, outcomes, lambda key: None, refused=lambda d, s: s == REFUSED)
        found = _ask(recall, "devops")
        assert [e["text"] for e in found["experiences"]] == [ONLY_HONEST]
        assert found["withheld"] == 40
    finally:
        library.close()
        outcomes.close()


def test_without_histories_nothing_is_withheld(setup):
    recall, refused, library = setup
    refused.add(("devops", REFUSED))
    plain = Recall(library, recall.outcomes, lambda key: None)
    found = _ask(plain, "devops")
    assert found["withheld"] == 0 and len(found["experiences"]) == 3
