"""Hostile and fragile peers for tests/net/test_hostile_peers.py, run as a subprocess (a stock
py-libp2p host can itself crash on what it is made to do) and reporting one JSON line.

    python tests/net/hostile_peer.py attack TARGET_MULTIADDR TOPIC
        A bare Noise + yamux host (no pubsub of its own) that opens one stream per case on
        the target and writes malformed or hostile bytes: broken protobuf, oversized length
        prefixes, garbage, a publish whose `key` does not deserialize, bogus control
        messages, garbage on identify, identify-push and the FAI repair protocol. Prints
        {"cases": {name: outcome}} where outcome says what the target did with the stream.

    python tests/net/hostile_peer.py join PLAN.json
        Rounds of "a peer publishes a ~1 MB batch through the target, then fresh peers join":
        per round a publisher (fresh key) connects and publishes the round's envelope, this
        script waits until the target's control socket lists the batch (so the message is in
        the target's gossipsub message cache), then connects `joiners` fresh GuardedPubsub
        hosts at once and records, for each, whether and when it saw the target's
        subscription and the message, and the faults its pubsub contained. PLAN.json:
        {"target", "topic", "domain", "socket", "wait": s, "hold": s,
         "rounds": [{"envelope": path, "cid": text, "joiners": n}, ...]}.
        Prints {"rounds": [{"accepted_s", "warnings", "joiners": [...]}, ...]}.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import sys
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.utils.varint import encode_uvarint

from fai_net.api.control import ControlClient
from fai_net.node.identity import NodeIdentity
from fai_net.p2p.gossip import GossipSettings, build_host, running

MESHSUB = TProtocol("/meshsub/1.1.0")
IDENTIFY = TProtocol("/ipfs/id/1.0.0")
IDENTIFY_PUSH = TProtocol("/ipfs/id/push/1.0.0")
REPAIR = TProtocol("/fai/repair/1.0.0")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def framed(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


def attack_cases(topic: str) -> dict[str, tuple[TProtocol, bytes]]:
    rng = random.Random(20240611)  # the same garbage every run

    def junk(n: int) -> bytes:
        return rng.randbytes(n)

    sub = rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)
    garbage_key = rpc_pb2.RPC(
        subscriptions=[sub],
        publish=[
            rpc_pb2.Message(
                from_id=secrets.token_bytes(34),  # not a peer id a key can be read from
                data=secrets.token_bytes(64),  # fresh: not in the target's seen cache
                seqno=secrets.token_bytes(8),
                topicIDs=[topic],
                signature=secrets.token_bytes(64),
                key=b"\x08\x01\x12\x05junk!" + junk(16),  # an Ed25519 key that is not one
            )
        ],
    )
    bogus_control = rpc_pb2.RPC(
        subscriptions=[sub],
        control=rpc_pb2.ControlMessage(
            ihave=[rpc_pb2.ControlIHave(topicID=topic, messageIDs=[junk(32) for _ in range(5000)])],
            iwant=[rpc_pb2.ControlIWant(messageIDs=[junk(32) for _ in range(500)])],
            graft=[
                rpc_pb2.ControlGraft(topicID=topic),
                rpc_pb2.ControlGraft(topicID="/no/such/topic"),
                rpc_pb2.ControlGraft(topicID=""),
            ],
            prune=[
                rpc_pb2.ControlPrune(
                    topicID=topic,
                    peers=[rpc_pb2.PeerInfo(peerID=junk(40), signedPeerRecord=junk(200))],
                    backoff=(1 << 64) - 1,
                ),
                rpc_pb2.ControlPrune(topicID="/no/such/topic", backoff=0),
            ],
        ),
    )
    bad_record = rpc_pb2.RPC(subscriptions=[sub], senderRecord=junk(300))
    # SubOpts{subscribe: true, topicid: <invalid UTF-8>}, hand-encoded: protobuf's own
    # serializer would refuse to write it.
    bad_utf8 = b"\x0a\x06\x08\x01\x12\x02\xff\xfe"
    return {
        # varint 4, then field 1 (subscriptions, length-delimited) claiming 100 bytes.
        "truncated_protobuf": (MESHSUB, b"\x04\x0a\x64\x01\x02"),
        "oversized_length": (MESHSUB, encode_uvarint(0xFFFFFFFF) + junk(256)),
        "garbage": (MESHSUB, junk(4096)),
        "framed_garbage": (MESHSUB, framed(junk(300))),
        "invalid_utf8_topic": (MESHSUB, framed(bad_utf8)),
        "publish_garbage_key": (MESHSUB, framed(garbage_key.SerializeToString())),
        "bogus_control": (MESHSUB, framed(bogus_control.SerializeToString())),
        "garbage_sender_record": (MESHSUB, framed(bad_record.SerializeToString())),
        "identify_garbage": (IDENTIFY, junk(512)),
        "identify_push_garbage": (IDENTIFY_PUSH, framed(junk(300))),
        "repair_garbage": (REPAIR, junk(2048)),
    }


async def _one_case(host, peer_id, protocol: TProtocol, data: bytes) -> str:
    """Write `data` on a new stream and say what the target did with it: "closed" (reset
    or closed it), "eof", "answered" (wrote something back), "open" (still reading after
    3 s) or an error."""
    try:
        with trio.fail_after(10):
            stream = await host.new_stream(peer_id, [protocol])
    except Exception as exc:
        return f"no stream: {exc!r}"
    outcome = "open"
    try:
        await stream.write(data)
        with trio.move_on_after(3):
            outcome = "answered" if await stream.read(65536) else "eof"
    except Exception as exc:
        name = type(exc).__name__
        closed = any(word in name for word in ("Reset", "EOF", "Closed"))
        outcome = "closed" if closed else f"error: {name}"
    finally:
        with trio.move_on_after(2):
            with suppress(Exception):
                await stream.reset()
    return outcome


async def attack(target: str, topic: str) -> None:
    key_pair = NodeIdentity.from_seed(secrets.token_bytes(32)).key_pair
    noise = NoiseTransport(
        libp2p_keypair=key_pair,
        noise_privkey=new_x25519_key_pair().private_key,
        early_data=None,
    )
    host = new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX")
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    outcomes: dict[str, str] = {}
    async with host.run(listen_addrs=LISTEN):
        with trio.fail_after(20):
            await host.connect(info)

        async def run_case(name: str, protocol: TProtocol, data: bytes) -> None:
            outcomes[name] = await _one_case(host, info.peer_id, protocol, data)
            print(f"{name}: {outcomes[name]}", file=sys.stderr, flush=True)

        async with trio.open_nursery() as nursery:  # all at once, one stream each
            for name, (protocol, data) in attack_cases(topic).items():
                nursery.start_soon(run_case, name, protocol, data)
        # Still connected after all that: the target did not hang up on the connection.
        outcomes["still_connected"] = str(info.peer_id in host.get_connected_peers())
        with trio.move_on_after(5):
            await host.disconnect(info.peer_id)
    print(json.dumps({"cases": outcomes}), flush=True)


class _Warnings(logging.Handler):
    """py-libp2p's own containment (e.g. an oversized frame) logs a warning, not a fault."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


