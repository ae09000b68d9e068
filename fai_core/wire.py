"""The batch wire format: signed, content-addressed DAG-CBOR batches of experiences.

docs/wire-format.md is the specification; this module is its implementation. The shape
follows from three requirements:

- Small: per-experience fields travel as columns (one byte string each for signs, scales,
  qualities and iterations), so framing is paid once per batch, not per experience, and
  decoding is `np.frombuffer`, not a per-row loop. No CBOR floats appear anywhere, which
  also keeps the encoding unambiguous (DAG-CBOR floats must be 64-bit).
- Verifiable: the batch block is strict DAG-CBOR addressed by its CIDv1; the envelope
  carries the sender's Ed25519 signature over that CID and, optionally, the on-chain
  operator's EIP-712 signature over the header {sender, seq, cid digest, timestamp}, which
  is what makes two batches with one sequence number provable equivocation.
- Hostile-input safe: `decode_envelope` either returns a fully checked batch or raises
  one `WireError` with a reason code. It checks the signature before the content, so a
  content error raised after that point is attributable to the signer (`WireError.sender`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fai_core import bitdelta, dagcbor
from fai_core.errors import Reject, WireError
from fai_core.experience import (
    MAX_DIMENSION,
    Experience,
    domain_problem,
    experience_id,
    text_problem,
)
from fai_core.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, NodeKey, verify

WIRE_VERSION = 1
#: Strictly below libp2p gossipsub's 1 MiB inbound RPC limit, with room for its framing.
MAX_ENVELOPE_BYTES = 1_000_000
MAX_EXPERIENCES = 1024
#: No honest embedding coordinate or scale comes near this; it keeps every sum finite.
MAX_ABS_VALUE = 1e6
OPERATOR_SIGNATURE_LEN = 65
BATCH_SIGNATURE_CONTEXT = b"fai/batch/v1\x00"
_MODEL_RE = re.compile(r"[A-Za-z0-9._/:@+-]{1,128}")
_QUALITY_STEPS = 1 << 16

BATCH_FIELDS: dict[str, type] = {
    "version": int,
    "sender": bytes,
    "seq": int,
    "timestamp_ms": int,
    "domain": str,
    "model": str,
    "dim": int,
    "group": int,
    "scale_dtype": str,
    "baseline": bytes,
    "texts": list,
    "signs": bytes,
    "scales": bytes,
    "quality": bytes,
    "iteration": bytes,
}
_ENVELOPE_REQUIRED = {"batch": bytes, "sig": bytes}
_ENVELOPE_OPTIONAL = {"operator_sig": bytes}


def quantize_quality(q: np.ndarray) -> np.ndarray:
    """Quality in (0, 1) -> uint16 bucket k; the wire value (k + 0.5) / 65536 stays in (0, 1)."""
    return np.clip(np.floor(q * _QUALITY_STEPS), 0, _QUALITY_STEPS - 1).astype("<u2")


def dequantize_quality(k: np.ndarray) -> np.ndarray:
    """uint16 bucket k -> the quality it stands for, (k + 0.5) / 65536 (float32): the
    centre of the bucket, so it stays strictly inside (0, 1)."""
    return ((k.astype(np.float64) + 0.5) / _QUALITY_STEPS).astype(np.float32)


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What the operator's EIP-712 signature covers (see docs/wire-format.md)."""

    sender: bytes
    seq: int
    cid: bytes
    timestamp_ms: int

    @property
    def cid_digest(self) -> bytes:
        """The sha2-256 digest inside the CID: the `bytes32 cidDigest` of the EIP-712 struct."""
        return self.cid[len(dagcbor.CID_PREFIX) :]


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """A decoded, fully checked batch. Per-experience data is columnar, row i = experience i."""

    cid: bytes
    sender: bytes
    seq: int
    timestamp_ms: int
    domain: str
    model: str
    dim: int
    group: int
    scale_dtype: str
    baseline: np.ndarray
    texts: tuple[str, ...]
    signs: np.ndarray
    scales: np.ndarray
    quality: np.ndarray
    iteration: np.ndarray
    ids: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def header(self) -> BatchHeader:
        """The fields the operator's EIP-712 signature covers, for signing or checking."""
        return BatchHeader(self.sender, self.seq, self.cid, self.timestamp_ms)

    @property
    def cid_text(self) -> str:
        """The CID in its text form, for logs and APIs."""
        return dagcbor.cid_text(self.cid)

    def embeddings(self) -> np.ndarray:
        """BitDelta reconstruction of every experience's embedding, (M, dim) float32."""
        code = bitdelta.Compressed(self.signs, self.scales, self.dim, self.group)
        return bitdelta.decode(code, self.baseline)

    def experiences(self) -> list[Experience]:
        """Experiences as the receiver stores them: reconstructed embeddings, created = sent."""
        vectors = self.embeddings()
        return [
            Experience(
                text=self.texts[i],
                embedding=vectors[i],
                quality=float(self.quality[i]),
                domain=self.domain,
                source=self.sender,
                created_ms=self.timestamp_ms,
                iteration=int(self.iteration[i]),
            )
            for i in range(len(self.texts))
        ]


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """The envelope bytes as published, with the batch they carry."""

    envelope: bytes
    batch: Batch
    signature: bytes
    operator_signature: bytes | None

    @property
    def cid(self) -> bytes:
        """The batch's content id: what replay checks and gossip de-duplicate on."""
        return self.batch.cid


