"""Typed errors for everything FAI refuses.

A node counts rejections by reason and keeps running, so every refusal of untrusted input
is one exception type carrying a machine-readable reason code, never a bare ValueError or
whatever the CBOR library happened to raise.
"""

from __future__ import annotations

from enum import StrEnum


class FaiError(Exception):
    """Base of every error FAI raises on purpose."""


class InvalidExperience(FaiError, ValueError):
    """A locally built experience breaks the model's rules (caller's mistake, not an attack)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"invalid experience {field}: {detail}")
        self.field = field
        self.detail = detail


class Reject(StrEnum):
    """Why a batch from the wire was refused. Values are stable: metrics are labelled by them."""

    OVERSIZE = "oversize"
    MALFORMED_CBOR = "malformed_cbor"
    NON_CANONICAL = "non_canonical"
    SCHEMA = "schema"
    UNKNOWN_VERSION = "unknown_version"
    CID_MISMATCH = "cid_mismatch"
    BAD_SIGNATURE = "bad_signature"
    BAD_KEY = "bad_key"
    TOO_MANY_EXPERIENCES = "too_many_experiences"
    BAD_DIMENSION = "bad_dimension"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_PADDING = "bad_padding"
    TEXT_TOO_LONG = "text_too_long"
    BAD_TEXT = "bad_text"
    BAD_DOMAIN = "bad_domain"
    BAD_MODEL = "bad_model"
    DUPLICATE_EXPERIENCE = "duplicate_experience"
    STALE = "stale"
    FUTURE = "future"


class WireError(FaiError):
    """Untrusted bytes were refused. `reason` is what a node counts; `detail` is for logs.

    `sender` is set only when the refusal came after the sender's signature verified: then
    the bad content is provably the sender's doing and may cost it reputation. Before that
    point the claimed sender could be anyone.
    """

    def __init__(self, reason: Reject, detail: str, sender: bytes | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sender = sender
