"""Our DAG-CBOR subset against the independent `dag_cbor` implementation, and strict decoding.

`dag_cbor` (a pure-Python DAG-CBOR codec that shares no code with cbor2) is the oracle: it
must read our envelopes and batches, re-encode them to the very same bytes, and encode random
objects of our subset exactly as we do. The CID is recomputed with `multiformats`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import cbor2
import dag_cbor
import pytest
from dag_cbor.decoding.err import CBORDecodingError
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from fai_core import dagcbor, wire
from fai_core.errors import Reject, WireError
from tests.support.wire import encode, experiences, resign

# --------------------------------------------------------------------------------------------
# Agreement with the independent implementation


def _samples() -> list[bytes]:
    plain = encode()
    with_op = encode(
        experiences(d=100), group=30, scale_dtype="f16", operator_signer=lambda h: b"\x1b" * 65
    )
    single = encode(experiences(["x"], d=1), group=1)
    return [plain.envelope, with_op.envelope, single.envelope]


@pytest.mark.parametrize("envelope", _samples(), ids=["plain", "operator_sig+f16", "d=1"])
def test_independent_implementation_reads_our_envelope_and_batch(envelope: bytes) -> None:
    env = dag_cbor.decode(envelope)
    assert env == dagcbor.decode(envelope)
    assert dag_cbor.encode(env) == envelope
    block = env["batch"]
    batch = dag_cbor.decode(block)
    assert batch == dagcbor.decode(block)
    assert dag_cbor.encode(batch) == block
    assert set(batch) == set(wire.BATCH_FIELDS)
    cid = CID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256"))
    assert bytes(cid) == dagcbor.cid_of(block)
    assert str(cid) == dagcbor.cid_text(dagcbor.cid_of(block))
    assert bytes(cid) == wire.decode_envelope(envelope).cid


def test_cid_prefix_is_v1_dag_cbor_sha256() -> None:
    assert bytes([0x01, 0x71, 0x12, 0x20]) == dagcbor.CID_PREFIX
    assert dagcbor.CID_LEN == 36
    assert dagcbor.cid_of(b"") == dagcbor.CID_PREFIX + hashlib.sha256(b"").digest()


def _depth(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + max(map(_depth, obj), default=0)
    if isinstance(obj, dict):
        return 1 + max(map(_depth, obj.values()), default=0)
    return 0


UINT64 = st.integers(0, 2**64 - 1)
#: Integers near every head-width boundary (23/24, 255/256, 65535/65536, 2^32-1/2^32).
BOUNDARY_INTS = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
LEAVES = st.one_of(
    UINT64, BOUNDARY_INTS, st.binary(max_size=40), st.text(max_size=30), st.text("ab", max_size=3)
)
OBJECTS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
).filter(lambda obj: _depth(obj) <= dagcbor.MAX_DEPTH)


@given(OBJECTS)
@settings(max_examples=300, deadline=None)
def test_encode_matches_independent_implementation(obj: Any) -> None:
    ours = dagcbor.encode(obj)
    assert ours == dag_cbor.encode(obj)
    assert dag_cbor.decode(ours) == obj
    assert dagcbor.decode(ours) == obj


@given(st.dictionaries(st.text(max_size=6), UINT64, min_size=2, max_size=8))
@settings(max_examples=200, deadline=None)
def test_map_key_order_is_length_first_on_utf8_bytes(obj: dict[str, int]) -> None:
    """Non-ASCII keys: length-first ordering must use UTF-8 byte length, not code points."""
    assert dagcbor.encode(obj) == dag_cbor.encode(obj)


# --------------------------------------------------------------------------------------------
# A loose encoder that can produce every non-canonical form of the same data


def _head(major: int, n: int, width: int | None = None) -> bytes:
    """CBOR head; `width` None = shortest, else 1/2/4/8 extra bytes (must fit)."""
    if width is None:
        width = 0 if n < 24 else 1 if n < 256 else 2 if n < 65536 else 4 if n < 2**32 else 8
    if width == 0:
        return bytes([major << 5 | n])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + n.to_bytes(width, "big")


def _wider(n: int) -> int | None:
    """A head width longer than the shortest one for `n`, if any."""
    shortest = 0 if n < 24 else 1 if n < 256 else 2 if n < 65536 else 4 if n < 2**32 else 8
    return {0: 1, 1: 2, 2: 4, 4: 8}.get(shortest)


def _key_sort(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def defects_of(obj: Any) -> list[str]:
    if isinstance(obj, int):
        return ["wide"] if _wider(obj) else []
    size = len(obj.encode()) if isinstance(obj, str) else len(obj)
    out = ["wide"] if _wider(size) else []
    out.append("indefinite")
    if isinstance(obj, dict):
        out.append("duplicate") if obj else None
        out.append("unsorted") if len(obj) >= 2 else None
    return out


def loose(obj: Any, target: int, defect: str, counter: list[int]) -> bytes:
    """Encode `obj`, applying `defect` to the pre-order node number `target` only."""
    me = counter[0]
    counter[0] += 1
    mine = defect if me == target else None
    if isinstance(obj, int):
        return _head(0, obj, _wider(obj) if mine == "wide" else None)
    if isinstance(obj, str | bytes):
        major, raw = (3, obj.encode()) if isinstance(obj, str) else (2, obj)
        if mine == "indefinite":
            chunks = (
                [raw[: len(raw) // 2], raw[len(raw) // 2 :]] if isinstance(obj, bytes) else [raw]
            )
            return (
                bytes([major << 5 | 31])
                + b"".join(_head(major, len(c)) + c for c in chunks)
                + b"\xff"
            )
        return _head(major, len(raw), _wider(len(raw)) if mine == "wide" else None) + raw
    if isinstance(obj, list):
        items = b"".join(loose(item, target, defect, counter) for item in obj)
        if mine == "indefinite":
            return b"\x9f" + items + b"\xff"
        return _head(4, len(obj), _wider(len(obj)) if mine == "wide" else None) + items
    keys = sorted(obj, key=_key_sort)
    pairs = [loose(k, -1, "", [0]) + loose(obj[k], target, defect, counter) for k in keys]
    count = len(pairs)
    if mine == "unsorted":
        pairs[0], pairs[-1] = pairs[-1], pairs[0]
    if mine == "duplicate":
        pairs.append(pairs[0])
        count += 1
    if mine == "indefinite":
        return b"\xbf" + b"".join(pairs) + b"\xff"
    return _head(5, count, _wider(count) if mine == "wide" else None) + b"".join(pairs)


def _nodes(obj: Any) -> list[Any]:
    out = [obj]
    if isinstance(obj, list):
        for item in obj:
            out += _nodes(item)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=_key_sort):
            out += _nodes(obj[key])
    return out


@given(OBJECTS, st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_every_non_canonical_form_is_refused(obj: Any, rnd: random.Random) -> None:
    assert loose(obj, -1, "", [0]) == dagcbor.encode(obj)  # the loose encoder is faithful
    candidates = [(i, d) for i, node in enumerate(_nodes(obj)) for d in defects_of(node)]
    if not candidates:
        return
    target, defect = rnd.choice(candidates)
    data = loose(obj, target, defect, [0])
    assert data != dagcbor.encode(obj)
    with pytest.raises(WireError) as info:
        dagcbor.decode(data)
    assert info.value.reason == Reject.NON_CANONICAL, (defect, data.hex())
    # The oracle agrees it is not DAG-CBOR (its own decoding error, not a crash).
    with pytest.raises(CBORDecodingError):
        dag_cbor.decode(data)


NON_CANONICAL = {
    "int 1 in 1 byte": "1801",
    "int 23 in 1 byte": "1817",
    "int 255 in 2 bytes": "1900ff",
    "int 65535 in 4 bytes": "1a0000ffff",
    "int 2^32-1 in 8 bytes": "1b00000000ffffffff",
    "text length in 1 byte": "780161",
    "bytes length in 2 bytes": "59000100",
    "array length in 1 byte": "980101",
    "map length in 1 byte": "b8016161 01",
    "keys out of order (bytewise)": "a2 6162 01 6161 02",
    "keys out of order (length first)": "a2 626161 01 6162 02",
    "duplicate key": "a2 6161 01 6161 02",
    "indefinite bytes": "5f 4100 ff",
    "indefinite text": "7f 6161 ff",
    "indefinite array": "9f 01 ff",
    "indefinite map": "bf 6161 01 ff",
    "empty indefinite text": "7fff",
}


@pytest.mark.parametrize("hexdata", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_examples(hexdata: str) -> None:
    data = bytes.fromhex(hexdata.replace(" ", ""))
    with pytest.raises(WireError) as info:
        dagcbor.decode(data)
    assert info.value.reason == Reject.NON_CANONICAL


MALFORMED = {
    "float16": "f93c00",
    "float32": "fa3fc00000",
    "float64": "fb3ff8000000000000",
    "float inside map": "a16161f93c00",
    "negative int": "20",
    "negative int -2^64": "3bffffffffffffffff",
    "negative inside list": "820120",
    "tag 42 (CID link)": "d82a5825000171 1220" + "00" * 32,
    "tag 2 bignum (small)": "c24101",
    "tag 2 bignum (2^64)": "c249010000000000000000",
    "tag 0 date": "c074323031332d30332d32315432303a30343a30305a",
    "tag 1 epoch": "c101",
    "tag 55799 self-describe": "d9d9f701",
    "tag 258 set": "d9010281 01",
    "shared reference cycle": "d81c81d81d00",
    "shared reference cycle in map": "d81ca16161d81d00",
    "true": "f5",
    "false": "f4",
    "null": "f6",
    "undefined": "f7",
    "simple value 16": "f0",
    "int map key": "a10101",
    "bytes map key": "a1416101",
    "trailing byte": "0100",
    "trailing item after map": "a0a0",
    "empty input": "",
    "truncated": "6261",
    "lone break": "ff",
    "invalid utf-8": "62c328",
    "utf-8 surrogate": "63eda080",
    "huge byte string length": "5b7fffffffffffffff00",
    "huge array length": "9b7fffffffffffffff00",
    "huge map length": "bb7fffffffffffffff00",
    "reserved additional info": "1c",
    "nested 9 deep": "81" * 9 + "01",
    "nested 100000 deep": "81" * 100_000 + "01",
}


@pytest.mark.parametrize("hexdata", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_examples(hexdata: str) -> None:
    data = bytes.fromhex(hexdata.replace(" ", ""))
    with pytest.raises(WireError) as info:
        dagcbor.decode(data)
    assert info.value.reason == Reject.MALFORMED_CBOR


def test_depth_limit_is_exactly_max_depth() -> None:
    ok = b"\x81" * dagcbor.MAX_DEPTH + b"\x01"
    assert _depth(dagcbor.decode(ok)) == dagcbor.MAX_DEPTH


def test_uint64_extremes_accepted() -> None:
    for n in (0, 2**64 - 1):
        assert dagcbor.decode(dagcbor.encode(n)) == n


# --------------------------------------------------------------------------------------------
# Non-canonical envelopes of a valid batch


def _nc_envelopes() -> dict[str, bytes]:
    signed = encode()
    env = signed.envelope
    block = dagcbor.decode(env)["batch"]
    sig = signed.signature
    sig_item = b"\x63sig" + _head(2, 64) + sig
    batch_item = b"\x65batch" + _head(2, len(block)) + block
    assert env == b"\xa2" + sig_item + batch_item
    half = len(block) // 2
    return {
        "keys in insertion order": b"\xa2" + batch_item + sig_item,
        "wide map head": b"\xb8\x02" + sig_item + batch_item,
        "wide sig length": b"\xa2\x63sig" + _head(2, 64, 2) + sig + batch_item,
        "wide batch length": b"\xa2" + sig_item + b"\x65batch" + _head(2, len(block), 4) + block,
        "wide key length": b"\xa2\x78\x03sig" + _head(2, 64) + sig + batch_item,
        "indefinite map": b"\xbf" + sig_item + batch_item + b"\xff",
        "indefinite batch bytes": b"\xa2"
        + sig_item
        + b"\x65batch\x5f"
        + _head(2, half)
        + block[:half]
        + _head(2, len(block) - half)
        + block[half:]
        + b"\xff",
        "indefinite key text": b"\xa2\x7f\x63sig\xff" + _head(2, 64) + sig + batch_item,
        "duplicate sig": b"\xa3" + sig_item + batch_item + sig_item,
    }


@pytest.mark.parametrize("name", list(_nc_envelopes()))
def test_non_canonical_envelope_of_valid_batch_is_refused(name: str) -> None:
    signed = encode()
    data = _nc_envelopes()[name]
    # Same logical content to a lenient decoder (except the duplicate, which holds it twice).
    assert cbor2.loads(data) == dagcbor.decode(signed.envelope)
    with pytest.raises(WireError) as info:
        wire.decode_envelope(data)
    assert info.value.reason == Reject.NON_CANONICAL
    assert info.value.sender is None


def test_non_canonical_batch_block_inside_canonical_envelope_is_refused() -> None:
    fields = dagcbor.decode(dagcbor.decode(encode().envelope)["batch"])
    for target in range(len(_nodes(fields))):
        for defect in defects_of(_nodes(fields)[target]):
            block = loose(fields, target, defect, [0])
            with pytest.raises(WireError) as info:
                wire.decode_envelope(resign(None, block=block))
            assert info.value.reason == Reject.NON_CANONICAL, (target, defect)


# --------------------------------------------------------------------------------------------
# CIDs


@given(st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_cid_text_parse_round_trip(block: bytes) -> None:
    cid = dagcbor.cid_of(block)
    text = dagcbor.cid_text(cid)
    assert text.startswith("bafyrei")
    assert text == str(CID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256")))
    assert dagcbor.cid_parse(text) == cid
    assert dagcbor.cid_parse(cid) == cid
    other_base = str(CID.decode(cid).set(base="base58btc"))
    assert dagcbor.cid_parse(other_base) == cid


_MH = multihash.digest(b"block", "sha2-256")
CID_REFUSED = {
    "CIDv0": str(CID("base58btc", 0, "dag-pb", _MH)),
    "CIDv0 binary": bytes(CID("base58btc", 0, "dag-pb", _MH)),
    "raw codec": str(CID("base32", 1, "raw", _MH)),
    "dag-pb codec": str(CID("base32", 1, "dag-pb", _MH)),
    "sha2-512": str(CID("base32", 1, "dag-cbor", multihash.digest(b"block", "sha2-512"))),
    "blake2b-256": str(CID("base32", 1, "dag-cbor", multihash.digest(b"block", "blake2b-256"))),
    "identity hash": str(CID("base32", 1, "dag-cbor", multihash.digest(b"block", "identity"))),
    "not a cid": "hello",
    "empty text": "",
    "empty bytes": b"",
    "truncated binary": dagcbor.cid_of(b"x")[:-1],
    "trailing byte": dagcbor.cid_of(b"x") + b"\x00",
}


@pytest.mark.parametrize("value", CID_REFUSED.values(), ids=CID_REFUSED.keys())
def test_cid_parse_refuses(value: str | bytes) -> None:
    with pytest.raises(WireError) as info:
        dagcbor.cid_parse(value)
    assert info.value.reason == Reject.SCHEMA
