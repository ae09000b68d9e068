"""Five real node processes on 127.0.0.1, two domains, driven through their control sockets.

One module-scoped fleet (start-up is the expensive part); each test states what it needs
of the fleet's history and compares against what the nodes report at that moment, so the
order of the tests does not matter. Topology: n0 and n1 first, then n2..n4 seeded with
both; n2 is coding-only and n3 writing-only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import TextContent

from fai_core import dagcbor
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience, experience_id
from fai_core.wire import encode_batch
from fai_net.admission import evidence
from fai_net.node.identity import NodeIdentity
from tests.support.fleet import ROOT, Fleet, corpus_by_domain, wait_for

BOTH = ("coding", "writing")
TEXTS = corpus_by_domain()
_used: dict[str, int] = {"coding": 0, "writing": 0}


def fresh_texts(domain: str, n: int) -> list[str]:
    """Corpus sentences not used before in this module (each experience id is new)."""
    start = _used[domain]
    _used[domain] += n
    return TEXTS[domain][start : start + n]


def add(node, domain: str, n: int, quality: float = 0.7) -> list[str]:
    texts = fresh_texts(domain, n)
    node.call("add", experiences=[{"text": t, "domain": domain, "quality": quality} for t in texts])
    return texts


def cids(node, domain: str | None = None) -> set[str]:
    args = {} if domain is None else {"domain": domain}
    return set(node.call("batches", **args)["cids"])


@pytest.fixture(scope="module")
def fleet():
    f = Fleet(**{"seen-ttl": 2})
    try:
        f.add("n0", BOTH, seeds=[])
        # n1 publishes only on the threshold, so the MCP test's broadcast is the one that sends.
        f.add("n1", BOTH, **{"broadcast-interval": 600})
        seeds = [f["n0"].addr, f["n1"].addr]
        f.add_many({"n2": ("coding",), "n3": ("writing",), "n4": BOTH}, seeds)
        wait_for(
            lambda: all(n.call("status")["peers"] >= 2 for n in f.nodes.values()),
            30,
            "every node to have two peers",
        )
        time.sleep(2)  # a few gossipsub heartbeats to build the meshes
        yield f
    finally:
        f.stop_all()
        for node in f.nodes.values():
            log = node.tail(400)
            assert "Traceback" not in log, f"{node.name} logged a traceback:\n{log}"


def subscribers(fleet, domain: str):
    return [n for n in fleet.nodes.values() if domain in n.domains]


def test_two_domains_propagate_and_stay_apart(fleet):
    n1, n3, n4 = fleet["n1"], fleet["n3"], fleet["n4"]
    coding = add(n1, "coding", 12)  # over the threshold of 10: published at once
    writing = add(n3, "writing", 12)
    add(n4, "coding", 4)  # under the threshold: published by the 2 s interval
    add(n4, "writing", 4)
    for node in (n1, n3, n4):
        wait_for(lambda node=node: node.call("status")["outbox"] == 0, 20, f"{node.name} sent")
    published = {
        "coding": cids(n1, "coding") | cids(n4, "coding"),
        "writing": cids(n3, "writing") | cids(n4, "writing"),
    }
    assert all(published.values())
    for domain, want in published.items():
        for node in subscribers(fleet, domain):
            wait_for(lambda node=node, d=domain, w=want: w <= cids(node, d), 30, f"{node.name}")
    n2, n3 = fleet["n2"], fleet["n3"]
    assert cids(n2, "writing") == set() and cids(n3, "coding") == set()
    # Merged into the libraries too: every coding text n1 published is findable on n2.
    wait_for(lambda: fleet["n2"].call("status")["pending"] == 0, 20, "n2 round")
    s2, s3 = n2.call("status"), n3.call("status")
    assert "writing" not in s2["library_by_domain"] and "coding" not in s3["library_by_domain"]

    # `pending` is 0 as soon as a round has taken the batches, before its insert ends.
    def top(node, text, domain):
        hits = node.call("search", query=text, domain=domain, k=1)["hits"]
        return hits[0] if hits and hits[0]["text"] == text else None

    hit = wait_for(lambda: top(n2, coding[3], "coding"), 20, "n2 to merge the coding text")
    assert hit["text"] == coding[3] and hit["origin"] == "remote"
    hit = wait_for(lambda: top(fleet["n0"], writing[5], "writing"), 20, "n0 to merge writing")
    assert hit["text"] == writing[5]
    assert s2["bytes_received"] > 0 and n1.call("status")["bytes_sent"] > 0


def _rogue_batches(seed: bytes, now: int):
    """Envelopes from the rogue's own key: valid ones, and every kind of bad one."""
    identity = NodeIdentity.from_seed(seed)
    emb = HashingEmbedder(384)

    def signed(texts, seq, ts, domain="coding"):
        vectors = emb.embed(texts)
        exps = [
            Experience.create(
                text=t,
                embedding=v,
                quality=0.6,
                domain=domain,
                source=identity.public_key,
                created_ms=ts,
            )
            for t, v in zip(texts, vectors, strict=True)
        ]
        return encode_batch(
            exps,
            key=identity.key,
            seq=seq,
            timestamp_ms=ts,
            model=emb.model_id,
            baseline=vectors.mean(axis=0),
        )

    valid = signed(fresh_texts("coding", 3), 0, now)
    forged = bytearray(signed(fresh_texts("coding", 2), 1, now).envelope)
    forged[-5] ^= 0x01  # inside the Ed25519 signature (the envelope's last field)
    stale = signed(fresh_texts("coding", 2), 2, now - 3_600_000)
    first = signed(fresh_texts("coding", 3), 3, now)
    second = signed(fresh_texts("coding", 3), 3, now + 1)  # same seq, other content
    wrong_topic = signed(fresh_texts("writing", 2), 4, now, domain="writing")
    return identity, valid, bytes(forged), stale, first, second, wrong_topic


