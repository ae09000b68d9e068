"""Every validation rule of Experience, normalization in `create`, identity and immutability."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from multiformats import CID, multihash

from fai_core import dagcbor
from fai_core.errors import InvalidExperience
from fai_core.experience import (
    MAX_DIMENSION,
    MAX_TEXT_BYTES,
    MAX_WORDS,
    Experience,
    experience_id,
    normalize_text,
)

SOURCE = bytes(range(32))
GOOD: dict[str, Any] = {
    "text": "retry with exponential backoff",
    "embedding": np.linspace(-1, 1, 16),
    "quality": 0.75,
    "domain": "coding",
    "source": SOURCE,
    "created_ms": 1_700_000_000_000,
    "iteration": 3,
}


def make(**changes: Any) -> Experience:
    return Experience(**{**GOOD, **changes})


def test_valid_experience() -> None:
    exp = make()
    assert exp.text == GOOD["text"] and exp.domain == "coding" and exp.quality == 0.75
    assert exp.dimension == 16 and exp.embedding.dtype == np.float32
    assert exp.id == experience_id("coding", GOOD["text"])


ACCEPTED: dict[str, dict[str, Any]] = {
    "1 word": {"text": "backoff"},
    "32 words": {"text": " ".join(["w"] * MAX_WORDS)},
    "text exactly at byte limit": {"text": "x" * MAX_TEXT_BYTES},
    "multi-byte text at byte limit": {"text": "é" * (MAX_TEXT_BYTES // 2)},
    "non-ascii NFC text": {"text": "café naïve 日本語"},
    "domain 1 char": {"domain": "a"},
    "domain 32 chars": {"domain": "a" * 32},
    "domain digits and dash": {"domain": "web-3-0"},
    "domain leading dash": {"domain": "-"},
    "quality tiny": {"quality": 5e-324},
    "quality just below 1": {"quality": 1 - 2**-53},
    "quality numpy float32": {"quality": np.float32(0.5)},
    "quality numpy float64": {"quality": np.float64(0.25)},
    "embedding dimension 1": {"embedding": [0.0]},
    "embedding at MAX_DIMENSION": {"embedding": np.zeros(MAX_DIMENSION)},
    "embedding list of ints": {"embedding": [1, 2, 3]},
    "iteration 0": {"iteration": 0},
    "iteration 255": {"iteration": 255},
    "created_ms 0": {"created_ms": 0},
    "created_ms uint64 max": {"created_ms": 2**64 - 1},
}


@pytest.mark.parametrize("changes", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(changes: dict[str, Any]) -> None:
    make(**changes)


REJECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "33 words": ("text", {"text": " ".join(["w"] * (MAX_WORDS + 1))}),
    "empty text": ("text", {"text": ""}),
    "only a space": ("text", {"text": " "}),
    "leading space": ("text", {"text": " backoff"}),
    "trailing space": ("text", {"text": "backoff "}),
    "double space": ("text", {"text": "retry  backoff"}),
    "tab": ("text", {"text": "retry\tbackoff"}),
    "newline": ("text", {"text": "retry\nbackoff"}),
    "no-break space": ("text", {"text": "retry\u00a0backoff"}),
    "ideographic space": ("text", {"text": "retry\u3000backoff"}),
    "line separator": ("text", {"text": "retry\u2028backoff"}),
    "NUL": ("text", {"text": "retry\x00backoff"}),
    "DEL": ("text", {"text": "retry\x7f"}),
    "C1 control": ("text", {"text": "retry\x9b"}),
    "escape": ("text", {"text": "\x1b[31mred"}),
    "not NFC": ("text", {"text": "cafe\u0301"}),
    "lone high surrogate": ("text", {"text": "bad\ud800"}),
    "lone low surrogate": ("text", {"text": "\udc00"}),
    "one byte over limit": ("text", {"text": "x" * (MAX_TEXT_BYTES + 1)}),
    "multi-byte over limit": ("text", {"text": "é" * (MAX_TEXT_BYTES // 2 + 1)}),
    "text bytes": ("text", {"text": b"backoff"}),
    "text None": ("text", {"text": None}),
    "domain uppercase": ("domain", {"domain": "Coding"}),
    "domain 33 chars": ("domain", {"domain": "a" * 33}),
    "domain empty": ("domain", {"domain": ""}),
    "domain underscore": ("domain", {"domain": "co_ding"}),
    "domain dot": ("domain", {"domain": "co.ding"}),
    "domain space": ("domain", {"domain": "co ding"}),
    "domain trailing newline": ("domain", {"domain": "coding\n"}),
    "domain non-ascii letter": ("domain", {"domain": "códing"}),
    "domain non-ascii digit": ("domain", {"domain": "١٢"}),
    "domain bytes": ("domain", {"domain": b"coding"}),
    "quality 0": ("quality", {"quality": 0.0}),
    "quality 1": ("quality", {"quality": 1.0}),
    "quality int 0": ("quality", {"quality": 0}),
    "quality int 1": ("quality", {"quality": 1}),
    "quality negative": ("quality", {"quality": -0.1}),
    "quality above 1": ("quality", {"quality": 1.5}),
    "quality NaN": ("quality", {"quality": float("nan")}),
    "quality +Inf": ("quality", {"quality": float("inf")}),
    "quality -Inf": ("quality", {"quality": float("-inf")}),
    "quality True": ("quality", {"quality": True}),
    "quality False": ("quality", {"quality": False}),
    "quality string": ("quality", {"quality": "0.5"}),
    "quality None": ("quality", {"quality": None}),
    "quality numpy NaN": ("quality", {"quality": np.float32("nan")}),
    "embedding NaN": ("embedding", {"embedding": [0.0, float("nan")]}),
    "embedding +Inf": ("embedding", {"embedding": [float("inf"), 0.0]}),
    "embedding -Inf": ("embedding", {"embedding": [float("-inf")]}),
    "embedding overflows float32": ("embedding", {"embedding": [1e39]}),
    "embedding 2-D": ("embedding", {"embedding": np.zeros((2, 8))}),
    "embedding 1x1 2-D": ("embedding", {"embedding": [[0.5]]}),
    "embedding scalar": ("embedding", {"embedding": 0.5}),
    "embedding empty": ("embedding", {"embedding": []}),
    "embedding too large": ("embedding", {"embedding": np.zeros(MAX_DIMENSION + 1)}),
    "embedding None": ("embedding", {"embedding": None}),
    "embedding of strings": ("embedding", {"embedding": ["a", "b"]}),
    "embedding ragged": ("embedding", {"embedding": [[1.0], [2.0, 3.0]]}),
    "embedding dict": ("embedding", {"embedding": {"a": 1}}),
    "source 31 bytes": ("source", {"source": bytes(31)}),
    "source 33 bytes": ("source", {"source": bytes(33)}),
    "source empty": ("source", {"source": b""}),
    "source text": ("source", {"source": "0" * 32}),
    "source bytearray": ("source", {"source": bytearray(32)}),
    "iteration 256": ("iteration", {"iteration": 256}),
    "iteration negative": ("iteration", {"iteration": -1}),
    "iteration bool": ("iteration", {"iteration": True}),
    "iteration float": ("iteration", {"iteration": 1.0}),
    "created_ms negative": ("created_ms", {"created_ms": -1}),
    "created_ms above uint64": ("created_ms", {"created_ms": 2**64}),
    "created_ms float": ("created_ms", {"created_ms": 1.7e12}),
    "created_ms bool": ("created_ms", {"created_ms": False}),
}


@pytest.mark.parametrize(("field", "changes"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected(field: str, changes: dict[str, Any]) -> None:
    with np.errstate(over="ignore"), pytest.raises(InvalidExperience) as info:
        make(**changes)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)  # callers may catch ValueError
    assert info.value.detail


def test_create_normalizes_text() -> None:
    exp = Experience.create("  retry\twith \n exponential\u00a0\u00a0backoff ", **_rest())
    assert exp.text == "retry with exponential backoff"
    assert Experience.create("cafe\u0301", **_rest()).text == "caf\u00e9"
    assert exp == make()


def test_create_still_validates() -> None:
    with pytest.raises(InvalidExperience) as info:
        Experience.create(" \t\n ", **_rest())
    assert info.value.field == "text"
    with pytest.raises(InvalidExperience) as info:
        Experience.create("x\x00y", **_rest())
    assert info.value.field == "text"


def _rest() -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != "text"}


def test_normalize_text_is_idempotent_and_valid() -> None:
    for raw in ["  a  b ", "e\u0301", "x\u2003y", "\u00a0z"]:
        once = normalize_text(raw)
        assert normalize_text(once) == once
        make(text=once)


def test_id_is_cid_of_domain_and_text() -> None:
    exp = make()
    block = dagcbor.encode({"domain": "coding", "text": GOOD["text"]})
    want = CID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256"))
    assert exp.id == bytes(want) == dagcbor.cid_of(block)


def test_id_depends_only_on_domain_and_text() -> None:
    a = make()
    b = make(
        embedding=np.ones(8),
        quality=0.1,
        source=bytes(32),
        created_ms=5,
        iteration=9,
    )
    assert a.id == b.id
    assert make(domain="ops").id != a.id
    assert make(text="retry with linear backoff").id != a.id
    # Normalization makes the id stable across producers' whitespace habits.
    assert Experience.create(" retry  with exponential backoff", **_rest()).id == a.id


def test_domain_and_text_cannot_be_confused() -> None:
    """The id hashes a map, not a concatenation: moving characters between fields changes it."""
    assert experience_id("ab", "c") != experience_id("a", "bc")


def test_embedding_is_read_only_copy() -> None:
    source = np.linspace(0, 1, 16, dtype=np.float32)
    exp = make(embedding=source)
    assert not exp.embedding.flags.writeable
    assert not np.shares_memory(exp.embedding, source)
    source[0] = 42.0
    assert exp.embedding[0] == 0.0
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        exp.embedding[0] = 1.0
    assert exp.embedding.dtype == np.float32 and exp.embedding.shape == (16,)


def test_embedding_float64_input_is_converted() -> None:
    exp = make(embedding=np.array([0.1, 0.2], dtype=np.float64))
    np.testing.assert_array_equal(exp.embedding, np.array([0.1, 0.2], dtype=np.float32))


def test_experience_is_frozen() -> None:
    exp = make()
    with pytest.raises(AttributeError):
        exp.quality = 0.5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        exp.id = b"x"  # type: ignore[misc]


def test_quality_is_stored_as_python_float() -> None:
    exp = make(quality=np.float32(0.5))
    assert type(exp.quality) is float and exp.quality == 0.5


def test_equality_and_hash() -> None:
    a, b = make(), make()
    assert a == b and hash(a) == hash(b)
    assert a != make(quality=0.5)
    assert a != make(iteration=4)
    assert a != make(embedding=np.linspace(-1, 1, 16) + 1)
    assert a != make(created_ms=1)
    assert a != "not an experience"
