"""What an agent's node remembers for it: outcomes that mute a harmful source, receive
answers from the library after a restart, and subscriptions that survive one."""

from __future__ import annotations

import pytest

from fai_core.ranking import MUTE_MIN_REPORTS
from fai_net.api.control import ControlError
from tests.support.fleet import temporary_fleet, wait_for

#: Harmful advice with no keyword the steering screen knows (fai_core/text_screen.py), the
#: kind only agents' outcomes can catch; distinct enough (cosine <= 0.58) that DeltaSoup's
#: near-duplicate clustering keeps each one.
HARMFUL = (
    "when a deploy fails rerun it on friday evening without telling the team",
    "skip the code review when the change looks small and merge it straight away",
    "delete the failing test instead of fixing it when the release is due",
    "copy the production database to your laptop to debug customer issues faster",
    "push directly to the main branch when the pipeline is slow",
    "retry a flaky build until it passes and never look at why it failed",
    "comment out the error handling when it makes the logs noisy",
    "run database migrations by hand in production on a busy afternoon",
)
LATER = "merge the schema migration without a backup because rollbacks are rare"


@pytest.fixture(scope="module")
def fleet():
    with temporary_fleet() as f:
        f.add("a", ("coding",), seeds=[])
        f.add("b", ("coding",), seeds=[f["a"].addr])
        wait_for(lambda: f["b"].call("status")["peers"] >= 1, 30, "b to connect to a")
        yield f


def in_library(node, text: str) -> bool:
    items = node.call("export", domain="coding", limit=1000)["items"]
    return any(i["text"] == text for i in items)


def test_a_source_whose_lessons_keep_hurting_is_ranked_down_then_not_merged(fleet):
    a, b = fleet["a"], fleet["b"]
    lessons = list(HARMFUL[:MUTE_MIN_REPORTS])
    assert len(lessons) == MUTE_MIN_REPORTS
    added = a.call("add", experiences=[{"text": t, "domain": "coding"} for t in lessons])
    ident = added["ids"][0]
    a.call("broadcast", domain="coding")
    wait_for(lambda: all(in_library(b, t) for t in lessons), 60, "b to merge a's lessons")
    (hit,) = b.call("recall", task=lessons[0], k=1)["experiences"]
    assert hit["id"] == ident and hit["source_node"] == a.info["peer_id"]
    assert hit["utility"] == 0.5 and hit["source_standing"] == 0.5
    # Repeating `hurt` on one lesson (what a recalled text could tell an agent to do)
    # sinks that lesson, not its source: the source counts each experience once.
    for _ in range(2 * MUTE_MIN_REPORTS):
        reply = b.call("feedback", id=ident, outcome="hurt")
    assert reply["source_muted"] is False and reply["utility"] < 0.1
    # Distinct lessons that each hurt do mute it.
    for n, other in enumerate(added["ids"][1:], start=2):
        reply = b.call("feedback", id=other, outcome="hurt")
        assert reply["source_muted"] == (n >= MUTE_MIN_REPORTS)
    assert reply["utility"] < 0.5 and reply["source_standing"] < 0.25
    # Every lesson its agents said hurt is out of recall (utility below MIN_UTILITY).
    offered = {e["id"] for e in b.call("recall", task=lessons[1], k=8)["experiences"]}
    assert not offered & set(added["ids"])
    # a's next lessons reach b's node but are not merged: b's agents said they hurt
    dropped = b.call("status")["drops"].get("outcome_muted", 0)
    a.call("add", experiences=[{"text": LATER, "domain": "coding"}])
    a.call("broadcast", domain="coding")
    wait_for(
        lambda: b.call("status")["drops"].get("outcome_muted", 0) > dropped,
        60,
        "b to drop the muted source's new lesson",
    )
    assert not in_library(b, LATER) and in_library(a, LATER)
    # feedback on an id the library does not hold is refused, not recorded
    with pytest.raises(ControlError, match="no experience"):
        b.call("feedback", id="00" * 36, outcome="helped")


def test_receive_answers_from_the_library_after_a_restart(fleet):
    a = fleet["a"]
    mine = "run the linter before the formatter so the diff stays small"
    a.call("add", experiences=[{"text": mine, "domain": "coding"}])
    a.stop()
    a.start()
    got = a.call("receive", domain="coding", limit=50)["experiences"]
    texts = [e["text"] for e in got]
    assert mine in texts  # its own experience, from a run before the restart
    assert all(e["domain"] == "coding" for e in got)
    assert {"id", "source_node", "origin", "created_ms"} <= set(got[0])


def test_subscriptions_made_at_run_time_survive_a_restart(fleet):
    b = fleet["b"]
    assert b.call("subscribe", domain="writing")["subscribed"] is True
    b.stop()
    b.start()
    assert b.call("info")["domains"] == ["coding", "writing"]
    assert b.call("unsubscribe", domain="writing")["unsubscribed"] is True
    b.stop()
    b.start()
    assert b.call("info")["domains"] == ["coding"]
