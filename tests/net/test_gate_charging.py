"""Who the gate charges, for every row of docs/node.md's refusal table ("The gate: what is
accepted"), read from the docs themselves.

An audit once removed four charging rules of `BatchGate` together and every gate test
stayed green. Each case here feeds the gate one envelope that provokes exactly one reason
and checks (a) the verdict and reason, (b) whose reputation the gate charged, the sender's
and the forwarder's, before and after, and (c) whether the batch was stored. The expected
charges are derived from the table's "charged to" column, and the set of reasons tested
must equal the set in the table, so the docs and these tests cannot drift apart.

The rules these tests guard (docs/node.md, fai_net/admission/gate.py):
- R1: a decode failure after the signature verified is charged to the sender;
- R2: a decode failure is charged to the forwarder (before the signature verified the
  claimed sender could be anyone, so only the relay pays);
- R3: equivocation is charged to the sender;
- R4: a batch of a domain the node does not subscribe to is ignored: nobody charged,
  nothing stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import numpy as np
import pytest

from fai_core import dagcbor, wire
from fai_core.errors import WireError
from fai_core.refusals import Ignore, Refusal, Reject
from fai_core.reputation import ReputationBook
from fai_net.admission import gate as gate_module
from fai_net.admission.budgets import BudgetPolicy, Rate, ReceiveBudget
from fai_net.admission.gate import BatchGate, GatePolicy, GateResult, Verdict
from fai_net.admission.membership import OpenMembership, RegistryMembership
from fai_net.admission.store import BatchStore
from tests.support import net
from tests.support import wire as wiresupport

DOC = Path(__file__).resolve().parents[2] / "docs" / "node.md"
SENDER = net.key(1)
OTHER = net.key(2)
RELAY = net.key(50).public_key
NOW = net.T0 + 1_000
ENUMS: dict[str, type] = {"Reject": Reject, "Refusal": Refusal, "Ignore": Ignore}

# --------------------------------------------------------------------------------------
# The table, parsed from docs/node.md
# --------------------------------------------------------------------------------------

#: What the "charged to" column says, reduced to a policy. A new wording must be added here
#: (the parse fails otherwise), so nobody can change the docs without deciding what it means.
DECODE_POLICY = "forwarder+sender-if-verified"
CHARGE_WORDINGS: tuple[tuple[str, str], ...] = (
    ("the forwarder, plus the sender once the signature has verified", DECODE_POLICY),
    ("the peer that sent it", "forwarder"),
    ("the relay", "forwarder"),
    ("sender", "sender"),
    ("nobody", "nobody"),
)


@dataclass(frozen=True)
class Row:
    enum: str  # "Reject", "Refusal" or "Ignore"
    reasons: tuple[str, ...]
    charged: str  # one of the policies of CHARGE_WORDINGS
    text: str  # the "charged to" cell, for messages


def _policy(cell: str) -> str:
    lowered = cell.strip().lower()
    for wording, policy in CHARGE_WORDINGS:
        if lowered == wording or lowered.startswith(wording + " "):
            return policy
    raise AssertionError(f"docs/node.md: unknown 'charged to' wording {cell!r}")


def gate_table() -> list[Row]:
    """The rows of the refusal table under "## The gate: what is accepted"."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The gate: what is accepted", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) > 2, "docs/node.md: the gate's refusal table is gone"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-1] == "charged to", header
    rows = []
    for line in lines[2:]:  # after the header and the |---| line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"docs/node.md: odd gate table row {line!r}"
        tokens = re.findall(r"`([^`]+)`", cells[1])
        enums = [t for t in tokens if t in ENUMS]
        assert len(enums) == 1, f"docs/node.md: row names no single enum: {line!r}"
        enum = ENUMS[enums[0]]
        values = {m.value for m in enum}
        named = [t for t in tokens if t not in ENUMS]
        unknown = [t for t in named if t not in values]
        assert not unknown, f"docs/node.md: {unknown} are no {enum.__name__} values"
        every = re.search(
            rf"every `{enum.__name__}` value(?: except ((?:`[^`]+`(?:, | and )?)+))?", cells[1]
        )
        excepted = set(re.findall(r"`([^`]+)`", every.group(1) or "")) if every else set()
        reasons = tuple(values - excepted) if every else tuple(named)
        rows.append(Row(enum.__name__, tuple(sorted(reasons)), _policy(cells[2]), cells[2]))
    return rows