def test_rogue_peer_is_refused_and_contained(fleet, tmp_path):
    n0 = fleet["n0"]
    seed = bytes(range(100, 132))
    now = int(time.time() * 1000)
    identity, valid, forged, stale, first, second, wrong_topic = _rogue_batches(seed, now)
    steps = [
        {"hex": b"\xa1\x61x\xff".hex()},  # malformed CBOR
        {"hex": forged.hex()},
        {"hex": stale.envelope.hex()},
        {"hex": valid.envelope.hex()},
        # Replays after the seen cache (2 s TTL, swept every 2 s, refreshed whenever a copy
        # arrives): the cache may still hold the id at the first, so replay twice more.
        {"hex": valid.envelope.hex(), "delay": 3.5},
        {"hex": valid.envelope.hex(), "delay": 4.5},
        {"hex": valid.envelope.hex(), "delay": 4.5},
        {"hex": first.envelope.hex()},
        {"hex": second.envelope.hex(), "delay": 0.5},
        {"hex": wrong_topic.envelope.hex()},
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"topic": "/fai/exp/1/coding", "steps": steps, "hold": 4}))
    before = {n.name: n.call("status")["rejections"] for n in fleet.nodes.values()}
    rogue = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/net/rogue_peer.py"), seed.hex(), n0.addr, str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        text=True,
    )
    try:
        honest = add(fleet["n2"], "coding", 10)  # honest traffic during the attack
        out, _ = rogue.communicate(timeout=90)
    finally:
        rogue.kill()
    assert "done" in out, out[-3000:]

    def delta(node) -> dict[str, int]:
        now_counts = node.call("status")["rejections"]
        was = before[node.name]
        return {k: v - was.get(k, 0) for k, v in now_counts.items() if v - was.get(k, 0)}

    want = {"malformed_cbor", "bad_signature", "stale", "duplicate", "equivocation"}
    try:
        wait_for(lambda: want <= set(delta(n0)), 20, "n0 to count every kind of refusal")
    finally:
        got = delta(n0)
        print("n0 refusals:", got, "\nrogue:", out[-2000:])
    assert got["topic_mismatch"] == 1 and got["equivocation"] == 1, got
    # Nothing bad was forwarded: no other node saw any of it.
    for node in fleet.nodes.values():
        if node is not n0:
            leaked = set(delta(node)) - {"duplicate", "refused_again"}
            assert not leaked, f"{node.name} saw {leaked}"
    # The valid batches did travel, and the equivocating second one did not.
    good = {dagcbor.cid_text(valid.cid), dagcbor.cid_text(first.cid)}
    for node in subscribers(fleet, "coding"):
        wait_for(lambda node=node: good <= cids(node, "coding"), 20, f"{node.name} rogue batches")
        assert dagcbor.cid_text(second.cid) not in cids(node)
    # Honest traffic unaffected.
    n2_batches = cids(fleet["n2"], "coding")
    for node in subscribers(fleet, "coding"):
        wait_for(lambda node=node: n2_batches <= cids(node, "coding"), 20, f"{node.name} honest")
    wait_for(
        lambda: (
            fleet["n4"].call("search", query=honest[0], domain="coding", k=1)["hits"][0]["text"]
            == honest[0]
        ),
        20,
        "honest text merged on n4",
    )
    # The evidence: both signed envelopes, re-verifiable by anyone.
    files = list((n0.data_dir / "evidence").glob("equivocation-*.json"))
    assert len(files) == 1 and n0.call("status")["evidence"] == 1
    proof = evidence.load(files[0])
    assert proof.sender == identity.public_key and proof.seq == 3
    assert {proof.first.cid, proof.second.cid} == {first.cid, second.cid}


