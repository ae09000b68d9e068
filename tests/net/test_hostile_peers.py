"""Peers that send what py-libp2p 0.8.1 cannot take, against real node processes on 127.0.0.1.

The two defects `fai_net.p2p.gossip.GuardedPubsub` closes (see that module's docstring):
- a frame whose protobuf does not parse (or a publish whose `key` does not deserialize)
  raised out of py-libp2p's pubsub and ended the node process;
- two writers on one pubsub stream (the per-peer send task and the replay of recent
  messages to a new peer) interleaved the yamux frames of a large message, so peers joining
  right after a ~1 MB batch got undecodable bytes, dropped the stream and with it the
  node's subscription.

The hostile and joining peers run in a subprocess (tests/net/hostile_peer.py): a stock
py-libp2p host can itself be brought down by what it is made to do.

The ~1 MB batch reaches the node's message cache from a peer (the node validates and
forwards it, like any batch on the topic), not through the control action `publish_raw`:
a control request line is at most 1 MiB and carries the envelope as hex (2 bytes per byte),
and the node's own broadcasts hold at most `max_batch` (100) experiences.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time

import pytest

from fai_core import dagcbor
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.wire import MAX_ENVELOPE_BYTES, SignedBatch, encode_batch
from fai_net.node.identity import NodeIdentity
from fai_net.p2p.topics import topic_for
from tests.support.fleet import ROOT, corpus_by_domain, temporary_fleet, wait_for

HELPER = ROOT / "tests/net/hostile_peer.py"
DOMAIN = "coding"
TOPIC = topic_for(DOMAIN, 1)


@pytest.fixture
def fleet():
    with temporary_fleet() as f:
        yield f


def run_helper(*args: str, timeout: float) -> dict:
    """Run hostile_peer.py and return its JSON report (its last stdout line)."""
    try:
        proc = subprocess.run(
            [sys.executable, str(HELPER), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hostile_peer.py {args[0]} ran over {timeout} s") from exc
    assert proc.returncode == 0, f"hostile_peer.py exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def answering(node) -> dict:
    """The node's status, asserting that the process is alive and its control socket answers."""
    try:
        status = node.call("status")
    except Exception as exc:
        code = node.proc.poll()
        raise AssertionError(
            f"{node.name} does not answer: {exc!r}, exit code {code}:\n{node.tail(60)}"
        ) from None
    assert node.proc.poll() is None, f"{node.name} exited:\n{node.tail(60)}"
    return status


def node_log(node) -> str:
    return node.log_path.read_text(errors="replace")


def in_library(node, text: str) -> bool:
    hits = node.call("search", query=text, domain=DOMAIN, k=1)["hits"]
    return bool(hits) and hits[0]["text"] == text


def test_malformed_frames_cost_the_peer_a_stream_not_the_node_its_life(fleet):
    started = time.monotonic()
    n0 = fleet.add("n0", (DOMAIN,), seeds=[])
    cases = run_helper("attack", n0.addr, TOPIC, timeout=60)["cases"]
    print("attack outcomes:", json.dumps(cases, indent=1))

    status = answering(n0)
    # The frames that cannot be read end their stream, and only their stream.
    assert cases["truncated_protobuf"] == "closed", cases
    assert cases["oversized_length"] == "closed", cases
    assert cases["still_connected"] == "True", cases
    faults = status["contained_faults"]
    assert faults.get("rpc_stream", 0) >= 1 and faults.get("push_msg", 0) >= 1, faults
    log = node_log(n0)
    assert "dropping pubsub stream of" in log, n0.tail(80)
    assert "dropping a message from" in log, n0.tail(80)
    assert "Traceback" not in log, log[-6000:]

    # ... and it still does its job: an honest node joins and experiences travel both ways.
    n1 = fleet.add("n1", (DOMAIN,), seeds=[n0.addr])
    wait_for(lambda: n0.call("status")["peers"] >= 1, 20, "n0 to see n1")
    texts = corpus_by_domain()[DOMAIN]
    mine, theirs = texts[:3], texts[3:6]
    for node, batch in ((n0, mine), (n1, theirs)):
        node.call("add", experiences=[{"text": t, "domain": DOMAIN, "quality": 0.7} for t in batch])
        assert node.call("broadcast", domain=DOMAIN)["experiences_sent"] == 3
    wait_for(lambda: all(in_library(n1, t) for t in mine), 30, "n0's experiences on n1")
    wait_for(lambda: all(in_library(n0, t) for t in theirs), 30, "n1's experiences on n0")
    answering(n0)
    answering(n1)
    assert "Traceback" not in node_log(n0) + node_log(n1)
    print(f"test took {time.monotonic() - started:.1f} s")