TABLE = gate_table()
#: (enum, reason) -> the row it is in. `stale` is both a Reject and a Refusal value.
TABLE_REASONS: dict[tuple[str, str], Row] = {
    (row.enum, reason): row for row in TABLE for reason in row.reasons
}

# --------------------------------------------------------------------------------------
# The gate, with a reputation book that logs every charge
# --------------------------------------------------------------------------------------


class LoggingBook(ReputationBook):
    """The node's book, logging every `record` call the gate makes: (peer, passed)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[bytes, bool]] = []

    def record(self, peer: bytes, passed: bool) -> float:
        self.log.append((peer, passed))
        return super().record(peer, passed)


@dataclass
class Harness:
    gate: BatchGate
    book: LoggingBook
    store: BatchStore


@pytest.fixture
def harness(tmp_path):
    store = BatchStore.open(tmp_path / "store")
    book = LoggingBook()
    policy = GatePolicy("test-model", net.DIM, group=4)
    g = BatchGate(store, OpenMembership(), book, policy)
    g.domains = {"coding"}
    yield Harness(g, book, store)
    store.close()


# --------------------------------------------------------------------------------------
# One scenario per reason
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What to feed the gate. `setup` prepares the gate and returns the admit arguments
    (the envelope and keywords); `verified` says whether the sender's signature verifies
    before the refusal (decode failures only: it decides whether the sender is charged)."""

    setup: Callable[[Harness, pytest.MonkeyPatch], tuple[bytes, dict]]
    verified: bool = False
    #: The batch whose storage (c) is checked, when there is one.
    cid: Callable[[bytes], bytes | None] = lambda envelope: None


GOSSIP = {"origin": "gossip", "topic_domain": "coding", "forwarder": RELAY}


def _gossip(envelope: bytes) -> tuple[bytes, dict]:
    return envelope, dict(GOSSIP)


def _resigned(signed: wire.SignedBatch | None = None, *, key=SENDER, **changes) -> bytes:
    """The batch map of `signed` with fields replaced, validly signed by `key` again."""
    fields = wiresupport.fields_of(signed or net.batch(1, key=SENDER))
    fields.update(changes)
    return wiresupport.resign(fields, key=key)


def _cid_of(envelope: bytes) -> bytes | None:
    try:
        return dagcbor.cid_of(dagcbor.decode(envelope)["batch"])
    except (WireError, KeyError, TypeError):
        return None


def _decode_case(make: Callable[[], bytes], *, verified: bool) -> Case:
    return Case(lambda h, mp: _gossip(make()), verified=verified, cid=_cid_of)


def _injected(reason: Reject) -> Case:
    """`cid_mismatch` needs an expected CID, which the gate never passes, and the wire's
    `stale`/`future` come from `wire.check_freshness`, which the gate does not call (it
    refuses freshness with `Refusal` values). No envelope provokes them at the gate, so the
    decoder is made to raise them, as they are raised: before any signature verified."""

    def setup(h: Harness, mp: pytest.MonkeyPatch) -> tuple[bytes, dict]:
        def decode(data, **kwargs):
            raise WireError(reason, "injected")

        mp.setattr(gate_module, "decode_envelope", decode)
        return _gossip(net.batch(1, key=SENDER).envelope)

    return Case(setup, verified=False, cid=_cid_of)


