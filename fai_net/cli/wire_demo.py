"""The core demo: one batch through the whole wire path, as sender and as receiver.

It embeds nothing: the vectors are synthetic (clustered, unit-norm, like sentence
embeddings), so the demo runs in a second on a fresh install. What it shows is real: the
bytes on the wire, the CID, the signature check, BitDelta fidelity, and that a single
flipped bit makes a receiver refuse the batch with a reason code.

`add_demo_command` is built on every `fai` invocation, so numpy and the wire codec are
imported inside the functions that run the demo: `fai --help` must not load numpy.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from fai_net.cli.common import add_json_flag, print_json

if TYPE_CHECKING:
    import numpy as np

    from fai_core.identity import NodeKey

_TOOLS = ["ripgrep", "pytest", "git bisect", "mypy", "docker build", "sqlite", "curl", "ruff"]
_CONDITIONS = [
    "a test fails only in CI",
    "an import cycle appears",
    "the build cache is stale",
    "a flaky network call times out",
    "the diff touches generated files",
    "a migration changes a column type",
]
_ACTIONS = [
    "reproduce locally with the same seed before editing",
    "read the full traceback and fix the first error only",
    "pin the dependency and record why in the lockfile",
    "add a regression test that fails before the fix",
]


def add_demo_command(commands) -> None:
    """`fai demo`."""
    demo = commands.add_parser(
        "demo",
        help="encode, sign and verify one batch of synthetic experiences (no network)",
        description="Build a signed, content-addressed batch of synthetic experiences, "
        "decode and verify it as a receiver would, and show a tampered copy being refused.",
    )
    demo.add_argument("--experiences", type=int, default=100, help="batch size (default 100)")
    demo.add_argument("--dim", type=int, default=384, help="embedding dimension (default 384)")
    demo.add_argument("--group", type=int, default=128, help="BitDelta group size (default 128)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    add_json_flag(demo, help="print the report as JSON")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    report = run_core_demo(n=args.experiences, dim=args.dim, group=args.group, seed=args.seed)
    if args.json:
        print_json(report)
    else:
        print(report["summary"])
    return 0


def _patterns(n: int, rng: np.random.Generator) -> list[str]:
    combos = [(t, c, a) for t in _TOOLS for c in _CONDITIONS for a in _ACTIONS]
    picks = rng.permutation(len(combos))[:n]
    return [f"When {combos[i][1]}, run {combos[i][0]} and {combos[i][2]}" for i in picks]


def run_core_demo(n: int = 100, dim: int = 384, group: int = 128, seed: int = 42) -> dict[str, Any]:
    """Encode and sign one batch of `n` synthetic experiences, decode and verify it as a
    receiver would, flip one bit of a copy, and report sizes, fidelity and timings."""
    import numpy as np

    from fai_core import dagcbor, wire
    from fai_core.identity import NodeKey

    if not 1 <= n <= min(wire.MAX_EXPERIENCES, len(_TOOLS) * len(_CONDITIONS) * len(_ACTIONS)):
        raise ValueError(f"--experiences must be 1..{len(_TOOLS) * 24}")
    rng = np.random.default_rng(seed)
    key = NodeKey(rng.bytes(32))
    now_ms = int(time.time() * 1000)
    experiences, vectors = _synthetic_experiences(n, dim, rng, key, now_ms)
    baseline = vectors.mean(axis=0)

    t0 = time.perf_counter()
    signed = wire.encode_batch(
        experiences,
        key=key,
        seq=1,
        timestamp_ms=now_ms,
        model="demo-synthetic",
        baseline=baseline,
        group=group,
    )
    t1 = time.perf_counter()
    received = wire.decode_envelope(signed.envelope, expected_cid=signed.cid)
    wire.check_freshness(received.batch, int(time.time() * 1000))
    reconstructed = received.batch.embeddings()
    t2 = time.perf_counter()

    cosine = (reconstructed * vectors).sum(axis=1) / np.linalg.norm(reconstructed, axis=1)
    text_bytes = sum(len(dagcbor.encode(e.text)) for e in experiences)
    raw_float32 = n * dim * 4
    report = {
        "cid": signed.batch.cid_text,
        "sender": key.public_key.hex(),
        "experiences": n,
        "dim": dim,
        "group": group,
        "envelope_bytes": len(signed.envelope),
        "text_bytes": text_bytes,
        "non_text_bytes_per_experience": (len(signed.envelope) - text_bytes) / n,
        "float32_embedding_bytes": raw_float32,
        "embedding_compression": raw_float32 / (len(signed.envelope) - text_bytes),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "encode_sign_ms": (t1 - t0) * 1e3,
        "decode_verify_reconstruct_ms": (t2 - t1) * 1e3,
        "tampered_copy": _tampered_copy(signed.envelope),
    }
    report["summary"] = _summary(report)
    return report


def _synthetic_experiences(n: int, dim: int, rng: np.random.Generator, key: NodeKey, now_ms: int):
    """(experiences, their float32 vectors): clustered unit vectors, like sentence
    embeddings, under pattern texts of the demo's vocabulary."""
    import numpy as np

    from fai_core.experience import Experience

    centres = rng.standard_normal((6, dim))
    vectors = centres[rng.integers(0, 6, n)] + 0.6 * rng.standard_normal((n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    experiences = [
        Experience.create(
            text,
            vectors[i],
            float(rng.uniform(0.05, 0.95)),
            "coding",
            key.public_key,
            now_ms,
            iteration=int(rng.integers(0, 4)),
        )
        for i, text in enumerate(_patterns(n, rng))
    ]
    return experiences, vectors


def _tampered_copy(envelope: bytes) -> str:
    """What a receiver says of the envelope with one bit flipped in its middle."""
    from fai_core import wire
    from fai_core.errors import WireError

    tampered = bytearray(envelope)
    tampered[len(tampered) // 2] ^= 0x01
    try:
        wire.decode_envelope(bytes(tampered))
        return "ACCEPTED (this is a bug)"
    except WireError as exc:
        return f"refused: {exc.reason.value}"


def _summary(report: dict[str, Any]) -> str:
    n, dim = report["experiences"], report["dim"]
    return "\n".join(
        [
            f"batch {report['cid']}",
            f"  sender      {report['sender'][:16]}...  seq 1  domain coding",
            f"  contents    {n} experiences, d={dim}, g={report['group']}",
            f"  on the wire {report['envelope_bytes']:,} bytes "
            f"({report['text_bytes']:,} of them pattern text)",
            f"  per exp.    {report['non_text_bytes_per_experience']:.1f} bytes besides text "
            f"(float32 embedding alone: {dim * 4} bytes)",
            f"  fidelity    cos(e, e_hat) mean {report['cosine_mean']:.3f}, "
            f"min {report['cosine_min']:.3f}",
            f"  time        encode+sign {report['encode_sign_ms']:.2f} ms, "
            f"decode+verify+reconstruct {report['decode_verify_reconstruct_ms']:.2f} ms",
            f"  one bit flipped in transit: {report['tampered_copy']}",
        ]
    )
