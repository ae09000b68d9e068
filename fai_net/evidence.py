"""Equivocation evidence as a file an operator (or `fai slash equivocation`) can submit.

Two envelopes from one sender with one seq and different CIDs prove equivocation. The file
keeps the whole envelopes, not just the headers: anyone can re-verify them (Ed25519 over
the CID, CID over the batch) before spending gas, and the registry call needs exactly the
EIP-712 headers and operator signatures they carry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fai_core import jsonlimits
from fai_core.errors import FaiError, WireError
from fai_core.reputation import atomic_write_json
from fai_core.wire import SignedBatch, decode_envelope


class EvidenceError(FaiError):
    """The file is not valid evidence of equivocation."""


@dataclass(frozen=True)
class Equivocation:
    first: SignedBatch
    second: SignedBatch

    @property
    def sender(self) -> bytes:
        return self.first.batch.sender

    @property
    def seq(self) -> int:
        return self.first.batch.seq

    def to_json(self) -> dict:
        return {
            "kind": "fai/equivocation/v1",
            "sender": self.sender.hex(),
            "seq": self.seq,
            "batches": [_batch_json(s) for s in (self.first, self.second)],
        }

    def signed_headers(self):
        """The two `SignedBatchHeader`s `RegistryClient.slash_equivocation` takes."""
        from fai_net.registry.client import SignedBatchHeader

        headers = []
        for signed in (self.first, self.second):
            if signed.operator_signature is None:
                raise EvidenceError("a batch lacks the operator signature the registry needs")
            h = signed.batch.header
            headers.append(
                SignedBatchHeader(
                    h.sender, h.seq, h.cid_digest, h.timestamp_ms, signed.operator_signature
                )
            )
        return tuple(headers)


def _batch_json(signed: SignedBatch) -> dict:
    b = signed.batch
    return {
        "cid": b.cid_text,
        "timestamp_ms": b.timestamp_ms,
        "domain": b.domain,
        "operator_sig": signed.operator_signature.hex() if signed.operator_signature else None,
        "envelope": signed.envelope.hex(),
    }


def check(first: bytes, second: bytes) -> Equivocation:
    """Re-verify two envelopes as proof; raises EvidenceError if they prove nothing."""
    try:
        a, b = decode_envelope(first), decode_envelope(second)
    except WireError as exc:
        raise EvidenceError(f"an envelope does not verify: {exc}") from None
    if a.batch.sender != b.batch.sender or a.batch.seq != b.batch.seq:
        raise EvidenceError("the batches differ in sender or seq")
    if a.cid == b.cid:
        raise EvidenceError("the batches are the same batch")
    return Equivocation(a, b)


def write(directory: str | os.PathLike[str], eq: Equivocation) -> Path:
    path = Path(directory) / f"equivocation-{eq.sender.hex()[:16]}-{eq.seq}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, eq.to_json())
    return path


def load(path: str | os.PathLike[str]) -> Equivocation:
    try:
        data = jsonlimits.loads(Path(path).read_text())
        envelopes = [bytes.fromhex(b["envelope"]) for b in data["batches"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvidenceError(f"{path}: not an evidence file ({exc})") from None
    if data.get("kind") != "fai/equivocation/v1" or len(envelopes) != 2:
        raise EvidenceError(f"{path}: not an fai/equivocation/v1 file")
    return check(*envelopes)
