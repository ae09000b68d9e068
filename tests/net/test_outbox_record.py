"""The agent's own record kept with an outbox entry (fai_net/node/broadcast.py) comes back
exactly as it was added, and anything else decodes to None, never to a wrong experience."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fai_core import dagcbor
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_net.node.broadcast import from_own_record, own_record

KEY = NodeKey(bytes([5]) * 32).public_key


def _exp(quality: float = 0.61) -> Experience:
    vec = np.random.default_rng(1).normal(size=384).astype(np.float32)
    return Experience("pin the base image digest", vec, quality, "devops", KEY, 1_700, 2)


def test_round_trip_is_exact():
    e = _exp()
    back = from_own_record(own_record(e), "devops", KEY)
    assert back == e and back.id == e.id
    assert back.quality == e.quality and np.array_equal(back.embedding, e.embedding)
    assert (back.created_ms, back.iteration) == (1_700, 2)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not cbor at all",
        dagcbor.encode({"text": "x"}),  # fields missing
        dagcbor.encode(
            {
                "text": "pin it",
                "embedding": b"\x00" * 3,
                "quality": struct.pack("<d", 0.5),
                "created_ms": 1,
                "iteration": 0,
            }
        ),
        dagcbor.encode(
            {
                "text": "pin it",
                "embedding": np.full(4, np.nan, "<f4").tobytes(),
                "quality": struct.pack("<d", 0.5),
                "created_ms": 1,
                "iteration": 0,
            }
        ),
    ],
)
def test_anything_else_is_none(blob):
    """Each bad blob is wrong in one field only (fields missing, a cut embedding, NaN)."""
    assert from_own_record(blob, "devops", KEY) is None


def test_a_record_decodes_under_the_entrys_domain():
    """The id covers the domain, so a record queued under one domain never passes for an
    experience of another: the caller compares ids."""
    e = _exp()
    other = from_own_record(own_record(e), "coding", KEY)
    assert other is not None and other.id != e.id
