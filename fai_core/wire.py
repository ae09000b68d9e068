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

Two versions are read. Version 1 carries the float32 baseline in every batch. Version 2
(`encode_batch_v2`) names it by CID (fai_core/baseline_block.py), sends scales as float16
and uses one-letter keys: a one-experience batch is ~300 bytes plus its text instead of
~2 KB. A v2 batch decoded without its baseline block is *unresolved* (`Batch.baseline` is
None) until the node supplies the block (`Batch.with_baseline`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fai_core import bitdelta, dagcbor
from fai_core.baseline_block import BaselineBlock, decode_baseline_block
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
#: Versions this codec reads; a node publishes one of them (`NodeConfig.wire_version`).
WIRE_VERSIONS = (1, 2)
#: Strictly below libp2p gossipsub's 1 MiB inbound RPC limit, with room for its framing.
MAX_ENVELOPE_BYTES = 1_000_000
MAX_EXPERIENCES = 1024
#: No honest embedding coordinate or scale comes near this; it keeps every sum finite.
MAX_ABS_VALUE = 1e6
OPERATOR_SIGNATURE_LEN = 65
BATCH_SIGNATURE_CONTEXT = b"fai/batch/v1\x00"
BATCH_SIGNATURE_CONTEXT_V2 = b"fai/batch/v2\x00"
_CONTEXTS = {1: BATCH_SIGNATURE_CONTEXT, 2: BATCH_SIGNATURE_CONTEXT_V2}
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

#: Version 2's batch block is a DAG-CBOR array of these items, in this order (version 1
#: names). `baseline` is a binary CID there; `model` lives in the baseline block, and there
#: is no `scale_dtype`: scales are always float16. An array, not a map, because at one
#: experience per batch the keys alone would cost ~10 % of the envelope.
V2_ITEMS: tuple[tuple[str, type], ...] = tuple(
    (name, BATCH_FIELDS[name])
    for name in (
        "version",
        "sender",
        "seq",
        "timestamp_ms",
        "domain",
        "dim",
        "group",
        "baseline",
        "texts",
        "signs",
        "scales",
        "quality",
        "iteration",
    )
)
#: Version 2 envelope: block, signature, optional operator signature, optional attached
#: baseline block (whose CID must be the batch's `baseline`).
_ENVELOPE_REQUIRED_V2 = {"b": bytes, "s": bytes}
_ENVELOPE_OPTIONAL_V2 = {"o": bytes, "a": bytes}
V2_SCALE_DTYPE = "f16"


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
    """A decoded, fully checked batch. Per-experience data is columnar, row i = experience i.

    `baseline` is None for a version 2 batch whose baseline block the decoder was not given
    (`resolved` is False): everything but the embeddings can be used, and `with_baseline`
    completes it."""

    cid: bytes
    sender: bytes
    seq: int
    timestamp_ms: int
    domain: str
    #: Version 2 carries the model id in the baseline block: None until resolved.
    model: str | None
    dim: int
    group: int
    scale_dtype: str
    baseline: np.ndarray | None
    texts: tuple[str, ...]
    signs: np.ndarray
    scales: np.ndarray
    quality: np.ndarray
    iteration: np.ndarray
    ids: tuple[bytes, ...]
    version: int = WIRE_VERSION
    #: Version 2: the CID of the baseline block this batch was encoded against.
    baseline_cid: bytes | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def resolved(self) -> bool:
        """True once the baseline values are known (always, for version 1)."""
        return self.baseline is not None

    @property
    def header(self) -> BatchHeader:
        """The fields the operator's EIP-712 signature covers, for signing or checking."""
        return BatchHeader(self.sender, self.seq, self.cid, self.timestamp_ms)

    @property
    def cid_text(self) -> str:
        """The CID in its text form, for logs and APIs."""
        return dagcbor.cid_text(self.cid)

    def with_baseline(self, block: BaselineBlock) -> Batch:
        """This batch completed with its baseline block; raise WireError (the signer's fault:
        the batch commits to the block) if the block is not the one named or does not fit."""
        if block.cid != self.baseline_cid:
            raise WireError(Reject.CID_MISMATCH, "not this batch's baseline block")
        try:
            _check_block_fits(block, self.dim)
        except WireError as exc:
            exc.sender = self.sender
            raise
        return replace(self, baseline=block.values, model=block.model)

    def embeddings(self) -> np.ndarray:
        """BitDelta reconstruction of every experience's embedding, (M, dim) float32."""
        if self.baseline is None:
            raise ValueError("batch baseline is not resolved: call with_baseline first")
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
    #: Version 2: the baseline block attached to the envelope, if it was.
    baseline_block: BaselineBlock | None = None

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
    """Compress, encode, address and sign a version 1 batch of the node's own experiences.

    Raises ValueError for a batch this node must not publish (mixed domains, someone
    else's experiences, wrong dimension, over the limits); such a batch would be refused by
    every receiver anyway.
    """
    base = np.ascontiguousarray(baseline, dtype=np.float32)
    dim = base.shape[0] if base.ndim == 1 else -1
    if not 1 <= dim <= MAX_DIMENSION:
        raise ValueError("baseline must be a vector of 1..MAX_DIMENSION values")
    if not np.isfinite(base).all() or np.abs(base).max() > MAX_ABS_VALUE:
        raise ValueError("baseline has non-finite or out-of-range values")
    columns = _columns(experiences, key, seq, timestamp_ms, model, base, group, scale_dtype)
    fields: dict[str, Any] = {
        "version": WIRE_VERSION,
        **columns,
        "model": model,
        "dim": dim,
        "group": group,
        "scale_dtype": scale_dtype,
        "baseline": base.astype("<f4").tobytes(),
    }
    block = dagcbor.encode(fields)
    cid = dagcbor.cid_of(block)
    batch = _build(fields, cid, base)
    signature = key.sign(BATCH_SIGNATURE_CONTEXT, cid)
    operator_signature = _operator_signature(operator_signer, batch)
    envelope_fields: dict[str, Any] = {"batch": block, "sig": signature}
    if operator_signature is not None:
        envelope_fields["operator_sig"] = operator_signature
    return _finish(envelope_fields, batch, signature, operator_signature, None)


def encode_batch_v2(
    experiences: Sequence[Experience],
    *,
    key: NodeKey,
    seq: int,
    timestamp_ms: int,
    baseline: BaselineBlock,
    attach_baseline: bool,
    group: int = bitdelta.DEFAULT_GROUP_SIZE,
    operator_signer: OperatorSigner | None = None,
) -> SignedBatch:
    """Compress, encode, address and sign a version 2 batch against a baseline block.

    The model id and dimension are the block's (the model travels only in the block).
    `attach_baseline` puts the block in the envelope (outside the signed batch, which names
    it by CID): a sender does so for its first batch on each topic after the block changed,
    so receivers rarely fetch it.
    Raises ValueError like `encode_batch`.
    """
    columns = _columns(
        experiences,
        key,
        seq,
        timestamp_ms,
        baseline.model,
        baseline.values,
        group,
        V2_SCALE_DTYPE,
    )
    fields: dict[str, Any] = {
        "version": 2,
        **columns,
        "dim": baseline.dim,
        "group": group,
        "baseline": baseline.cid,
    }
    block = dagcbor.encode([fields[name] for name, _ in V2_ITEMS])
    cid = dagcbor.cid_of(block)
    batch = _build_v2(fields, cid, baseline)
    signature = key.sign(BATCH_SIGNATURE_CONTEXT_V2, cid)
    operator_signature = _operator_signature(operator_signer, batch)
    envelope_fields: dict[str, Any] = {"b": block, "s": signature}
    if operator_signature is not None:
        envelope_fields["o"] = operator_signature
    if attach_baseline:
        envelope_fields["a"] = baseline.data
    attached = baseline if attach_baseline else None
    return _finish(envelope_fields, batch, signature, operator_signature, attached)


def _columns(
    experiences: Sequence[Experience],
    key: NodeKey,
    seq: int,
    timestamp_ms: int,
    model: str,
    base: np.ndarray,
    group: int,
    scale_dtype: str,
) -> dict[str, Any]:
    """Check what a node may publish and compress it: the fields both versions share, by
    their version 1 names."""
    if not 1 <= len(experiences) <= MAX_EXPERIENCES:
        raise ValueError(f"a batch holds 1..{MAX_EXPERIENCES} experiences")
    domain = experiences[0].domain
    dim = base.shape[0]
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
    return {
        "sender": key.public_key,
        "seq": seq,
        "timestamp_ms": timestamp_ms,
        "domain": domain,
        "texts": [exp.text for exp in experiences],
        "signs": code.signs.tobytes(),
        "scales": code.scales.astype(bitdelta.SCALE_DTYPES[scale_dtype]).tobytes(),
        "quality": quantize_quality(quality).tobytes(),
        "iteration": np.array([exp.iteration for exp in experiences], dtype=np.uint8).tobytes(),
    }


def _operator_signature(signer: OperatorSigner | None, batch: Batch) -> bytes | None:
    signature = signer(batch.header) if signer else None
    if signature is not None and len(signature) != OPERATOR_SIGNATURE_LEN:
        raise ValueError("operator signature must be 65 bytes (r || s || v)")
    return signature


def _finish(
    envelope_fields: dict[str, Any],
    batch: Batch,
    signature: bytes,
    operator_signature: bytes | None,
    attached: BaselineBlock | None,
) -> SignedBatch:
    envelope = dagcbor.encode(envelope_fields)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"envelope is {len(envelope)} bytes, limit {MAX_ENVELOPE_BYTES}")
    return SignedBatch(envelope, batch, signature, operator_signature, attached)