def _non_canonical() -> bytes:
    """A validly signed batch whose envelope map keys are not in DAG-CBOR order."""
    signed = net.batch(1, key=SENDER)
    env = dagcbor.decode(signed.envelope)
    data = cbor2.dumps({"batch": env["batch"], "sig": env["sig"]})
    assert data != signed.envelope
    return data


def _without_sig() -> bytes:
    """An envelope that lacks its `sig` field."""
    block = dagcbor.decode(net.batch(1, key=SENDER).envelope)["batch"]
    return dagcbor.encode({"batch": block})


def _bad_padding() -> bytes:
    """d = 20 leaves 4 unused sign bits per row; set them."""
    signed = wiresupport.encode(wiresupport.experiences(key=SENDER), key=SENDER)
    fields = wiresupport.fields_of(signed)
    fields["signs"] = b"\xff" * len(fields["signs"])
    return wiresupport.resign(fields, key=SENDER)


def _f32(value: float) -> bytes:
    return np.full(net.DIM, value, dtype="<f4").tobytes()


def _texts(*texts: str) -> bytes:
    return _resigned(
        net.batch(1, key=SENDER, texts=("one", "two")[: len(texts)]), texts=list(texts)
    )


DECODE_CASES: dict[str, Case] = {
    # Before the signature verified: the claimed sender may be anyone; only the relay pays.
    "oversize": _decode_case(lambda: b"\x00" * (wire.MAX_ENVELOPE_BYTES + 1), verified=False),
    "malformed_cbor": _decode_case(lambda: b"\xff\x00garbage", verified=False),
    "non_canonical": _decode_case(_non_canonical, verified=False),
    "schema": _decode_case(_without_sig, verified=False),
    "unknown_version": _decode_case(lambda: _resigned(version=2), verified=False),
    "cid_mismatch": _injected(Reject.CID_MISMATCH),
    "bad_key": _decode_case(lambda: _resigned(sender=SENDER.public_key[:31]), verified=False),
    "bad_signature": _decode_case(lambda: _resigned(key=OTHER), verified=False),
    "stale": _injected(Reject.STALE),
    "future": _injected(Reject.FUTURE),
    # After the signature verified: the content is the sender's doing; it pays as well.
    "too_many_experiences": _decode_case(
        lambda: _resigned(texts=[f"t{i}" for i in range(wire.MAX_EXPERIENCES + 1)]),
        verified=True,
    ),
    "bad_dimension": _decode_case(lambda: _resigned(dim=0), verified=True),
    "shape_mismatch": _decode_case(lambda: _resigned(baseline=b"\x00" * 4), verified=True),
    "non_finite": _decode_case(lambda: _resigned(baseline=_f32(np.nan)), verified=True),
    "out_of_range": _decode_case(lambda: _resigned(baseline=_f32(1e30)), verified=True),
    "bad_padding": _decode_case(_bad_padding, verified=True),
    "text_too_long": _decode_case(lambda: _texts(" ".join(["word"] * 40)), verified=True),
    "bad_text": _decode_case(lambda: _texts("cafe\u0301 au lait"), verified=True),
    "bad_domain": _decode_case(lambda: _resigned(domain="Not A Domain"), verified=True),
    "bad_model": _decode_case(lambda: _resigned(model="bad model!"), verified=True),
    "duplicate_experience": _decode_case(lambda: _texts("same text", "same text"), verified=True),
}


def _case(setup: Callable[[Harness, pytest.MonkeyPatch], tuple[bytes, dict]]) -> Case:
    return Case(setup, cid=_cid_of)


def _unrequested(h, mp):
    asked = net.batch(2, key=SENDER)
    pushed = net.batch(1, key=SENDER)
    kw = {"origin": "repair", "forwarder": RELAY, "wanted": {asked.cid}}
    return pushed.envelope, kw