def test_restarted_node_catches_up_through_repair(fleet):
    n0, n1, n3, n4 = fleet["n0"], fleet["n1"], fleet["n3"], fleet["n4"]
    wait_for(lambda: cids(n4) == cids(n0), 30, "n4 in step with n0 before the test")
    add(n1, "coding", 10)
    n4.kill()  # SIGKILL during traffic: no clean shutdown
    for _ in range(3):
        add(n1, "coding", 10)
        add(n3, "writing", 10)
        time.sleep(0.5)
    wait_for(lambda: cids(n1) == cids(n0), 30, "n0 and n1 agree")
    missed = cids(n0)
    n4.start()
    wait_for(lambda: cids(n4) == cids(n0), 60, "n4 to hold exactly what n0 holds")
    assert cids(n4) >= missed
    # ... and merged it: the last writing text n3 published is in n4's library.
    last = TEXTS["writing"][_used["writing"] - 1]
    wait_for(
        lambda: n4.call("search", query=last, domain="writing", k=1)["hits"][0]["text"] == last,
        30,
        "n4 merged what it missed",
    )
    # A clean stop (SIGTERM) exits 0 and leaves no socket or ready file behind.
    assert n4.stop(signal.SIGTERM) == 0
    assert not (n4.data_dir / "control.sock").exists()
    assert not (n4.data_dir / "node.json").exists()
    n4.start()
    wait_for(lambda: cids(n4) == cids(n0), 30, "n4 after a clean restart")


