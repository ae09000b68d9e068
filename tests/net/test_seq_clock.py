"""The invariant of fai_net/node/seq_clock.py, as a property: whatever the node publishes and
however often its store is lost or rolled back, no seq is ever handed out twice while the
clock does not step back across a loss; and a clock behind the counter is caught."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fai_net.admission.store import BatchStore
from fai_net.node import seq_clock

T0 = 1_700_000_000_000

#: Steps: ("publish", ms forward), ("wipe", ms forward) or ("restore", ms forward).
steps = st.lists(
    st.tuples(st.sampled_from(["publish", "publish", "wipe", "restore"]), st.integers(0, 5)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(steps)
def test_no_seq_is_reused_across_losses_and_rollbacks(tmp_path_factory, plan):
    root = tmp_path_factory.mktemp("seq")
    stores = {"live": BatchStore.open(root / "live")}
    backups: list[int] = []  # counter values of older copies of the store
    now, signed = T0, []
    try:
        for action, forward in plan:
            now += forward
            store = stores["live"]
            if action == "publish":
                if not seq_clock.usable(store.next_seq(), now):
                    continue  # the node holds its outbox until the clock catches up
                signed.append(store.reserve_seq(seq_clock.floor(now)))
                backups.append(store.next_seq())
            else:
                store.close()
                fresh = BatchStore.open(root / f"s{len(signed)}-{forward}-{len(backups)}")
                if action == "restore" and backups:
                    fresh.ensure_seq_above(backups[len(backups) // 2] - 1)
                stores["live"] = fresh
                now += 1  # a loss takes at least a millisecond
    finally:
        stores["live"].close()
    assert len(signed) == len(set(signed))
    assert all(s >> seq_clock.SHIFT <= T0 + 6 * 41 for s in signed)


def test_a_clock_behind_the_counter_is_not_usable():
    seq = seq_clock.floor(T0) + 3
    assert seq_clock.usable(seq, T0)
    assert not seq_clock.usable(seq, T0 - 1)
    assert seq_clock.floor(T0 + 1) > seq