def _duplicate(h, mp):
    b = net.batch(1, key=SENDER)
    assert h.gate.admit(b.envelope, NOW, **GOSSIP).verdict is Verdict.ACCEPT
    return _gossip(b.envelope)


def _topic_mismatch(h, mp):
    h.gate.domains = {"coding", "writing"}
    return _gossip(net.batch(1, key=SENDER, domain="writing").envelope)


def _unsubscribed(h, mp):
    b = net.batch(1, key=SENDER, domain="writing")
    return b.envelope, {"origin": "repair", "forwarder": RELAY, "wanted": {b.cid}}


def _wrong_model(h, mp):
    h.gate.policy.model_id = "another-model"
    return _gossip(net.batch(1, key=SENDER).envelope)


def _stale(h, mp):
    return _gossip(net.batch(1, key=SENDER, timestamp_ms=NOW - 301_000).envelope)


def _future(h, mp):
    return _gossip(net.batch(1, key=SENDER, timestamp_ms=NOW + 301_000).envelope)


class _NoChain:
    chain_id, address = 31337, "0x" + "11" * 20

    def __getattr__(self, name):
        raise AssertionError(f"check() touched the chain: {name}")


def _registry(h: Harness, *, live: bool) -> None:
    m = RegistryMembership(_NoChain())
    if live:
        m._live = {SENDER.public_key: type("P", (), {"operator": "0x" + "22" * 20})()}
    h.gate.membership = m


def _not_member(h, mp):
    _registry(h, live=False)
    return _gossip(net.batch(1, key=SENDER).envelope)


def _no_operator_sig(h, mp):
    _registry(h, live=True)
    return _gossip(net.batch(1, key=SENDER).envelope)


def _bad_operator_sig(h, mp):
    _registry(h, live=True)
    signed = net.batch(1, key=SENDER)
    env = dagcbor.decode(signed.envelope)
    forged = bytes(np.arange(65, dtype=np.uint8))
    return _gossip(wiresupport.envelope_bytes(env["batch"], env["sig"], forged))


def _equivocation(h, mp):
    first = net.batch(3, key=SENDER)
    assert h.gate.admit(first.envelope, NOW, **GOSSIP).verdict is Verdict.ACCEPT
    return _gossip(net.batch(3, key=SENDER, salt=1).envelope)


def _old_seq(h, mp):
    newest = net.batch(10_000, key=SENDER, timestamp_ms=NOW)
    assert h.gate.admit(newest.envelope, NOW, **GOSSIP).verdict is Verdict.ACCEPT
    return _gossip(net.batch(5, key=SENDER, timestamp_ms=NOW).envelope)


def _low_reputation(h, mp):
    for _ in range(12):
        h.book.record(SENDER.public_key, passed=False)
    assert h.book.deprioritised(SENDER.public_key)
    return _gossip(net.batch(1, key=SENDER).envelope)


def _budgeted(policy: BudgetPolicy):
    def setup(h, mp):
        budget = ReceiveBudget(policy, forwarders=True)
        # Earlier traffic (two rows from this sender via this relay) emptied the bucket.
        assert budget.admit(SENDER.public_key, RELAY, 2, 100, now_s=0.0) is None
        h.gate.admission = lambda signed, fwd, origin, size: budget.admit(
            signed.batch.sender, fwd, len(signed.batch), size, now_s=0.0
        )
        return _gossip(net.batch(1, key=SENDER).envelope)

    return setup


def _busy(h, mp):
    h.gate.admission = lambda signed, fwd, origin, size: Refusal.BUSY
    return _gossip(net.batch(1, key=SENDER).envelope)


def _internal(h, mp):
    class Broken(OpenMembership):
        def check(self, signed):
            raise ConnectionError("rpc down")

    h.gate.membership = Broken()
    return _gossip(net.batch(1, key=SENDER).envelope)


TINY = Rate(per_s=1.0, burst=2.0)  # room for one two-row batch