async def _start_peer(stack: AsyncExitStack):
    identity = NodeIdentity.from_seed(secrets.token_bytes(32))
    host, pubsub, router = build_host(identity.key_pair, GossipSettings())
    await stack.enter_async_context(running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]))
    return host, pubsub


async def _watch_joiner(host, pubsub, subscription, info, envelope, topic, plan, out) -> None:
    start = trio.current_time()
    out.update(sub_s=None, msg_s=None, data_ok=False, lost_sub=False)
    try:
        with trio.fail_after(10):
            await host.connect(info)
    except Exception as exc:
        out["connect_error"] = repr(exc)
        return
    out["connect_s"] = round(trio.current_time() - start, 3)

    async def watch_subscription() -> None:
        while True:
            present = info.peer_id in pubsub.peer_topics.get(topic, ())
            if present and out["sub_s"] is None:
                out["sub_s"] = round(trio.current_time() - start, 3)
            elif not present and out["sub_s"] is not None:
                out["lost_sub"] = True
            await trio.sleep(0.02)

    async def watch_message() -> None:
        msg = await subscription.get()
        out["msg_s"] = round(trio.current_time() - start, 3)
        out["data_ok"] = msg.data == envelope
        out["msg_len"] = len(msg.data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_subscription)
        with trio.move_on_after(plan["wait"]):
            await watch_message()
        # Keep reading a while: a late interleaved write would show up as a fault here.
        await trio.sleep(plan["hold"])
        nursery.cancel_scope.cancel()
    out["still_subscribed"] = info.peer_id in pubsub.peer_topics.get(topic, ())
    out["faults"] = dict(pubsub.faults)


async def _round(plan: dict, spec: dict, client: ControlClient, warnings: _Warnings) -> dict:
    topic = plan["topic"]
    info = info_from_p2p_addr(multiaddr.Multiaddr(plan["target"]))
    envelope = Path(spec["envelope"]).read_bytes()
    warnings.records.clear()
    result: dict = {"joiners": []}
    async with AsyncExitStack() as stack:
        pub_host, publisher = await _start_peer(stack)
        await pub_host.connect(info)
        await publisher.wait_for_subscription(info.peer_id, topic, timeout=15)
        joiners = []
        for _ in range(spec["joiners"]):
            host, pubsub = await _start_peer(stack)
            joiners.append((host, pubsub, await pubsub.subscribe(topic)))

        def listed() -> bool:
            return spec["cid"] in client.call("batches", domain=plan["domain"])["cids"]

        start = trio.current_time()
        await publisher.publish(topic, envelope)
        with trio.fail_after(20):
            while not await trio.to_thread.run_sync(listed):
                await trio.sleep(0.02)
        result["accepted_s"] = round(trio.current_time() - start, 3)
        async with trio.open_nursery() as nursery:
            for host, pubsub, subscription in joiners:
                out: dict = {}
                result["joiners"].append(out)
                nursery.start_soon(
                    _watch_joiner, host, pubsub, subscription, info, envelope, topic, plan, out
                )
        # Leave cleanly: hang up on the target before the hosts stop.
        for host, _pubsub, _sub in [(pub_host, None, None), *joiners]:
            with trio.move_on_after(5):
                await host.disconnect(info.peer_id)
    result["warnings"] = list(warnings.records)
    return result


async def join(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    client = ControlClient(Path(plan["socket"]), timeout=30)
    warnings = _Warnings()
    logging.getLogger("libp2p").addHandler(warnings)
    logging.getLogger("fai_net").addHandler(warnings)
    rounds = []
    for i, spec in enumerate(plan["rounds"]):
        with trio.fail_after(60):
            rounds.append(await _round(plan, spec, client, warnings))
        print(f"round {i}: {json.dumps(rounds[-1])}", file=sys.stderr, flush=True)
    print(json.dumps({"rounds": rounds}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, *rest = sys.argv[1:]
    if mode == "attack":
        trio.run(attack, *rest)
    elif mode == "join":
        trio.run(join, *rest)
    else:
        sys.exit(f"unknown mode {mode!r}")
