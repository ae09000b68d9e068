"""The DAG-CBOR subset FAI speaks, and CIDv1 content addresses over it.

FAI's wire objects hold only maps with text keys, lists, text, byte strings and unsigned
integers: every float array travels as a byte string. On that subset cbor2's canonical
mode (shortest integer and length heads, map keys sorted by encoded length then bytewise)
is exactly DAG-CBOR, so encoding uses cbor2's C encoder and strict decoding reduces to
"decode, then re-encode and demand the same bytes". Anything DAG-CBOR forbids (indefinite
lengths, duplicate keys, non-shortest heads, unsorted keys) fails that round trip.

A CID object from `multiformats` costs ~200 us to build, which would dominate verifying a
batch of 100 experiences, so binary CIDs are assembled from the fixed 4-byte prefix that
`multiformats` itself produces, and `multiformats` renders and parses the text form.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
from multiformats import CID, multihash

from fai_core.errors import Reject, WireError

#: Deepest nesting a FAI object needs is 3 (envelope > batch > list); allow a little slack.
MAX_DEPTH = 8

_DIGEST_LEN = 32
#: Binary CIDv1 prefix: version 1, codec dag-cbor (0x71), multihash sha2-256 (0x12), 32 bytes.
CID_PREFIX: bytes = bytes(CID("base32", 1, "dag-cbor", multihash.wrap(bytes(32), "sha2-256")))[
    :-_DIGEST_LEN
]
CID_LEN = len(CID_PREFIX) + _DIGEST_LEN


def encode(obj: Any) -> bytes:
    """Canonical DAG-CBOR bytes of `obj` (maps with str keys, lists, str, bytes, ints)."""
    return cbor2.dumps(obj, canonical=True)


def _refuse_tag(tag: Any, _immutable: bool) -> Any:
    # cbor2 6 calls tag_hook(tag, immutable) and wraps what it raises in CBORDecodeError.
    raise WireError(Reject.MALFORMED_CBOR, f"CBOR tag {tag.tag} is not allowed")


def _refuse_semantic(*_args: Any) -> Any:
    raise WireError(Reject.MALFORMED_CBOR, "CBOR tags are not allowed")


#: Tags cbor2 decodes itself without calling tag_hook (bignums, dates, sets, self-describe,
#: shared references, ...). Each must be refused explicitly: tags 28/29 can build cyclic
#: objects, and tags 2 or 55799 would otherwise pass as "non-canonical" instead of malformed.
_NATIVE_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_NO_SEMANTIC_TAGS = dict.fromkeys((*_NATIVE_TAGS, 55799), _refuse_semantic)


def decode(data: bytes) -> Any:
    """Decode untrusted bytes that must be canonical DAG-CBOR of FAI's subset.

    Raises WireError(MALFORMED_CBOR) for anything cbor2 cannot parse or that carries tags,
    floats or trailing bytes, and WireError(NON_CANONICAL) for valid CBOR whose encoding is
    not the canonical one.
    """
    try:
        obj = cbor2.loads(
            data,
            tag_hook=_refuse_tag,
            semantic_decoders=_NO_SEMANTIC_TAGS,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except WireError:
        raise
    except cbor2.CBORDecodeError as exc:
        # Valid CBOR that DAG-CBOR forbids is "non-canonical"; unparseable bytes are "malformed".
        message = str(exc).lower()
        forbidden = "duplicate" in message or "indefinite" in message
        reason = Reject.NON_CANONICAL if forbidden else Reject.MALFORMED_CBOR
        raise WireError(reason, f"CBOR decode failed: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise WireError(Reject.MALFORMED_CBOR, f"CBOR decode failed: {exc!r}") from None
    _check_subset(obj)
    canonical = encode(obj)
    if canonical != data:
        if data.startswith(canonical):  # cbor2.loads ignores bytes after the first item
            raise WireError(Reject.MALFORMED_CBOR, "trailing bytes after the CBOR item")
        raise WireError(Reject.NON_CANONICAL, "bytes are not the canonical DAG-CBOR encoding")
    return obj


def _check_subset(obj: Any) -> None:
    """Only the types DAG-CBOR and our schema allow; floats, bools, None and tags are out."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, float):
        raise WireError(Reject.MALFORMED_CBOR, f"{type(obj).__name__} values are not allowed")
    if isinstance(obj, int):
        if obj < 0 or obj >= 1 << 64:
            raise WireError(Reject.MALFORMED_CBOR, "integers must be unsigned 64-bit")
    elif isinstance(obj, list):
        for item in obj:
            _check_subset(item)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise WireError(Reject.MALFORMED_CBOR, "map keys must be text")
            _check_subset(value)
    elif not isinstance(obj, str | bytes):
        raise WireError(Reject.MALFORMED_CBOR, f"{type(obj).__name__} values are not allowed")


def cid_of(block: bytes) -> bytes:
    """Binary CIDv1 (dag-cbor, sha2-256) of an encoded block."""
    return CID_PREFIX + hashlib.sha256(block).digest()


def cid_text(cid: bytes) -> str:
    """The base32 text form users see (`bafyrei...`)."""
    return str(CID.decode(cid).set(base="base32"))


def cid_parse(text_or_bytes: str | bytes) -> bytes:
    """Binary CID from either form; refuses CIDs that are not dag-cbor + sha2-256 v1."""
    try:
        cid = CID.decode(text_or_bytes)
    except Exception as exc:  # multiformats raises several unrelated types
        raise WireError(Reject.SCHEMA, f"not a CID: {exc}") from None
    raw = bytes(cid)
    if not raw.startswith(CID_PREFIX) or len(raw) != CID_LEN:
        raise WireError(Reject.SCHEMA, "CID is not v1 dag-cbor sha2-256")
    return raw
