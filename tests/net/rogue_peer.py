"""A misbehaving peer for the fleet tests: a real py-libp2p host that publishes given bytes.

It has no FAI validator, so it publishes whatever it is told: malformed CBOR, forged
signatures, stale, replayed and equivocating batches. Usage:

    python tests/net/rogue_peer.py SEED_HEX TARGET_MULTIADDR PLAN.json

PLAN.json: {"topic": str, "steps": [{"hex": envelope_hex, "delay": seconds_before}, ...],
"hold": seconds to stay connected afterwards}. Prints "meshed" once it has a mesh peer and
"done" after the last publish.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_net.node.identity import NodeIdentity
from fai_net.p2p.gossip import GossipSettings, build_host, parse_multiaddrs, running


async def main(seed_hex: str, target: str, plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    identity = NodeIdentity.from_seed(bytes.fromhex(seed_hex))
    host, pubsub, router = build_host(identity.key_pair, GossipSettings())
    # Honest nodes use content-addressed message ids, so their own seen cache would stop a
    # replay of the same bytes at the source; a rogue numbers its messages instead.
    pubsub._msg_id_constructor = lambda msg: msg.from_id + msg.seqno
    async with running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]):
        await host.connect(info_from_p2p_addr(parse_multiaddrs([target])[0]))
        topic = plan["topic"]
        subscription = await pubsub.subscribe(topic)
        with trio.fail_after(30):
            while not router.mesh.get(topic):
                await trio.sleep(0.1)
        print("meshed", flush=True)
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                while True:
                    await subscription.get()

            nursery.start_soon(drain)
            for step in plan["steps"]:
                await trio.sleep(step.get("delay", 0.2))
                await pubsub.publish(topic, bytes.fromhex(step["hex"]))
            print("done", flush=True)
            await trio.sleep(plan.get("hold", 5))
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