def decode_envelope(data: bytes, *, expected_cid: bytes | None = None) -> SignedBatch:
    """Check untrusted envelope bytes completely; return the batch or raise WireError.

    `expected_cid` is the content address the caller asked for (repair fetch by CID, or a
    gossip message id); a different batch is refused as CID_MISMATCH. The envelope's keys
    say its version: {"batch", "sig", ...} is version 1, {"b", "s", ...} version 2; the
    block inside must carry the same version.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(Reject.MALFORMED_CBOR, "envelope must be bytes")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise WireError(Reject.OVERSIZE, f"{len(data)} bytes > {MAX_ENVELOPE_BYTES}")
    envelope = dagcbor.decode(data)
    if isinstance(envelope, dict) and "b" in envelope:
        return _decode_v2(data, envelope, expected_cid)
    _check_fields(envelope, _ENVELOPE_REQUIRED, _ENVELOPE_OPTIONAL, "envelope")
    signature, operator_signature = _signatures(envelope["sig"], envelope.get("operator_sig"))
    fields, cid = _open_block(envelope["batch"], expected_cid)
    if not isinstance(fields, dict):
        raise WireError(Reject.SCHEMA, "batch must be a map")
    if fields.get("version") != WIRE_VERSION:
        raise WireError(Reject.UNKNOWN_VERSION, f"batch version {fields.get('version')!r}")
    _check_fields(fields, BATCH_FIELDS, {}, "batch")
    sender = _verified_sender(fields["sender"], cid, signature, BATCH_SIGNATURE_CONTEXT)
    try:
        batch = _build(fields, cid, fields["baseline"])
    except WireError as exc:
        exc.sender = sender
        raise
    return SignedBatch(data, batch, signature, operator_signature)


def envelope_version(data: bytes) -> int | None:
    """The wire version an envelope's keys claim (1 or 2), None if it is no envelope map.
    Unchecked: for choosing a topic, never for trusting the bytes."""
    try:
        envelope = dagcbor.decode(bytes(data))
    except WireError:
        return None
    if isinstance(envelope, dict):
        if "b" in envelope:
            return 2
        if "batch" in envelope:
            return 1
    return None


def _decode_v2(data: bytes, envelope: dict, expected_cid: bytes | None) -> SignedBatch:
    _check_fields(envelope, _ENVELOPE_REQUIRED_V2, _ENVELOPE_OPTIONAL_V2, "envelope")
    signature, operator_signature = _signatures(envelope["s"], envelope.get("o"))
    items, cid = _open_block(envelope["b"], expected_cid)
    fields = _v2_fields(items)
    attached = envelope.get("a")
    if attached is not None and dagcbor.cid_of(attached) != fields["baseline"]:
        # Outside the signed batch: whoever forwarded the envelope swapped or broke it.
        raise WireError(Reject.CID_MISMATCH, "attached baseline is not the batch's baseline")
    sender = _verified_sender(fields["sender"], cid, signature, BATCH_SIGNATURE_CONTEXT_V2)
    try:
        batch = _build_v2(fields, cid, None)  # the batch's content first, then its block
        block = None if attached is None else decode_baseline_block(attached, batch.baseline_cid)
        if block is not None:
            batch = batch.with_baseline(block)
    except WireError as exc:
        exc.sender = sender
        raise
    return SignedBatch(data, batch, signature, operator_signature, block)


def _signatures(signature: bytes, operator_signature: bytes | None) -> tuple[bytes, bytes | None]:
    if len(signature) != SIGNATURE_LEN:
        raise WireError(Reject.SCHEMA, "sig must be 64 bytes")
    if operator_signature is not None and len(operator_signature) != OPERATOR_SIGNATURE_LEN:
        raise WireError(Reject.SCHEMA, "operator_sig must be 65 bytes")
    return signature, operator_signature


def _open_block(block: bytes, expected_cid: bytes | None) -> tuple[Any, bytes]:
    cid = dagcbor.cid_of(block)
    if expected_cid is not None and cid != expected_cid:
        raise WireError(Reject.CID_MISMATCH, "batch does not hash to the requested CID")
    return dagcbor.decode(block), cid


def _v2_fields(items: Any) -> dict[str, Any]:
    """The version 2 block's items by name, after the version, arity and type checks."""
    if not isinstance(items, list) or not items:
        raise WireError(Reject.SCHEMA, "a version 2 batch is a non-empty array")
    if isinstance(items[0], bool) or items[0] != 2:
        raise WireError(Reject.UNKNOWN_VERSION, f"batch version {items[0]!r} in v2 form")
    if len(items) != len(V2_ITEMS):
        raise WireError(Reject.SCHEMA, f"a version 2 batch has {len(V2_ITEMS)} items")
    for (name, kind), value in zip(V2_ITEMS, items, strict=True):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise WireError(Reject.SCHEMA, f"batch.{name} must be {kind.__name__}")
    return {name: value for (name, _), value in zip(V2_ITEMS, items, strict=True)}


