"""Registry membership (fai_net/admission/membership.py) against a scripted chain.

The chain-backed tests (tests/registry/, with Anvil) are slow; these drive
`RegistryMembership` through a fake client that answers exactly what the module reads
(live peers, `SignerSet` logs, operator records, event logs), so `make mutate` can check
every rule in seconds (docs/mutation.md): who is a member, which operator signatures count,
how stake weights are clamped around the median, why a key was dropped, and which blocks
`changed()` and `refresh()` look at.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from eth_account import Account
from eth_utils import to_checksum_address

from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.refusals import Refusal
from fai_core.wire import encode_batch
from fai_net.admission.membership import (
    LIVENESS_ENDING_EVENTS,
    Dropped,
    OpenMembership,
    RegistryMembership,
)
from fai_net.registry import eip712
from fai_net.registry.client import LivePeer, OperatorInfo

EMB = HashingEmbedder(384)
NODE = NodeKey(bytes([7]) * 32)
OPERATOR = Account.from_key(bytes([0x11]) * 32)
HOT = Account.from_key(bytes([0x12]) * 32)
STRANGER = Account.from_key(bytes([0x13]) * 32)
KEY_A, KEY_B, KEY_C, KEY_D = (bytes([n]) * 32 for n in (0xA1, 0xB2, 0xC3, 0xD4))
NOW_S = 1_700_000_000


def peer(key: bytes, operator: str, stake: int, *addrs: str) -> LivePeer:
    return LivePeer(operator, key, tuple(addrs), NOW_S + 3600, stake)


def info(key: bytes, **changes) -> OperatorInfo:
    fields = dict(
        stake=100,
        unbonding=0,
        registered=True,
        jailed=False,
        list_index=0,
        ad_expiry=NOW_S + 3600,
        ad_nonce=1,
        ad_block=1,
        unbond_ready_at=0,
        fraud_cooldown_until=0,
        peer_key=key,
        multiaddrs_hash=bytes(32),
    )
    return OperatorInfo(**(fields | changes))


class Chain:
    """What RegistryMembership reads from a RegistryClient, scripted per test."""

    chain_id = 31337
    address = to_checksum_address("0x" + "5e" * 20)
    from_block = 3
    min_bond = 100

    def __init__(self):
        self.block = 10
        self.live: list[LivePeer] = []
        self.signer_logs: list[tuple[int, str, str]] = []  # (block, signer, operator)
        self.operators: dict[str, OperatorInfo | Exception] = {}
        self.event_logs: list = []
        self.scans: list[tuple[int, int]] = []
        self.log_queries: list[dict] = []
        self.operator_reads: list[tuple[str, int]] = []
        chain = self

        class Eth:
            @property
            def block_number(self):
                return chain.block

            def get_block(self, block):
                assert block == chain.block, "the timestamp of another block"
                return {"timestamp": NOW_S}

            def get_logs(self, query):
                chain.log_queries.append(query)
                return list(chain.event_logs)

        self.w3 = SimpleNamespace(eth=Eth())

        def signer_set_logs(from_block, to_block):
            self.scans.append((from_block, to_block))
            return [
                SimpleNamespace(args=SimpleNamespace(signer=s, operator=o))
                for b, s, o in self.signer_logs
                if from_block <= b <= to_block
            ]

        events = {name: SimpleNamespace(topic=f"topic-{name}") for name in LIVENESS_ENDING_EVENTS}
        events["SignerSet"] = SimpleNamespace(get_logs=signer_set_logs)
        self.contract = SimpleNamespace(events=SimpleNamespace(**events))

    def live_peers(self, block):
        assert block == self.block
        return list(self.live)

    def operator(self, operator, block):
        self.operator_reads.append((operator, block))
        found = self.operators[operator]
        if isinstance(found, Exception):
            raise found
        return found


def signed_batch(signer=None, chain=None, seq=1):
    vector = EMB.embed(["validate inputs at the boundary"])[0]
    stamp = time.time_ns() // 1_000_000
    exp = Experience.create("validate inputs", vector, 0.6, "coding", NODE.public_key, stamp)
    sign = None
    if signer is not None:
        sign = RegistryMembership(chain or Chain(), operator_account=signer).operator_signer()
    return encode_batch(
        [exp],
        key=NODE,
        seq=seq,
        timestamp_ms=stamp,
        model=EMB.model_id,
        baseline=vector,
        operator_signer=sign,
    )


@pytest.fixture
def chain():
    return Chain()


@pytest.fixture
def member(chain):
    chain.live = [peer(NODE.public_key, OPERATOR.address, 100, "/ip4/127.0.0.1/tcp/1")]
    m = RegistryMembership(chain)
    m.refresh()
    return m


def test_open_mode_admits_everyone_and_weighs_nobody():
    m = OpenMembership()
    assert m.mode == "open"
    assert m.check(signed_batch()) is None
    assert (m.changed(), m.is_dropped(KEY_A), m.stake_weight(KEY_A)) == (False, False, 1.0)
    assert (m.live_addresses(), m.dropped(), m.operator_of(KEY_A)) == ({}, {}, None)
    assert m.operator_signer() is None and m.refresh() is None


def test_refresh_reads_the_live_set(chain):
    chain.live = [
        peer(KEY_A, OPERATOR.address, 100, "/ip4/1.2.3.4/tcp/1", "/dns/a/tcp/2"),
        peer(KEY_B, HOT.address, 200),
    ]
    m = RegistryMembership(chain)
    assert not m.refreshed
    m.refresh()
    assert m.refreshed and m.mode == "registry"
    assert m.live_addresses() == {KEY_A: ("/ip4/1.2.3.4/tcp/1", "/dns/a/tcp/2"), KEY_B: ()}
    assert m.operator_of(KEY_A) == OPERATOR.address and m.operator_of(KEY_C) is None
    assert not m.is_dropped(KEY_A) and not m.is_dropped(KEY_C)
    assert m.dropped() == {}


def test_stake_weights_are_the_stake_over_the_median_clamped(chain):
    chain.live = [
        peer(KEY_A, "0xa", 100),
        peer(KEY_B, "0xb", 300),
        peer(KEY_C, "0xc", 400),
        peer(KEY_D, "0xd", 2000),
    ]
    m = RegistryMembership(chain)
    m.refresh()
    # Four stakes: the median is the upper middle one, 400.
    assert m.stake_weight(KEY_A) == 0.5  # 0.25, clamped
    assert m.stake_weight(KEY_B) == 0.75
    assert m.stake_weight(KEY_C) == 1.0
    assert m.stake_weight(KEY_D) == 4.0  # 5, clamped
    assert m.stake_weight(b"\x00" * 32) == 1.0  # not live: the plain budget


def test_the_clamp_bounds_are_inclusive(chain):
    chain.live = [peer(KEY_A, "0xa", 50), peer(KEY_B, "0xb", 100), peer(KEY_C, "0xc", 400)]
    m = RegistryMembership(chain)
    m.refresh()
    assert (m.stake_weight(KEY_A), m.stake_weight(KEY_C)) == (0.5, 4.0)


def test_a_median_of_one_is_still_a_median(chain):
    chain.live = [peer(KEY_A, "0xa", 1), peer(KEY_B, "0xb", 1), peer(KEY_C, "0xc", 3)]
    m = RegistryMembership(chain)
    m.refresh()
    assert (m.stake_weight(KEY_A), m.stake_weight(KEY_C)) == (1.0, 3.0)


def test_no_stake_no_weight(chain):
    chain.live = [peer(KEY_A, "0xa", 0)]
    m = RegistryMembership(chain)
    m.refresh()
    assert m.stake_weight(KEY_A) == 1.0
    empty = RegistryMembership(Chain())
    empty.refresh()
    assert empty.stake_weight(KEY_A) == 1.0


def test_signer_bindings_are_scanned_once_and_the_first_is_final(chain):
    chain.signer_logs = [
        (4, HOT.address.lower(), OPERATOR.address.lower()),
        (5, HOT.address, STRANGER.address),  # a later binding of the same signer: ignored
    ]
    m = RegistryMembership(chain)
    m.refresh()
    assert chain.scans == [(chain.from_block, 10)]
    assert m._signer_operator == {HOT.address: OPERATOR.address}
    m.refresh()  # no new block: nothing to scan
    assert chain.scans == [(3, 10)]
    chain.block = 12
    chain.signer_logs.append((11, HOT.address, STRANGER.address))
    m.refresh()
    assert chain.scans == [(3, 10), (11, 12)]
    assert m._signer_operator == {HOT.address: OPERATOR.address}


def test_the_first_scan_starts_at_the_registry_deployment(chain):
    chain.block = 2  # before the registry's first block: nothing to scan
    m = RegistryMembership(chain)
    m.refresh()
    assert chain.scans == []
    chain.block = 3
    m.refresh()
    assert chain.scans == [(3, 3)]


def test_a_batch_without_a_live_sender_or_operator_signature_is_refused(chain, member):
    assert member.check(signed_batch(OPERATOR, chain)) is None
    stranger = RegistryMembership(chain)  # refreshed never: nobody is live
    assert stranger.check(signed_batch(OPERATOR, chain)) is Refusal.NOT_MEMBER
    assert member.check(signed_batch()) is Refusal.NO_OPERATOR_SIG


def test_operator_signatures_count_from_the_operator_or_its_bound_signers(chain, member):
    assert member.check(signed_batch(HOT, chain)) is Refusal.BAD_OPERATOR_SIG
    member._signer_operator[HOT.address] = OPERATOR.address
    assert member.check(signed_batch(HOT, chain)) is None
    member._signer_operator[STRANGER.address] = HOT.address  # bound, to someone else
    assert member.check(signed_batch(STRANGER, chain)) is Refusal.BAD_OPERATOR_SIG


def test_a_signature_for_another_registry_or_chain_does_not_count(chain, member):
    other = Chain()
    other.chain_id = 1
    assert member.check(signed_batch(OPERATOR, other)) is Refusal.BAD_OPERATOR_SIG
    moved = Chain()
    moved.address = to_checksum_address("0x" + "6f" * 20)
    assert member.check(signed_batch(OPERATOR, moved)) is Refusal.BAD_OPERATOR_SIG


def test_junk_in_the_signature_is_a_bad_signature_not_a_crash(chain, member):
    good = signed_batch(OPERATOR, chain)
    junk = SimpleNamespace(batch=good.batch, operator_signature=b"\x00" * 65)
    assert member.check(junk) is Refusal.BAD_OPERATOR_SIG


def test_the_operator_signer_signs_our_headers_for_this_registry(chain):
    assert RegistryMembership(chain).operator_signer() is None
    sign = RegistryMembership(chain, operator_account=OPERATOR).operator_signer()
    header = signed_batch().batch.header
    signature = sign(header)
    recovered = eip712.recover_batch_header_signer(
        signature,
        chain.chain_id,
        chain.address,
        header.sender,
        header.seq,
        header.cid_digest,
        header.timestamp_ms,
    )
    assert recovered == OPERATOR.address


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (dict(jailed=True), "jailed: slashed for equivocation"),
        (dict(registered=False), "left the registry"),
        (dict(stake=99), "bonded stake below the minimum: slashed or unbonding"),
        (dict(ad_expiry=NOW_S), "advertisement expired"),
        (dict(peer_key=KEY_B), "its operator advertises another key"),
        (dict(stake=100, ad_expiry=NOW_S + 1), "advertisement no longer attributed to this key"),
    ],
)
def test_a_key_that_leaves_the_live_set_is_dropped_with_its_reason(chain, record, why):
    chain.live = [peer(KEY_A, OPERATOR.address, 100), peer(KEY_C, HOT.address, 100)]
    m = RegistryMembership(chain)
    m.refresh()
    chain.live = [peer(KEY_C, HOT.address, 100)]
    chain.operators[OPERATOR.address] = info(KEY_A, **record)
    chain.block = 11
    m.refresh()
    assert m.dropped() == {KEY_A: Dropped(OPERATOR.address, why)}
    assert m.is_dropped(KEY_A) and not m.is_dropped(KEY_C)
    assert chain.operator_reads == [(OPERATOR.address, 11)]


def test_a_dropped_key_is_explained_once_and_forgiven_when_live_again(chain):
    chain.live = [peer(KEY_A, OPERATOR.address, 100)]
    m = RegistryMembership(chain)
    m.refresh()
    chain.live = []
    chain.operators[OPERATOR.address] = RuntimeError("rpc down")
    m.refresh()
    first = m.dropped()
    assert first == {KEY_A: Dropped(OPERATOR.address, "reason unknown: rpc down")}
    chain.operators[OPERATOR.address] = info(KEY_A, jailed=True)
    m.refresh()
    assert m.dropped() == first  # kept as explained: no second chain read
    assert len(chain.operator_reads) == 1
    chain.live = [peer(KEY_A, OPERATOR.address, 100)]
    m.refresh()
    assert m.dropped() == {} and not m.is_dropped(KEY_A)


def test_a_key_without_a_known_operator_has_no_operator_reason(chain):
    assert RegistryMembership(chain)._why_not_live(None, KEY_A, 10) == "no operator"
    assert chain.operator_reads == []


def test_changed_looks_for_liveness_ending_events_since_the_last_look(chain):
    m = RegistryMembership(chain)
    m.refresh()  # scanned up to block 10
    assert not m.changed()  # block 10 <= scanned: nothing to look at
    assert chain.log_queries == []
    chain.block = 13
    assert not m.changed()
    assert chain.log_queries == [
        {
            "address": chain.address,
            "fromBlock": 11,
            "toBlock": 13,
            "topics": [[f"topic-{name}" for name in LIVENESS_ENDING_EVENTS]],
        }
    ]
    assert not m.changed()  # blocks 11-13 looked at already
    assert len(chain.log_queries) == 1
    chain.block = 15
    chain.event_logs = [{"event": "Slashed"}]
    assert m.changed()
    assert m.changed()  # not consumed: the refresh it prompts moves past these blocks
    assert [q["fromBlock"] for q in chain.log_queries] == [11, 14, 14]
    m.refresh()
    chain.block = 16
    assert m.changed() and chain.log_queries[-1]["fromBlock"] == 16