#: Signs a batch header with the node's on-chain operator key (EIP-712), 65 bytes out.
OperatorSigner = Callable[[BatchHeader], bytes]


def encode_batch(
    experiences: Sequence[Experience],
    *,
    key: NodeKey,
    seq: int,
    timestamp_ms: int,
    model: str,
    baseline: np.ndarray,
    group: int = bitdelta.DEFAULT_GROUP_SIZE,
    scale_dtype: str = "f32",
    operator_signer: OperatorSigner | None = None,
) -> SignedBatch:
    """Compress, encode, address and sign a batch of the node's own experiences.

    Raises ValueError for a batch this node must not publish (mixed domains, someone
    else's experiences, wrong dimension, over the limits); such a batch would be refused by
    every receiver anyway.
    """
    if not 1 <= len(experiences) <= MAX_EXPERIENCES:
        raise ValueError(f"a batch holds 1..{MAX_EXPERIENCES} experiences")
    domain = experiences[0].domain
    base = np.ascontiguousarray(baseline, dtype=np.float32)
    dim = base.shape[0] if base.ndim == 1 else -1
    if not 1 <= dim <= MAX_DIMENSION:
        raise ValueError("baseline must be a vector of 1..MAX_DIMENSION values")
    if not np.isfinite(base).all() or np.abs(base).max() > MAX_ABS_VALUE:
        raise ValueError("baseline has non-finite or out-of-range values")
    if not _MODEL_RE.fullmatch(model):
        raise ValueError(f"model id must match {_MODEL_RE.pattern}")
    for name, value in (("seq", seq), ("timestamp_ms", timestamp_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"{name} must be an unsigned 64-bit integer, got {value!r}")
    if scale_dtype not in bitdelta.SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {sorted(bitdelta.SCALE_DTYPES)}")
    for exp in experiences:
        if exp.domain != domain:
            raise ValueError("all experiences in a batch share one domain")
        if exp.source != key.public_key:
            raise ValueError("a node only publishes its own experiences")
        if exp.dimension != dim:
            raise ValueError(f"embedding dimension {exp.dimension} != baseline {dim}")
    if len({exp.id for exp in experiences}) != len(experiences):
        raise ValueError("duplicate experiences (same domain and text) in one batch")
    matrix = np.stack([exp.embedding for exp in experiences])
    code = bitdelta.encode(matrix, base, group, scale_dtype)
    scales32 = code.scales.astype(np.float32)
    if not np.isfinite(scales32).all() or scales32.max() > MAX_ABS_VALUE:
        raise ValueError("scales overflow (float16 range exceeded?)")
    quality = np.array([exp.quality for exp in experiences], dtype=np.float64)
    fields: dict[str, Any] = {
        "version": WIRE_VERSION,
        "sender": key.public_key,
        "seq": seq,
        "timestamp_ms": timestamp_ms,
        "domain": domain,
        "model": model,
        "dim": dim,
        "group": group,
        "scale_dtype": scale_dtype,
        "baseline": base.astype("<f4").tobytes(),
        "texts": [exp.text for exp in experiences],
        "signs": code.signs.tobytes(),
        "scales": code.scales.astype(bitdelta.SCALE_DTYPES[scale_dtype]).tobytes(),
        "quality": quantize_quality(quality).tobytes(),
        "iteration": np.array([exp.iteration for exp in experiences], dtype=np.uint8).tobytes(),
    }
    block = dagcbor.encode(fields)
    cid = dagcbor.cid_of(block)
    batch = _build(fields, cid)
    signature = key.sign(BATCH_SIGNATURE_CONTEXT, cid)
    operator_signature = operator_signer(batch.header) if operator_signer else None
    envelope_fields: dict[str, Any] = {"batch": block, "sig": signature}
    if operator_signature is not None:
        if len(operator_signature) != OPERATOR_SIGNATURE_LEN:
            raise ValueError("operator signature must be 65 bytes (r || s || v)")
        envelope_fields["operator_sig"] = operator_signature
    envelope = dagcbor.encode(envelope_fields)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"envelope is {len(envelope)} bytes, limit {MAX_ENVELOPE_BYTES}")
    return SignedBatch(envelope, batch, signature, operator_signature)