def big_batch(model: str, dim: int, salt: str) -> SignedBatch:
    """A real signed batch of ~955 KB: 960 experiences of 32 words (~930 bytes) each, from
    a fresh key (receive budgets are per sender: one such batch fits a full bucket)."""
    identity = NodeIdentity.from_seed(secrets.token_bytes(32))
    embedder = HashingEmbedder(dim)
    assert embedder.model_id == model, (embedder.model_id, model)

    def text(i: int) -> str:
        words = (hashlib.sha256(f"{salt}/{i}/{j}".encode()).hexdigest()[:28] for j in range(32))
        return " ".join(words)

    texts = [text(i) for i in range(960)]
    vectors = embedder.embed(texts)
    now = int(time.time() * 1000)
    experiences = [
        Experience.create(
            text=t,
            embedding=v,
            quality=0.6,
            domain=DOMAIN,
            source=identity.public_key,
            created_ms=now,
        )
        for t, v in zip(texts, vectors, strict=True)
    ]
    return encode_batch(
        experiences,
        key=identity.key,
        seq=0,
        timestamp_ms=now,
        model=model,
        baseline=vectors.mean(axis=0),
    )


ROUNDS, JOINERS = 2, 5  # ten joins in all


def test_peers_joining_right_after_a_1mb_batch_read_every_frame(fleet, tmp_path):
    started = time.monotonic()
    n0 = fleet.add("n0", (DOMAIN,), seeds=[])
    model = n0.info["model"]
    dim = int(model.rsplit("-d", 1)[1])
    rounds = []
    for r in range(ROUNDS):
        signed = big_batch(model, dim, f"{r}-{secrets.token_hex(4)}")
        assert 900_000 <= len(signed.envelope) < MAX_ENVELOPE_BYTES, len(signed.envelope)
        path = tmp_path / f"batch{r}.bin"
        path.write_bytes(signed.envelope)
        rounds.append(
            {"envelope": str(path), "cid": dagcbor.cid_text(signed.cid), "joiners": JOINERS}
        )
    plan = {
        "target": n0.addr,
        "topic": TOPIC,
        "domain": DOMAIN,
        "socket": str(n0.data_dir / "control.sock"),
        "wait": 8,  # for the message, after connecting
        "hold": 2,  # reading on after it: a late garbled frame would show as a fault
        "rounds": rounds,
    }
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    report = run_helper("join", str(plan_path), timeout=120)
    print("join report:", json.dumps(report, indent=1))

    answering(n0)
    joins = [j for r in report["rounds"] for j in r["joiners"]]
    assert len(joins) == ROUNDS * JOINERS
    problems = []
    for i, j in enumerate(joins):
        if j.get("sub_s") is None or j["sub_s"] > 5:
            problems.append(f"joiner {i} did not see n0's subscription within 5 s")
        if j.get("faults"):
            problems.append(f"joiner {i} could not read n0's stream: {j['faults']}")
        if j.get("lost_sub") or not j.get("still_subscribed"):
            problems.append(f"joiner {i} lost n0's subscription")
        if not j.get("data_ok"):
            problems.append(f"joiner {i} did not receive the batch intact ({j.get('msg_len')})")
    for r, rnd in enumerate(report["rounds"]):
        too_large = [w for w in rnd["warnings"] if "size limit" in w]
        if too_large:
            problems.append(f"round {r}: oversized frames from n0: {too_large}")
    assert not problems, "\n".join(problems)
    assert "Traceback" not in node_log(n0)
    print(f"test took {time.monotonic() - started:.1f} s")