def test_mcp_client_drives_a_real_node(fleet, tmp_path):
    n1 = fleet["n1"]
    add(n1, "writing", 3)  # under the threshold: stays in the outbox
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "fai_net.api.mcp_server", "--socket", str(n1.data_dir / "control.sock")],
        cwd=str(ROOT),
    )
    results = {}

    async def session() -> None:
        with open(tmp_path / "mcp.stderr", "w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as s,
            ):
                await s.initialize()
                tools = await s.list_tools()
                results["tools"] = [t.name for t in tools.tools]
                for name, args in (
                    ("status", {"action": "status"}),
                    ("broadcast", {"action": "broadcast", "domain": "writing"}),
                    ("peers", {"action": "peers"}),
                    ("receive", {"action": "receive", "domain": "coding", "limit": 5}),
                    ("bad", {"action": "broadcast", "domain": "no such domain"}),
                ):
                    results[name] = await s.call_tool("dso_network", args)

    before = n1.call("status")["library_by_domain"].get("coding", 0)
    anyio.run(session)
    assert results["tools"] == ["dso_network", "recall", "add", "feedback"]
    status = results["status"].structured_content
    assert status["peers"] >= 2 and status["library_size"] > 0
    assert {"last_sync", "bytes_sent", "bytes_received"} <= set(status)
    sent = results["broadcast"].structured_content
    assert sent["experiences_sent"] == 3 and sent["peers_reached"] >= 1
    for node in subscribers(fleet, "writing"):
        wait_for(lambda node=node: sent["batch_id"] in cids(node, "writing"), 20, node.name)
    peers = results["peers"].structured_content["peers"]
    assert len(peers) >= 2
    assert {"node_id", "latency_ms", "reputation", "last_seen"} <= set(peers[0])
    received = results["receive"].structured_content
    assert {"experiences_received", "library_delta"} <= set(received)
    assert received["experiences_received"] >= 0 and received["library_delta"] >= 0
    # The newest coding entries of n1's library, as many as the limit allows: never fewer
    # than the library held before the call, never more than after it.
    after = n1.call("status")["library_by_domain"].get("coding", 0)
    shown = received["experiences"]
    assert min(5, before) <= len(shown) <= min(5, after)
    for e in shown:
        assert e["domain"] == "coding" and e["text"]
        assert e["id"] == experience_id("coding", e["text"]).hex()  # content address
    assert results["bad"].is_error
    text = " ".join(b.text for b in results["bad"].content if isinstance(b, TextContent))
    assert "domain" in text


def test_metrics_endpoint_reports_the_node(fleet):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    n0 = fleet["n0"]
    port = n0.info["metrics_port"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    received = sum(s.value for s in families["fai_bytes_received"].samples)
    assert received > 0
    assert families["fai_peers_connected"].samples[0].value >= 2
    domains = {s.labels["domain"] for s in families["fai_library_experiences"].samples}
    assert domains == set(BOTH)


def test_node_refuses_a_second_instance_on_the_same_data_dir(fleet):
    n2 = fleet["n2"]
    proc = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "node", "run", *n2.args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "open in another writer" in proc.stderr and "Traceback" not in proc.stderr
    assert n2.call("status")["peers"] >= 1  # the running node is unharmed


def test_subscribe_at_run_time_catches_up_and_unsubscribe_stops(fleet):
    n0, n2, n3 = fleet["n0"], fleet["n2"], fleet["n3"]
    assert cids(n2, "writing") == set()
    assert n2.call("subscribe", domain="writing") == {"subscribed": True}
    # The domain's history arrives by repair (cursors were reset), new batches by gossip.
    wait_for(lambda: cids(n2, "writing") == cids(n0, "writing"), 30, "n2 writing history")
    before = cids(n3, "writing")
    add(n3, "writing", 10)
    wait_for(lambda: n3.call("status")["outbox"] == 0, 20, "n3 published")
    fresh = cids(n3, "writing") - before  # n3's new batches, whether n2 has them yet or not
    assert fresh
    wait_for(lambda: fresh <= cids(n2, "writing"), 20, "n2 gets new writing batches")
    assert "writing" in n2.call("status")["domains"]

    assert n2.call("unsubscribe", domain="writing") == {"unsubscribed": True}
    held = cids(n2, "writing")
    add(n3, "writing", 10)
    wait_for(lambda: n3.call("status")["outbox"] == 0, 20, "n3 published again")
    latest = cids(n3, "writing") - held
    assert latest
    wait_for(lambda: latest <= cids(n0, "writing"), 20, "n0 got the latest writing batch")
    time.sleep(4)  # a repair interval: n2 must not fetch it either
    assert cids(n2, "writing") == held
    assert n2.call("status")["domains"] == ["coding"]
