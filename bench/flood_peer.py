"""A hostile peer that floods one node's topic: the issue's measured attack, as a subprocess.

    .venv/bin/python bench/flood_peer.py --target MULTIADDR --topic TOPIC --model MODEL_ID
        [--dim 384] [--rate 200] [--duration 60] [--keys 2000] [--seed N]
        [--mix valid=55,junk=15,bad_sig=15,stale=15] [--wait-go] [--hold 3]

A real py-libp2p host (`fai_net.p2p.gossip.build_host`: Noise + yamux) with no FAI validator:
it connects to the target, subscribes to the topic, waits until the target is in its mesh,
then sends `rate` messages per second for `duration` seconds, paced on absolute deadlines
(message i at start + i / rate).

How it sends. Every gossipsub message is built and signed before the flood (libp2p strict
signing, as `Pubsub.publish` signs; numbered seqnos, so no seen cache of ours stops one)
and put straight into py-libp2p's per-peer outbound queue for the target, the queue
`Pubsub.publish` ends in and whose send task writes to the stream. That queue holds 32 RPCs
and silently drops the rest (measured through `publish` on a loaded machine: 5,881 of
12,000 messages dropped at the source), so here the sender waits for room instead: when
the target reads slowly, TCP and yamux flow control push back and the achieved rate falls
below `rate`. Reported: what was queued (`sent`), what the send task wrote
(`written_to_stream`), how long it waited for room, and its lag behind the schedule.

The target reads behind the sender: a loaded node can hold several MB of the flood in its
yamux receive window (up to 16 MiB per stream) and socket buffers, and reads them for tens
of seconds after the last write. What is unread when this peer disconnects is lost, so it
stays connected after the flood: `--hold` seconds, or with `--wait-go` until a second line
(or EOF) on stdin, at most `--hold` seconds.

The mix (per cent of messages, shuffled with `--seed`):
- valid:   batches signed by `keys` fresh Ed25519 keys (each key in turn, seq 1, 2, ...),
           model `--model`, dimension `--dim`, domain of the topic, timestamp = when the
           pool was built, 16-32 experiences whose texts are 20-32-word sentences from the
           shipped coding corpus, each unique in the run (so the target re-embeds every
           one), with random float32 embeddings (cheap to make, as costly to check);
- junk:    random bytes, 256 B - 8 KiB;
- bad_sig: a valid batch with one byte near the end of the envelope flipped, checked to
           decode as `bad_signature` (the batch block still parses, its CID no longer
           matches the signature);
- stale:   a valid batch stamped one hour ago.

Every envelope is built before connecting (a pool of rate x duration messages: ~7 KB
each, ~85 MB for 60 s at 200/s), so that encoding and signing do not compete with sending
for the machine's 2 cores during the flood; that took `pregen_s`.

Output, one JSON object per line on stdout: {"event": "pregen", ...}, {"event": "meshed",
...}, {"event": "flooding", "t": unix time}, {"event": "done", "t": ..., "written": n} (the
last message left the queue), and last the report {"event": "report", "sent": {kind: n},
"achieved_rate": msg/s, "elapsed_s", "lag_s": {p50, p99, max}, "queue_full_waits", ...}.
With `--wait-go` it waits, after "meshed", for a line on stdin before flooding (the
benchmark starts the flood when its baseline window is over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import resource
import sys
import time
from collections import Counter

import numpy as np
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from fai_core.corpus import load_pattern_corpus
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience, text_problem
from fai_core.identity import NodeKey
from fai_core.wire import decode_envelope, encode_batch
from fai_net.node.identity import NodeIdentity
from fai_net.p2p.gossip import GossipSettings, build_host, parse_multiaddrs, running
from fai_net.p2p.topics import domain_of

KINDS = ("valid", "junk", "bad_sig", "stale")
DEFAULT_MIX = "valid=55,junk=15,bad_sig=15,stale=15"
STALE_MS = 3_600_000


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r} (kinds: {', '.join(KINDS)})")
        mix[name] = float(value)
    if sum(mix.values()) <= 0 or min(mix.values()) < 0:
        raise argparse.ArgumentTypeError("mix weights must be >= 0 and not all 0")
    return mix


def schedule(n: int, mix: dict[str, float], rng: np.random.Generator) -> list[str]:
    """n kinds in the mix's proportions (largest remainder), shuffled."""
    total = sum(mix.values())
    exact = {k: n * w / total for k, w in mix.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


class Texts:
    """Unique 20-32-word texts made of corpus sentences, "(case K)" at the end."""

    def __init__(self, domain: str, rng: np.random.Generator) -> None:
        sentences = [t for d, t in load_pattern_corpus() if d == domain]
        if not sentences:  # a domain without corpus sentences: any will do
            sentences = [t for _, t in load_pattern_corpus()]
        self.words = [s.split(" ") for s in sentences]
        self.rng = rng
        self.k = 0

    def next(self) -> str:
        rng = self.rng
        n = int(rng.integers(20, 33))  # words, "(case K)" included
        a, b = rng.integers(0, len(self.words), 2)
        words = (self.words[a] + self.words[b] + self.words[(b + 1) % len(self.words)])[: n - 2]
        self.k += 1
        text = " ".join(words) + f" (case {self.k})"
        if text_problem(text) is not None:  # not expected; a shorter one always passes
            text = " ".join(words[:10]) + f" (case {self.k})"
        return text


class Pool:
    """Builds the flood's envelopes."""

    def __init__(self, args, domain: str) -> None:
        self.args = args
        self.domain = domain
        self.rng = np.random.default_rng(args.seed)
        self.texts = Texts(domain, self.rng)
        self.keys = [NodeKey(self.rng.bytes(32)) for _ in range(args.keys)]
        self.seq = [0] * args.keys
        self.turn = 0
        self.baseline = np.zeros(args.dim, dtype=np.float32)
        self.rows = 0

    def _batch(self, timestamp_ms: int):
        i = self.turn % len(self.keys)
        self.turn += 1
        key = self.keys[i]
        self.seq[i] += 1
        m = int(self.rng.integers(16, 33))
        vectors = self.rng.standard_normal((m, self.args.dim)).astype(np.float32)
        qualities = self.rng.uniform(0.3, 0.9, m)
        exps = [
            Experience.create(
                text=self.texts.next(),
                embedding=vectors[j],
                quality=float(qualities[j]),
                domain=self.domain,
                source=key.public_key,
                created_ms=timestamp_ms,
            )
            for j in range(m)
        ]
        self.rows += m
        return encode_batch(
            exps,
            key=key,
            seq=self.seq[i],
            timestamp_ms=timestamp_ms,
            model=self.args.model,
            baseline=self.baseline,
        )

    def _bad_signature(self, envelope: bytes) -> bytes:
        for back in range(1, 64):
            data = bytearray(envelope)
            data[-back] ^= 0x01
            try:
                decode_envelope(bytes(data))
            except WireError as exc:
                if exc.reason is Reject.BAD_SIGNATURE:
                    return bytes(data)
        raise RuntimeError("no byte near the end flips into a bad signature")

    def build(self, kinds: list[str]) -> list[tuple[str, bytes]]:
        now = time.time_ns() // 1_000_000
        out = []
        for kind in kinds:
            if kind == "junk":
                data = self.rng.bytes(int(self.rng.integers(256, 8193)))
            elif kind == "stale":
                data = self._batch(now - STALE_MS).envelope
            elif kind == "bad_sig":
                data = self._bad_signature(self._batch(now).envelope)
            else:
                data = self._batch(now).envelope
            out.append((kind, data))
        return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def sign_messages(
    identity: NodeIdentity, topic: str, pool: list[tuple[str, bytes]]
) -> list[rpc_pb2.RPC]:
    """One RPC per envelope holding a gossipsub message signed as `Pubsub.publish` signs
    it (strict signing: from, seqno, data, topic, under libp2p's pubsub prefix)."""
    from_id = identity.peer_id.to_bytes()
    public = identity.key_pair.public_key.serialize()
    private = identity.key_pair.private_key
    prefix = PUBSUB_SIGNING_PREFIX.encode()
    rpcs = []
    for seqno, (_kind, data) in enumerate(pool, start=1):
        msg = rpc_pb2.Message(
            data=data, topicIDs=[topic], from_id=from_id, seqno=seqno.to_bytes(8, "big")
        )
        msg.signature = private.sign(prefix + msg.SerializeToString())
        msg.key = public
        rpcs.append(rpc_pb2.RPC(publish=[msg]))
    return rpcs


async def flood(args, identity: NodeIdentity, pool, rpcs) -> dict:
    host, pubsub, router = build_host(identity.key_pair, GossipSettings())
    # What actually went into the stream (a write that raises is not counted).
    written: Counter[str] = Counter()
    write_msg = pubsub.write_msg

    async def counting_write(stream, rpc) -> bool:
        ok = await write_msg(stream, rpc)
        if rpc.publish:
            written["ok" if ok else "failed"] += len(rpc.publish)
        return ok

    pubsub.write_msg = counting_write
    info = info_from_p2p_addr(parse_multiaddrs([args.target])[0])
    sent: Counter[str] = Counter()
    sent_bytes: Counter[str] = Counter()
    lags: list[float] = []
    waits = 0
    waited_s = 0.0
    report: dict = {}
    async with running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]):
        with trio.fail_after(30):
            await host.connect(info)
        subscription = await pubsub.subscribe(args.topic)
        meshed_at = trio.current_time()
        with trio.fail_after(60):
            while not (router.mesh.get(args.topic) and info.peer_id in pubsub.peer_queues):
                await trio.sleep(0.05)
        emit(event="meshed", peer_id=str(identity.peer_id), after_s=trio.current_time() - meshed_at)
        queue = pubsub.peer_queues[info.peer_id]
        room = queue._queue.max_size - 2  # leave a little room for gossip control
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                while True:
                    await subscription.get()

            nursery.start_soon(drain)
            if args.wait_go:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    raise SystemExit("stdin closed before go")
            cpu0 = time.process_time()
            emit(event="flooding", t=time.time(), messages=len(pool))
            start = trio.current_time()
            end = start + args.duration
            for i, ((kind, data), rpc) in enumerate(zip(pool, rpcs, strict=True)):
                deadline = start + i / args.rate
                await trio.sleep_until(deadline)
                if len(queue) >= room:  # the stream is behind: wait, never drop
                    waits += 1
                    began = trio.current_time()
                    while len(queue) >= room and trio.current_time() < end:
                        await trio.sleep(0.002)
                    waited_s += trio.current_time() - began
                now = trio.current_time()
                if now >= end or queue.closed:
                    break
                lags.append(now - deadline)
                if not queue.push(rpc):
                    break  # closed meanwhile: the target hung up
                sent[kind] += 1
                sent_bytes[kind] += len(data)
            # The queue empties into the stream: the flood is over when the last one left.
            with trio.move_on_after(30):
                while len(queue) and not queue.closed:
                    await trio.sleep(0.01)
            elapsed = trio.current_time() - start
            cpu = time.process_time() - cpu0
            connected = info.peer_id in host.get_connected_peers()
            emit(event="done", t=time.time(), written=written["ok"])
            with trio.move_on_after(args.hold):
                if args.wait_go:  # until told: the target may still be reading
                    await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                else:
                    await trio.sleep_forever()
            connected_at_end = info.peer_id in host.get_connected_peers()
            nursery.cancel_scope.cancel()
        total = sum(sent.values())
        report = {
            "event": "report",
            "sent": dict(sent),
            "sent_total": total,
            "sent_bytes": dict(sent_bytes),
            "planned": len(pool),
            "unsent": len(pool) - total,
            "rate_target": args.rate,
            "elapsed_s": round(elapsed, 3),
            "achieved_rate": round(total / elapsed, 2) if elapsed > 0 else None,
            "lag_s": {
                "p50": percentile(lags, 50),
                "p99": percentile(lags, 99),
                "max": max(lags) if lags else None,
            },
            "queue_full_waits": waits,
            "queue_full_wait_s": round(waited_s, 3),
            "left_in_queue": len(queue),
            "written_to_stream": dict(written),
            "cpu_s_flooding": round(cpu, 3),
            "still_connected": connected,
            "still_connected_at_end": connected_at_end,
            "contained_faults": dict(pubsub.faults),
        }
        with trio.move_on_after(5):
            await host.disconnect(info.peer_id)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", required=True, help="the node's multiaddr with /p2p/<id>")
    p.add_argument("--topic", required=True, help="e.g. /fai/exp/1/coding")
    p.add_argument("--model", required=True, help="model id the valid batches claim")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rate", type=float, default=200.0, help="messages per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--keys", type=int, default=2000, help="fresh signing keys to rotate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX))
    p.add_argument("--wait-go", action="store_true", help="flood after a line on stdin")
    p.add_argument(
        "--hold",
        type=float,
        default=3.0,
        help="seconds connected after the flood (with --wait-go: at most, until a line)",
    )
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.keys < 1:
        p.error("rate, duration and keys must be positive")
    domain = domain_of(args.topic)
    if domain is None:
        p.error(f"not an FAI topic: {args.topic!r}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    started = time.perf_counter()
    n = round(args.rate * args.duration)
    kinds = schedule(n, args.mix, np.random.default_rng(args.seed))
    builder = Pool(args, domain)
    pool = builder.build(kinds)
    seed = hashlib.sha256(b"fai-flood-peer" + str(args.seed).encode()).digest()
    identity = NodeIdentity.from_seed(seed)
    rpcs = sign_messages(identity, args.topic, pool)
    pregen_s = round(time.perf_counter() - started, 3)
    emit(
        event="pregen",
        pregen_s=pregen_s,
        messages=len(pool),
        by_kind=dict(Counter(kinds)),
        bytes=sum(len(d) for _, d in pool),
        rows=builder.rows,
        keys=args.keys,
    )
    report = trio.run(flood, args, identity, pool, rpcs)
    report["pregen_s"] = pregen_s
    report["keys"] = args.keys
    report["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
