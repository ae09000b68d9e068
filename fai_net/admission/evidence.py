"""Equivocation evidence as a file an operator (or `fai slash equivocation`) can submit.

Two envelopes from one sender with one seq and different CIDs prove equivocation. The file
keeps the whole envelopes, not just the headers: anyone can re-verify them (Ed25519 over
the CID, CID over the batch) before spending gas, and the registry call needs exactly the
EIP-712 headers and operator signatures they carry.

File name and content are specified in docs/registry.md, "Equivocation evidence files"
(linked from docs/wire-format.md), so that another implementation can write files that
`fai slash equivocation` reads, and read ours: `<data dir>/evidence/equivocation-<first 16
hex digits of the sender key>-<seq>.json`, a JSON object {kind, sender, seq, batches: [two
{cid, timestamp_ms, domain, operator_sig, envelope}]} of which only `kind` and the
envelopes are evidence.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fai_core import jsonlimits
from fai_core.errors import FaiError, WireError
from fai_core.reputation import atomic_write_json
from fai_core.wire import MAX_ENVELOPE_BYTES, SignedBatch, decode_envelope


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
            "kind": KIND,
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


KIND = "fai/equivocation/v1"
#: Where these files come from, for a message about a file that is not one of them.
SOURCE = (
    "expected a file a node writes to <data dir>/evidence/equivocation-*.json when it catches "
    "an equivocation, as after `fai devnet equivocate --node NODE`"
)
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
#: Two envelopes as hex plus a little JSON: far above any real file, far below memory.
MAX_FILE_BYTES = 4 * MAX_ENVELOPE_BYTES + 65_536


def check(first: bytes, second: bytes) -> Equivocation:
    """Re-verify two envelopes as proof; raises EvidenceError if they prove nothing."""
    try:
        a, b = decode_envelope(first), decode_envelope(second)
    except (WireError, ValueError) as exc:
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
    """The equivocation a file proves, re-verified.

    Anything else (no file, not JSON, another shape) is one EvidenceError line naming the
    file, what is wrong and where real evidence files come from: the person holding a wrong
    file needs to know which file to use instead, not a KeyError.
    """
    envelopes = _envelopes(Path(path))
    try:
        return check(*envelopes)
    except EvidenceError as exc:
        raise EvidenceError(f"{path}: {exc}") from None


def _envelopes(path: Path) -> tuple[bytes, bytes]:
    def refuse(problem: str) -> EvidenceError:
        return EvidenceError(f"{path} is not an equivocation evidence file: {problem} ({SOURCE})")

    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise refuse("it is a directory")
        if not stat.S_ISREG(info.st_mode):  # a pipe or device could block or never end
            raise refuse("it is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise refuse(f"it is larger than {MAX_FILE_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(f"cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise refuse("it is not text") from None
    if not text.strip():
        raise refuse("it is empty")
    try:
        data = jsonlimits.loads(text)
    except ValueError as exc:
        raise refuse(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise refuse(f"it holds a JSON {_JSON_TYPES.get(type(data), 'value')}, not an object")
    missing = [repr(key) for key in ("kind", "batches") if key not in data]
    if missing:
        raise refuse(f"missing {' and '.join(missing)}")
    if data["kind"] != KIND:
        raise refuse(f"its kind is {str(data['kind'])[:80]!r}, not {KIND!r}")
    batches = data["batches"]
    if not isinstance(batches, list) or len(batches) != 2:
        raise refuse("'batches' must be a list of two batches")
    envelopes = []
    for n, item in enumerate(batches, 1):
        envelope = item.get("envelope") if isinstance(item, dict) else None
        if not isinstance(envelope, str):
            raise refuse(f"batch {n} has no 'envelope' string")
        try:
            envelopes.append(bytes.fromhex(envelope))
        except ValueError:
            raise refuse(f"the 'envelope' of batch {n} is not hex") from None
    return envelopes[0], envelopes[1]