GATE_CASES: dict[tuple[str, str], Case] = {
    ("Refusal", "unrequested"): _case(_unrequested),
    ("Ignore", "duplicate"): _case(_duplicate),
    ("Refusal", "topic_mismatch"): _case(_topic_mismatch),
    ("Ignore", "unsubscribed"): _case(_unsubscribed),
    ("Refusal", "wrong_model"): _case(_wrong_model),
    ("Refusal", "stale"): _case(_stale),
    ("Refusal", "future"): _case(_future),
    ("Refusal", "not_member"): _case(_not_member),
    ("Refusal", "no_operator_sig"): _case(_no_operator_sig),
    ("Refusal", "bad_operator_sig"): _case(_bad_operator_sig),
    ("Refusal", "equivocation"): _case(_equivocation),
    ("Refusal", "old_seq"): _case(_old_seq),
    ("Refusal", "low_reputation"): _case(_low_reputation),
    ("Refusal", "sender_budget"): _case(_budgeted(BudgetPolicy(sender_rows=TINY))),
    ("Refusal", "forwarder_budget"): _case(_budgeted(BudgetPolicy(forwarder_rows=TINY))),
    ("Refusal", "busy"): _case(_busy),
    ("Refusal", "internal"): _case(_internal),
}

CASES: dict[tuple[str, str], Case] = {
    **{("Reject", reason): case for reason, case in DECODE_CASES.items()},
    **GATE_CASES,
}

#: Where the code does not do what docs/node.md says. Each is an xfail(strict=True): it
#: starts to pass (and so fails) the day code and docs agree.
DISCREPANCIES: dict[tuple[str, str], str] = {}


def _expected_charges(row: Row, case: Case) -> set[str]:
    if row.charged == DECODE_POLICY:
        return {"forwarder", "sender"} if case.verified else {"forwarder"}
    if row.charged == "nobody":
        return set()
    return {row.charged}


def _params():
    for key in sorted(TABLE_REASONS):
        marks = ()
        if key in DISCREPANCIES:
            marks = (pytest.mark.xfail(strict=True, reason=DISCREPANCIES[key]),)
        yield pytest.param(key, id=f"{key[0]}.{key[1]}", marks=marks)


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------


def test_every_documented_reason_has_a_case_and_every_case_is_documented():
    """Docs and tests cannot drift: a new row (or reason) in docs/node.md's gate table
    needs a case here, and a case for a reason the table no longer lists fails."""
    assert set(CASES) == set(TABLE_REASONS)
    assert set(DISCREPANCIES) <= set(TABLE_REASONS)


def test_the_table_lists_every_gate_reason_of_the_vocabulary():
    """Every Reject, Refusal and Ignore value the gate can return is in the table, except
    the two that are not the gate's: `refused_again` (the node's refusal cache, before the
    gate) and `round_error` (a merge round, not a batch)."""
    not_the_gates = {("Refusal", "refused_again"), ("Refusal", "round_error")}
    vocabulary = {(name, m.value) for name, enum in ENUMS.items() for m in enum}
    assert set(TABLE_REASONS) == vocabulary - not_the_gates