def decode_envelope(data: bytes, *, expected_cid: bytes | None = None) -> SignedBatch:
    """Check untrusted envelope bytes completely; return the batch or raise WireError.

    `expected_cid` is the content address the caller asked for (repair fetch by CID, or a
    gossip message id); a different batch is refused as CID_MISMATCH.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(Reject.MALFORMED_CBOR, "envelope must be bytes")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise WireError(Reject.OVERSIZE, f"{len(data)} bytes > {MAX_ENVELOPE_BYTES}")
    envelope = dagcbor.decode(data)
    _check_fields(envelope, _ENVELOPE_REQUIRED, _ENVELOPE_OPTIONAL, "envelope")
    signature = envelope["sig"]
    operator_signature = envelope.get("operator_sig")
    if len(signature) != SIGNATURE_LEN:
        raise WireError(Reject.SCHEMA, "sig must be 64 bytes")
    if operator_signature is not None and len(operator_signature) != OPERATOR_SIGNATURE_LEN:
        raise WireError(Reject.SCHEMA, "operator_sig must be 65 bytes")
    block = envelope["batch"]
    cid = dagcbor.cid_of(block)
    if expected_cid is not None and cid != expected_cid:
        raise WireError(Reject.CID_MISMATCH, "batch does not hash to the requested CID")
    fields = dagcbor.decode(block)
    if not isinstance(fields, dict):
        raise WireError(Reject.SCHEMA, "batch must be a map")
    if fields.get("version") != WIRE_VERSION:
        raise WireError(Reject.UNKNOWN_VERSION, f"batch version {fields.get('version')!r}")
    _check_fields(fields, BATCH_FIELDS, {}, "batch")
    sender = fields["sender"]
    if len(sender) != PUBLIC_KEY_LEN:
        raise WireError(Reject.BAD_KEY, "sender must be a 32-byte Ed25519 public key")
    if not verify(sender, BATCH_SIGNATURE_CONTEXT, cid, signature):
        raise WireError(Reject.BAD_SIGNATURE, "sender's signature over the CID does not verify")
    try:
        batch = _build(fields, cid)
    except WireError as exc:
        exc.sender = sender
        raise
    return SignedBatch(data, batch, signature, operator_signature)


def check_freshness(batch: Batch, now_ms: int, max_age_ms: int = 300_000) -> None:
    """Paper phase 1: refuse a batch whose timestamp is more than T_max from now, either way."""
    if batch.timestamp_ms < now_ms - max_age_ms:
        raise WireError(Reject.STALE, f"batch is {now_ms - batch.timestamp_ms} ms old")
    if batch.timestamp_ms > now_ms + max_age_ms:
        raise WireError(Reject.FUTURE, f"batch is {batch.timestamp_ms - now_ms} ms ahead")


def _check_fields(
    obj: Any, required: dict[str, type], optional: dict[str, type], what: str
) -> None:
    if not isinstance(obj, dict):
        raise WireError(Reject.SCHEMA, f"{what} must be a map")
    unknown = obj.keys() - required.keys() - optional.keys()
    missing = required.keys() - obj.keys()
    if unknown or missing:
        raise WireError(
            Reject.SCHEMA, f"{what} fields: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    for name, value in obj.items():
        kind = required.get(name) or optional[name]
        if not isinstance(value, kind):
            raise WireError(Reject.SCHEMA, f"{what}.{name} must be {kind.__name__}")


def _column(raw: bytes, dtype: str, rows: int, cols: int, name: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if len(raw) != rows * cols * width:
        raise WireError(
            Reject.SHAPE_MISMATCH, f"{name} has {len(raw)} bytes, expected {rows * cols * width}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(rows, cols)


def _build(fields: dict[str, Any], cid: bytes) -> Batch:
    """Validate a schema-checked batch map and turn it into a Batch (content rules)."""
    problem = domain_problem(fields["domain"])
    if problem:
        raise WireError(Reject.BAD_DOMAIN, problem)
    if not _MODEL_RE.fullmatch(fields["model"]):
        raise WireError(Reject.BAD_MODEL, "model id has forbidden characters or length")
    dim, group, scale_dtype = fields["dim"], fields["group"], fields["scale_dtype"]
    if not 1 <= dim <= MAX_DIMENSION:
        raise WireError(Reject.BAD_DIMENSION, f"dim {dim} outside 1..{MAX_DIMENSION}")
    if not 1 <= group <= dim:
        raise WireError(Reject.BAD_DIMENSION, f"group {group} outside 1..dim")
    if scale_dtype not in bitdelta.SCALE_DTYPES:
        raise WireError(Reject.SCHEMA, f"scale_dtype {scale_dtype!r} is not f32 or f16")
    texts = fields["texts"]
    m = len(texts)
    if m == 0:
        raise WireError(Reject.SCHEMA, "batch holds no experiences")
    if m > MAX_EXPERIENCES:
        raise WireError(Reject.TOO_MANY_EXPERIENCES, f"{m} > {MAX_EXPERIENCES}")
    baseline = _column(fields["baseline"], "<f4", 1, dim, "baseline")[0]
    signs = _column(fields["signs"], "u1", m, bitdelta.sign_bytes(dim), "signs")
    scale_type = bitdelta.SCALE_DTYPES[scale_dtype].str
    scales = _column(fields["scales"], scale_type, m, bitdelta.group_count(dim, group), "scales")
    quality_k = _column(fields["quality"], "<u2", m, 1, "quality")[:, 0]
    iteration = _column(fields["iteration"], "u1", m, 1, "iteration")[:, 0]
    scales = scales.astype(np.float32)  # compare in float32: 1e6 does not fit in float16
    if not (np.isfinite(baseline).all() and np.isfinite(scales).all()):
        raise WireError(Reject.NON_FINITE, "baseline or scales contain NaN or Inf")
    if np.abs(baseline).max() > MAX_ABS_VALUE or scales.min() < 0 or scales.max() > MAX_ABS_VALUE:
        raise WireError(Reject.OUT_OF_RANGE, f"baseline or scales outside [0, {MAX_ABS_VALUE:g}]")
    if not bitdelta.padding_is_clean(signs, dim):
        raise WireError(Reject.BAD_PADDING, "unused sign bits must be zero")
    domain = fields["domain"]
    for text in texts:
        problem_text = text_problem(text)
        if problem_text:
            raise WireError(*problem_text)
    ids = tuple(experience_id(domain, text) for text in texts)
    if len(set(ids)) != m:
        raise WireError(Reject.DUPLICATE_EXPERIENCE, "the same experience appears twice")
    return Batch(
        cid=cid,
        sender=fields["sender"],
        seq=fields["seq"],
        timestamp_ms=fields["timestamp_ms"],
        domain=domain,
        model=fields["model"],
        dim=dim,
        group=group,
        scale_dtype=scale_dtype,
        baseline=baseline,
        texts=tuple(texts),
        signs=signs,
        scales=scales,
        quality=dequantize_quality(quality_k),
        iteration=iteration,
        ids=ids,
    )
