"""A bare py-libp2p gossipsub peer: the baseline that bench/fleet.py compares FAI nodes with.

Same host and router as an FAI node (`fai_net.p2p.gossip.build_host` with default
`GossipSettings`: Noise + yamux, heartbeat 1 s, content-addressed message ids, seen cache
120 s, strict signing) and the same topic, but nothing else: no validator, no store, no
library. It drains its subscription (as the node's drain task does) and records, per
message id, when the message came out of the subscription channel; it publishes the given
envelopes at given offsets from a start time the bench hands it.

    python bench/bare_gossip_peer.py DIR --topic T [--seed MADDR ...]

DIR/plan.json (written by the bench before the start): [{"at": seconds after t0, "hex":
envelope hex}, ...]. The peer writes DIR/ready.json ({pid, peer_id, addrs}) once
listening and rewrites DIR/status.json ({peers, mesh}) every 0.5 s until SIGUSR2. On
SIGUSR1 it reads DIR/go.json ({"t0": unix time}) and publishes the plan; signals rather
than polling a file, so that an idle peer does only what gossipsub does (its idle CPU is
measured). It appends JSON lines to DIR/events.jsonl: {"ev": "published", "id", "t"} just
before each publish and {"ev": "delivered", "id", "t"} per message delivered (id = sha256
of the data, the message id; t = time.time(), comparable across processes).
It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_net.node.identity import NodeIdentity
from fai_net.p2p.gossip import GossipSettings, build_host, parse_multiaddrs, running


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


async def _connect(host, seeds: list[str]) -> None:
    for text in seeds:
        info = info_from_p2p_addr(parse_multiaddrs([text])[0])
        with trio.fail_after(30):
            while True:
                try:
                    await host.connect(info)
                    break
                except Exception:  # the seed may not be listening yet: retry
                    await trio.sleep(0.2)


async def main(directory: Path, topic: str, seeds: list[str]) -> None:
    for signum in (signal.SIGUSR1, signal.SIGUSR2):  # until the receiver is up: not fatal
        signal.signal(signum, signal.SIG_IGN)
    identity = NodeIdentity.from_seed(secrets.token_bytes(32))
    host, pubsub, router = build_host(identity.key_pair, GossipSettings())
    events = open(directory / "events.jsonl", "a", buffering=1)  # noqa: SIM115

    def record(kind: str, msg_id: str, t: float) -> None:
        events.write(json.dumps({"ev": kind, "id": msg_id, "t": t}) + "\n")

    try:
        async with running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]):
            subscription = await pubsub.subscribe(topic)
            addrs = [str(a) for a in host.get_addrs()]
            _write_json(
                directory / "ready.json",
                {"pid": os.getpid(), "peer_id": str(host.get_id()), "addrs": addrs},
            )
            async with trio.open_nursery() as nursery:

                async def drain() -> None:
                    while True:
                        msg = await subscription.get()
                        record("delivered", hashlib.sha256(msg.data).hexdigest(), time.time())

                status_scope = trio.CancelScope()

                async def status() -> None:
                    with status_scope:
                        while True:
                            peers = [p for p in host.get_connected_peers() if p != host.get_id()]
                            mesh = len(router.mesh.get(topic, ()))
                            _write_json(
                                directory / "status.json", {"peers": len(peers), "mesh": mesh}
                            )
                            await trio.sleep(0.5)

                async def publish() -> None:
                    t0 = json.loads((directory / "go.json").read_text())["t0"]
                    plan = json.loads((directory / "plan.json").read_text())
                    for step in sorted(plan, key=lambda s: s["at"]):
                        await trio.sleep(max(0.0, t0 + step["at"] - time.time()))
                        data = bytes.fromhex(step["hex"])
                        record("published", hashlib.sha256(data).hexdigest(), time.time())
                        await pubsub.publish(topic, data)

                async def control() -> None:
                    stop = (signal.SIGINT, signal.SIGTERM)
                    with trio.open_signal_receiver(*stop, signal.SIGUSR1, signal.SIGUSR2) as sigs:
                        async for signum in sigs:
                            if signum in stop:
                                nursery.cancel_scope.cancel()
                                return
                            if signum == signal.SIGUSR2:
                                status_scope.cancel()
                            elif signum == signal.SIGUSR1:
                                nursery.start_soon(publish)

                nursery.start_soon(control)
                nursery.start_soon(drain)
                nursery.start_soon(status)
                await _connect(host, seeds)
    finally:
        events.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--seed", action="append", default=[])
    args = parser.parse_args()
    trio.run(main, args.dir, args.topic, args.seed)