@pytest.mark.parametrize("key", list(_params()))
def test_gate_charges_whom_the_table_says(key, harness, monkeypatch):
    """One documented refusal reason: its verdict, whom it charged (sender, forwarder, both
    or nobody, exactly as docs/node.md says) and that the batch was not stored.

    Guards R1 (Reject rows with a verified signature: the sender pays), R2 (every Reject
    row: the forwarder pays), R3 (`equivocation`: the sender pays) and R4 (`unsubscribed`:
    ignored, nobody pays, not stored), and every "nobody" row against a new charge."""
    row, case = TABLE_REASONS[key], CASES.get(key)
    assert case is not None, f"no case for the documented reason {key}"
    envelope, kwargs = case.setup(harness, monkeypatch)
    cid = case.cid(envelope)
    stored_before = harness.store.count()
    was_stored = cid is not None and harness.store.has(cid)
    peers = {"sender": SENDER.public_key, "forwarder": kwargs["forwarder"]}
    before = {who: harness.book.score(peer) for who, peer in peers.items()}
    harness.book.log.clear()

    result: GateResult = harness.gate.admit(envelope, NOW, **kwargs)

    # (a) verdict and reason
    verdict = Verdict.IGNORE if key[0] == "Ignore" else Verdict.REJECT
    assert (result.verdict, result.reason) == (verdict, key[1])
    assert isinstance(result.reason, ENUMS[key[0]])
    # (b) whom it charged: each expected peer once, nobody else, and only failures
    expected = _expected_charges(row, case)
    charged = {who for who, peer in peers.items() for p, _ in harness.book.log if p == peer}
    assert charged == expected, f"{key}: charged {charged}, docs say {row.text!r}"
    assert sorted(p for p, _ in harness.book.log) == sorted(peers[w] for w in expected)
    assert all(not passed for _, passed in harness.book.log)
    for who, peer in peers.items():
        after = harness.book.score(peer)
        if who in expected:
            assert after < before[who], f"{who} not charged"
        else:
            assert after == before[who], f"{who} charged"
    # (c) stored? Never for a refusal or an ignore; a duplicate stays what it was.
    assert harness.store.count() == stored_before
    if cid is not None:
        assert harness.store.has(cid) == was_stored
        assert was_stored == (key == ("Ignore", "duplicate"))


def test_a_repeated_equivocation_is_charged_to_the_sender_again(harness):
    """R3: the second equivocation at one (sender, seq), refused without writing new
    evidence, still costs the sender (and not the relay) and stores nothing."""
    first = net.batch(3, key=SENDER)
    assert harness.gate.admit(first.envelope, NOW, **GOSSIP).verdict is Verdict.ACCEPT
    for salt in (1, 2):
        harness.book.log.clear()
        other = net.batch(3, key=SENDER, salt=salt)
        result = harness.gate.admit(other.envelope, NOW, **GOSSIP)
        assert (result.verdict, result.reason) == (Verdict.REJECT, "equivocation")
        assert harness.book.log == [(SENDER.public_key, False)]
        assert not harness.store.has(other.cid)
    assert harness.store.evidence_count() == 1
    assert harness.book.score(RELAY) == 1.0


def test_a_schema_failure_after_the_signature_charges_the_sender_too(harness):
    """R1 and R2: `schema` is raised before the signature (charged to the forwarder only,
    covered above) and after it (an unknown scale dtype): then the sender pays as well."""
    envelope = _resigned(scale_dtype="f64")
    result = harness.gate.admit(envelope, NOW, **GOSSIP)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "schema")
    assert sorted(harness.book.log) == sorted([(SENDER.public_key, False), (RELAY, False)])
    assert harness.store.count() == 0


def test_an_unsubscribed_gossip_batch_is_ignored_too(harness):
    """R4 on the gossip path: a batch on the topic of a domain the node left is ignored,
    not charged to anyone and not stored."""
    b = net.batch(1, key=SENDER, domain="writing")
    result = harness.gate.admit(
        b.envelope, NOW, origin="gossip", topic_domain="writing", forwarder=RELAY
    )
    assert (result.verdict, result.reason) == (Verdict.IGNORE, "unsubscribed")
    assert harness.book.log == []
    assert not harness.store.has(b.cid)


def test_the_cases_accept_once_the_provocation_is_gone(harness):
    """The builders are honest: the plain batch every gate case starts from is accepted,
    charging nobody, so each refusal above comes from its one provocation."""
    b = net.batch(1, key=SENDER)
    result = harness.gate.admit(b.envelope, NOW, **GOSSIP)
    assert result.verdict is Verdict.ACCEPT and harness.store.has(b.cid)
    assert harness.book.log == []
