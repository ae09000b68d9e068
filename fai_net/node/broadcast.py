"""The agent's own experiences: into the library and the outbox, then out as signed batches.

`add_experiences` embeds (outside the library limiter, so a merge round cannot delay it) and
stores local experiences; each joins its domain's outbox with the agent's own record of it,
which is what goes out even if a peer's record of the same pattern (same domain and text,
so the same id) has won the library meanwhile: that peer may be refused later, and then only
the copies other nodes published vouch for the pattern (fai_net/api/recall.py). The
loop publishes a domain's
outbox every `broadcast_interval_s`, or as soon as it holds `broadcast_threshold`
experiences, in batches of at most `max_batch`. Every publish is paced (`publish_spacing_s`)
and serialised, so gossipsub drops none. A seq is reserved durably before anything is signed
with it, and never while the wall clock is behind our last seq (fai_net/node/seq_clock.py).
Batches go out in the configured wire version; in version 2 the baseline travels as a block
of its own (`fai_core.baseline_block.BaselinePublisher`).
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import trio

from fai_core import dagcbor
from fai_core.baseline_block import BaselinePublisher, reference_block
from fai_core.clock import now_ms
from fai_core.errors import FaiError
from fai_core.experience import Experience
from fai_core.wire import SignedBatch, encode_batch, encode_batch_v2
from fai_net.api.control import ControlError
from fai_net.node import seq_clock
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState, read_library_sizes
from fai_net.p2p.topics import topic_for
from fai_net.ratelog import RateLimitedLog

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")
_clock_log = RateLimitedLog(log, interval_s=60.0)


def own_record(e: Experience) -> bytes:
    """The agent's own record of `e` as its outbox entry keeps it (domain and source are the
    entry's and the node's)."""
    return dagcbor.encode(
        {
            "text": e.text,
            "embedding": np.asarray(e.embedding, dtype="<f4").tobytes(),
            "quality": struct.pack("<d", e.quality),
            "created_ms": e.created_ms,
            "iteration": e.iteration,
        }
    )


def from_own_record(blob: bytes, domain: str, source: bytes) -> Experience | None:
    """`own_record`'s inverse; None for a record that does not decode into a valid
    experience (the entry then falls back to the library's record)."""
    try:
        d = dagcbor.decode(blob)
        return Experience(
            d["text"],
            np.frombuffer(d["embedding"], dtype="<f4"),
            struct.unpack("<d", d["quality"])[0],
            domain,
            source,
            d["created_ms"],
            d["iteration"],
        )
    except (FaiError, KeyError, TypeError, ValueError, struct.error):
        return None


class Broadcaster:
    def __init__(self, res: NodeResources, state: NodeState) -> None:
        self.res, self.state = res, state
        self._last: dict[str, float] = {}
        self._publish_lock = trio.Lock()
        self._locks: dict[str, trio.Lock] = {}
        reference = reference_block(res.embedder.model_id, res.gate.policy.dimension)
        self.publisher = BaselinePublisher(reference, res.config.baseline_drift)

    async def add_experiences(self, items: list[dict]) -> dict:
        """Embed and store the agent's own experiences; they join the domain's outbox."""
        res, state = self.res, self.state
        for item in items:
            problem = _item_problem(item, state.domains)
            if problem:
                raise ControlError("bad_request", problem)
        texts = [item["text"] for item in items]
        # Outside the library limiter: a merge round's insert must not delay the embedding.
        vectors = await trio.to_thread.run_sync(res.embedder.embed_as, "embed_local", texts)
        key = res.identity.public_key
        created = now_ms()
        exps = [
            Experience.create(
                text=item["text"],
                embedding=vector,
                quality=float(item.get("quality", 0.5)),
                domain=item["domain"],
                source=key,
                created_ms=created,
                iteration=int(item.get("iteration", 0)),
            )
            for item, vector in zip(items, vectors, strict=True)
        ]

        def add_local():
            added = res.library.add_local(exps)
            state.library_sizes = read_library_sizes(res.library)
            return added

        result = await trio.to_thread.run_sync(add_local, limiter=state.lib_limiter)
        res.outcomes.sighted((e.id, e.source) for e in exps)
        by_domain: dict[str, list[Experience]] = {}
        for exp in exps:
            by_domain.setdefault(exp.domain, []).append(exp)
        history = res.sender_history
        for domain, mine in by_domain.items():
            if history is not None:  # the one sender a node trusts bounds its references
                history.record_own(
                    domain, np.stack([e.embedding for e in mine]), [e.quality for e in mine]
                )
            res.store.outbox_add([e.id for e in mine], domain, [own_record(e) for e in mine])
            if res.store.outbox_count(domain) >= res.config.broadcast_threshold:
                state.broadcast_wakeup.set()
        return {"added": len(exps), "inserted": result.inserted, "ids": [e.id.hex() for e in exps]}

    async def loop(self) -> None:
        cfg, store = self.res.config, self.res.store
        started = trio.current_time()
        while True:
            await self.state.broadcast_wakeup.wait(1.0)
            clock = trio.current_time()
            for domain in store.outbox_domains():
                count = store.outbox_count(domain)
                last = self._last.get(domain, started)
                due = clock - last >= cfg.broadcast_interval_s
                if count >= cfg.broadcast_threshold or (count and due):
                    try:
                        await self.broadcast(domain)
                    except Exception:  # one bad domain must not stop the rest
                        log.exception("broadcast of %s failed", domain)

    async def broadcast(self, domain: str) -> dict:
        """Publish the domain's outbox now, in batches of at most `max_batch`."""
        lock = self._locks.setdefault(domain, trio.Lock())
        async with lock:  # the loop and a control call must not publish one outbox twice
            return await self._broadcast(domain)

    async def _broadcast(self, domain: str) -> dict:
        res = self.res
        sent, reached, batch_ids = 0, 0, []
        while True:
            ids = res.store.outbox_peek(domain, res.config.max_batch)
            if not ids:
                break
            exps = await self._own_entries(domain, ids)
            if not exps:
                continue
            baseline = await trio.to_thread.run_sync(
                res.library.baseline, limiter=self.state.lib_limiter
            )
            now = now_ms()
            if not seq_clock.usable(res.store.next_seq(), now):
                # Our counter is ahead of the wall clock: the clock stepped back. Signing
                # now could break the invariant that keeps a lost store from reusing a seq.
                _clock_log.warning(
                    "clock", "clock behind our last seq: holding the %s outbox", domain
                )
                break
            # Durable before anything is signed with it; never below the time floor.
            seq = res.store.reserve_seq(seq_clock.floor(now))
            signed = self._encode(exps, seq, now, baseline, domain)
            res.store.commit_local(signed, [e.id for e in exps], received_ms=now_ms())
            res.events("publishing", cid=signed.batch.cid_text, domain=domain, n=len(exps))
            topic = topic_for(domain, signed.batch.version)
            reached = max(reached, await self.publish(topic, signed.envelope))
            if signed.baseline_block is not None:
                self.publisher.attached(domain)
            sent += len(exps)
            batch_ids.append(signed.batch.cid_text)
        self._last[domain] = trio.current_time()
        return {
            "experiences_sent": sent,
            "peers_reached": reached,
            "batch_id": batch_ids[-1] if batch_ids else None,
            "batch_ids": batch_ids,
        }

    def _encode(self, exps, seq: int, now: int, mean, domain: str) -> SignedBatch:
        """Our batch in the wire version we publish (NodeConfig.wire_version)."""
        res = self.res
        signer = res.membership.operator_signer()
        if res.config.wire_version == 1:
            return encode_batch(
                exps,
                key=res.identity.key,
                seq=seq,
                timestamp_ms=now,
                model=res.embedder.model_id,
                baseline=mean,
                operator_signer=signer,
            )
        rows = sum(self.state.library_sizes.values())
        block, attach = self.publisher.for_batch(mean, rows, domain)
        return encode_batch_v2(
            exps,
            key=res.identity.key,
            seq=seq,
            timestamp_ms=now,
            baseline=block,
            attach_baseline=attach,
            operator_signer=signer,
        )

    async def _own_entries(self, domain: str, ids: list[bytes]) -> list[Experience]:
        """The outbox ids' experiences as this node publishes them: the library's record
        while it is ours (a later add may have improved it), else the record queued with
        the id. An id with neither (queued by an older node, then replaced or evicted)
        leaves the outbox."""
        res, own = self.res, self.res.identity.public_key
        entries = await trio.to_thread.run_sync(
            lambda: [res.library.get(i) for i in ids], limiter=self.state.lib_limiter
        )
        queued = res.store.outbox_records(ids)
        out, gone = [], []
        for i, entry in zip(ids, entries, strict=True):
            exp = None if entry is None else entry.experience
            if exp is None or exp.source != own or exp.domain != domain:
                blob = queued.get(i)
                exp = None if blob is None else from_own_record(blob, domain, own)
            if exp is None or exp.id != i:
                gone.append(i)
            else:
                out.append(exp)
        if gone:
            res.store.outbox_remove(gone)
        return out

    async def publish(self, topic: str, data: bytes) -> int:
        async with self._publish_lock:
            peers = len(self.res.pubsub.peer_topics.get(topic, ()))
            await self.res.pubsub.publish(topic, data)
            self.res.metrics.sent(len(data))
            await trio.sleep(self.res.config.publish_spacing_s)
            return peers


def _item_problem(item: object, domains: list[str]) -> str | None:
    """Why an `add` item cannot become an experience, checked before any embedding work."""
    from fai_core.experience import text_problem
    from fai_core.text_screen import screen

    if not isinstance(item, dict) or not set(item) <= {"text", "domain", "quality", "iteration"}:
        return "each experience is {text, domain, quality?, iteration?}"
    problem = text_problem(item.get("text"))
    if problem:
        return problem[1]
    finding = screen(item["text"])
    if finding is not None:  # peers would drop it; the agent's own library must not hold it
        return f"refused by the steering screen ({finding.category}): {finding.excerpt!r}"
    if item.get("domain") not in domains:
        return f"domain {item.get('domain')!r} is not subscribed (subscribe first)"
    quality = item.get("quality", 0.5)
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        return "quality must be a number in (0, 1)"
    if not 0.0 < float(quality) < 1.0:
        return "quality must be a number in (0, 1)"
    iteration = item.get("iteration", 0)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration < 256:
        return "iteration must be an integer in 0..255"
    return None