def _verified_sender(sender: bytes, cid: bytes, signature: bytes, context: bytes) -> bytes:
    if len(sender) != PUBLIC_KEY_LEN:
        raise WireError(Reject.BAD_KEY, "sender must be a 32-byte Ed25519 public key")
    if not verify(sender, context, cid, signature):
        raise WireError(Reject.BAD_SIGNATURE, "sender's signature over the CID does not verify")
    return sender


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
    if cols < 1 or len(raw) != rows * cols * width:
        raise WireError(
            Reject.SHAPE_MISMATCH, f"{name} has {len(raw)} bytes, expected {rows * cols * width}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(rows, cols)


def _check_block_fits(block: BaselineBlock, dim: int) -> None:
    if not _MODEL_RE.fullmatch(block.model):
        raise WireError(Reject.BAD_MODEL, "baseline model id has forbidden characters or length")
    if block.dim != dim:
        raise WireError(Reject.SHAPE_MISMATCH, f"baseline dim {block.dim} for a dim {dim} batch")


def _build_v2(fields: dict[str, Any], cid: bytes, block: BaselineBlock | None) -> Batch:
    """Content rules of a version 2 batch; its baseline and model from `block`, or None
    (unresolved) when the block did not come with it."""
    ref = fields["baseline"]
    if len(ref) != dagcbor.CID_LEN or not ref.startswith(dagcbor.CID_PREFIX):
        raise WireError(Reject.SCHEMA, "baseline must be a 36-byte dag-cbor sha2-256 CIDv1")
    batch = _build({**fields, "model": None, "scale_dtype": V2_SCALE_DTYPE}, cid, None)
    batch = replace(batch, version=2, baseline_cid=ref)
    return batch if block is None else batch.with_baseline(block)


def _build(fields: dict[str, Any], cid: bytes, baseline: bytes | np.ndarray | None) -> Batch:
    """Validate a schema-checked batch map (version 1 names) and turn it into a Batch.

    `baseline`: version 1's float32 bytes (checked here, in the spec's order), values
    already checked, or None for an unresolved version 2 batch."""
    problem = domain_problem(fields["domain"])
    if problem:
        raise WireError(Reject.BAD_DOMAIN, problem)
    if fields["model"] is not None and not _MODEL_RE.fullmatch(fields["model"]):
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
    if isinstance(baseline, bytes):
        baseline = _column(baseline, "<f4", 1, dim, "baseline")[0]
    signs = _column(fields["signs"], "u1", m, bitdelta.sign_bytes(dim), "signs")
    scale_type = bitdelta.SCALE_DTYPES[scale_dtype].str
    scales = _column(fields["scales"], scale_type, m, bitdelta.group_count(dim, group), "scales")
    quality_k = _column(fields["quality"], "<u2", m, 1, "quality")[:, 0]
    iteration = _column(fields["iteration"], "u1", m, 1, "iteration")[:, 0]
    scales = scales.astype(np.float32)  # compare in float32: 1e6 does not fit in float16
    base_ok = baseline is None or np.isfinite(baseline).all()
    if not (base_ok and np.isfinite(scales).all()):
        raise WireError(Reject.NON_FINITE, "baseline or scales contain NaN or Inf")
    base_max = 0.0 if baseline is None else np.abs(baseline).max()
    if base_max > MAX_ABS_VALUE or scales.min() < 0 or scales.max() > MAX_ABS_VALUE:
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
