"""Typed errors for everything FAI refuses.

A node counts rejections by reason and keeps running, so every refusal of untrusted input
is one exception type carrying a machine-readable reason code, never a bare ValueError or
whatever the CBOR library happened to raise. The reason codes themselves (`Reject` and the
other stages' enums) live in fai_core.refusals; `Reject` is importable from here too.
"""

from __future__ import annotations

from fai_core.refusals import Reject


class FaiError(Exception):
    """Base of every error FAI raises on purpose."""


class InvalidExperience(FaiError, ValueError):
    """A locally built experience breaks the model's rules (caller's mistake, not an attack)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"invalid experience {field}: {detail}")
        self.field = field
        self.detail = detail


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
