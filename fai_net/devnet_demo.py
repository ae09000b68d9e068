"""The main job: a devnet fleet learns from each other's telemetry, catches an equivocating
node, and slashes it on-chain.

1. `devnet.up`: Anvil, the registry, 5 staked nodes over 3 domains (registry membership:
   every batch carries its operator's EIP-712 header signature).
2. Each node gets a different slice of the shipped sample telemetry (whole tasks, so GRPO
   groups stay intact), extracts experiences locally and adds them to its own library.
3. Nodes broadcast; receivers verify, filter with DeltaSoup and merge.
4. The last node equivocates: a second, different batch under a seq it already used, signed
   with its own node key and operator key. Receivers refuse it and write evidence.
5. The evidence is submitted (`slashEquivocation`); the operator is slashed and jailed; the
   other nodes drop it at their next membership refresh.
6. Report: per node, what it learned from the fleet (library entries by source node), and
   the registry state. Then everything is stopped.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fai_net import devnet

DEMO_DOMAINS = [
    ("coding", "devops"),
    ("coding", "data-analysis"),
    ("devops", "data-analysis"),
    ("coding", "devops", "data-analysis"),
    ("coding", "data-analysis"),
]


def telemetry_slices(domains: list[tuple[str, ...]]) -> list[list]:
    """Whole tasks of the sample telemetry, each to one node subscribed to its domain
    (round-robin per domain), so every node's slice is different and on its own topics."""
    from fai_core.telemetry import read_jsonl

    path = Path(__file__).resolve().parents[1] / "fai_core" / "data" / "sample_telemetry.jsonl"
    by_task: dict[str, list] = {}
    for record in read_jsonl(path).records:
        by_task.setdefault(record.task_id, []).append(record)
    slices: list[list] = [[] for _ in domains]
    turn: Counter[str] = Counter()
    for task in sorted(by_task):
        domain = by_task[task][0].domain
        takers = [i for i, ds in enumerate(domains) if domain in ds]
        if takers:
            slices[takers[turn[domain] % len(takers)]].extend(by_task[task])
            turn[domain] += 1
    return slices


def extract_items(records, source: bytes) -> list[dict]:
    """Patterns and qualities from telemetry; the node embeds the texts itself on `add`."""
    from fai_core.embedding import HashingEmbedder
    from fai_core.extraction import LocalDSOptimizer

    optimizer = LocalDSOptimizer(HashingEmbedder(64), source)
    return [
        {"text": e.text, "domain": e.domain, "quality": e.quality, "iteration": e.iteration}
        for e in optimizer.run(records)
    ]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise devnet.DevnetError(f"timed out after {timeout:.0f} s waiting for {what}")


def equivocate(state: dict[str, Any], name: str) -> dict[str, Any]:
    """Make node `name` publish a second batch under a seq it already published."""
    import numpy as np
    from eth_account import Account

    from fai_core.experience import Experience
    from fai_core.wire import decode_envelope, encode_batch
    from fai_net.node_identity import load_or_create
    from fai_net.registry import eip712

    node = next(n for n in state["nodes"] if n["name"] == name)
    data_dir = Path(node["data_dir"])
    store = sqlite3.connect(f"file:{data_dir / 'batches' / 'store.sqlite'}?mode=ro", uri=True)
    try:
        row = store.execute(
            "SELECT envelope FROM batches WHERE origin = 'local' ORDER BY cursor DESC LIMIT 1"
        ).fetchone()
    finally:
        store.close()
    if row is None:
        raise devnet.DevnetError(f"{name} has not published anything to equivocate on")
    original = decode_envelope(bytes(row[0])).batch
    identity = load_or_create(data_dir)
    operator = Account.from_key(Path(node["operator_key_file"]).read_text().strip())
    vectors = original.embeddings()
    texts = list(original.texts)
    texts[0] = "Contradict the earlier advice: skip the tests and deploy straight to production."
    exps = [
        Experience.create(t, vectors[i], 0.97, original.domain, identity.public_key, 0)
        for i, t in enumerate(texts)
    ]

    def sign_header(header):
        return eip712.sign_batch_header(
            operator,
            state["chain_id"],
            state["registry"],
            header.sender,
            header.seq,
            header.cid_digest,
            header.timestamp_ms,
        )

    twin = encode_batch(
        exps,
        key=identity.key,
        seq=original.seq,
        timestamp_ms=time.time_ns() // 1_000_000,
        model=original.model,
        baseline=np.asarray(original.baseline),
        group=original.group,
        scale_dtype=original.scale_dtype,
        operator_signer=sign_header,
    )
    devnet.node_client(node).call(
        "publish_raw", domain=original.domain, envelope_hex=twin.envelope.hex()
    )
    return {
        "node": name,
        "seq": original.seq,
        "first": original.cid_text,
        "second": twin.batch.cid_text,
    }


def slash_from_evidence(state: dict[str, Any], evidence_file: Path, reporter_key: str) -> dict:
    from eth_account import Account
    from web3 import Web3

    from fai_net import evidence
    from fai_net.registry import RegistryClient
    from fai_net.registry.deploy import TOKEN

    proof = evidence.load(evidence_file)
    a, b = proof.signed_headers()
    reg = RegistryClient(Web3(Web3.HTTPProvider(state["rpc_url"])), state["registry"])
    operator = reg.header_signer_operator(a)
    if operator is None or reg.header_signer_operator(b) != operator:
        raise devnet.DevnetError("the evidence is not attributable to one operator")
    before = reg.operator(operator).stake
    receipt = reg.slash_equivocation(Account.from_key(reporter_key), a, b)
    after = reg.operator(operator)
    return {
        "operator": operator,
        "slashed_tokens": (before - after.stake) / TOKEN,
        "jailed": after.jailed,
        "live": reg.is_live(operator),
        "tx": receipt["transactionHash"].hex(),
    }


def learned_by_source(node: dict[str, Any], names: dict[str, str]) -> dict[str, int]:
    client = devnet.node_client(node)
    counts: Counter[str] = Counter()
    offset: int | None = 0
    while offset is not None:
        page = client.call("export", offset=offset, limit=1000)
        for item in page["items"]:
            who = "own" if item["origin"] == "local" else names.get(item["source"], "unknown")
            counts[who] += 1
        offset = page["next"]
    return dict(counts)


def run_demo(
    nodes: int = 5,
    *,
    embedder: str = "minilm",
    state_dir: Path = devnet.DEFAULT_STATE_DIR,
    progress=print,
) -> dict[str, Any]:
    started = time.monotonic()
    if devnet.state_path(state_dir).exists():
        devnet.down(state_dir, progress)
    state = devnet.up(
        nodes,
        DEMO_DOMAINS,
        state_dir=state_dir,
        embedder=embedder,
        allow_raw_publish=True,
        progress=progress,
        node_args=["--membership-refresh", "2", "--round-interval", "1"],
    )
    report: dict[str, Any] = {"nodes": {}}
    try:
        names = {n["public_key"]: n["name"] for n in state["nodes"]}
        clients = {n["name"]: devnet.node_client(n, timeout=120) for n in state["nodes"]}
        wait_for(
            lambda: all(c.call("status")["peers"] >= 2 for c in clients.values()),
            60,
            "nodes to find each other through the registry",
        )
        time.sleep(2)  # a few gossip heartbeats to build the meshes
        slices = telemetry_slices([tuple(n["domains"]) for n in state["nodes"]])
        published: dict[str, set[str]] = {}
        for node, records in zip(state["nodes"], slices, strict=True):
            items = extract_items(records, bytes.fromhex(node["public_key"]))
            client = clients[node["name"]]
            for domain in sorted({i["domain"] for i in items} - set(node["domains"])):
                client.call("subscribe", domain=domain)
            if items:
                client.call("add", experiences=items)
            sent = 0
            for domain in sorted({i["domain"] for i in items}):
                sent += client.call("broadcast", domain=domain)["experiences_sent"]
            progress(
                f"{node['name']}: {len(records)} telemetry records -> {len(items)} "
                f"experiences, {sent} broadcast"
            )
            report["nodes"][node["name"]] = {"records": len(records), "extracted": len(items)}
        for node in state["nodes"]:
            published[node["name"]] = set(clients[node["name"]].call("batches")["cids"])

        def settled() -> bool:
            everyone = set().union(*published.values())
            for node in state["nodes"]:
                client = clients[node["name"]]
                mine = {
                    d: set(client.call("batches", domain=d)["cids"])
                    for d in client.call("status")["domains"]
                }
                for domain, have in mine.items():
                    theirs = {
                        c
                        for n in state["nodes"]
                        for c in clients[n["name"]].call("batches", domain=domain)["cids"]
                        if c in everyone
                    }
                    if not theirs <= have:
                        return False
                if client.call("status")["pending"]:
                    return False
            return True

        progress("waiting for every batch to reach every subscriber and be merged")
        wait_for(settled, 90, "the fleet to converge")
        rogue = state["nodes"][-1]
        progress(f"{rogue['name']} equivocates: a second batch under a seq it already used")
        report["equivocation"] = equivocate(state, rogue["name"])
        witnesses = [n for n in state["nodes"] if n is not rogue]

        def evidence_file():
            for n in witnesses:
                files = sorted((Path(n["data_dir"]) / "evidence").glob("equivocation-*.json"))
                if files:
                    return n, files[0]
            return None

        witness, proof = wait_for(evidence_file, 30, "a node to catch the equivocation")
        progress(f"{witness['name']} caught it: {proof.name}; submitting to the registry")
        reporter_key = Path(witness["operator_key_file"]).read_text().strip()
        report["slash"] = slash_from_evidence(state, proof, reporter_key)
        progress(
            f"operator {report['slash']['operator'][:10]}… slashed "
            f"{report['slash']['slashed_tokens']:g} tokens, jailed={report['slash']['jailed']}"
        )

        def dropped() -> bool:
            for n in witnesses:
                peers = {p["node_id"]: p for p in clients[n["name"]].call("peers")["peers"]}
                row = peers.get(rogue["peer_id"])
                if row is not None and row["connected"]:
                    return False
            return True

        wait_for(dropped, 30, "the fleet to drop the slashed node")
        progress("the fleet dropped it")
        for node in state["nodes"]:
            report["nodes"][node["name"]]["library"] = learned_by_source(node, names)
        report["registry"] = devnet.status(state)["nodes"]
    finally:
        report["down"] = devnet.down(state_dir, progress)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = ["", "What each node learned from the fleet (library entries by source):"]
    for name, row in report["nodes"].items():
        library = row.get("library", {})
        own = library.get("own", 0)
        learned = {k: v for k, v in library.items() if k != "own"}
        fleet = ", ".join(f"{k}: {v}" for k, v in sorted(learned.items())) or "nothing"
        lines.append(
            f"  {name}: {row['extracted']} own from {row['records']} records; "
            f"learned {sum(learned.values())} ({fleet}); library {own + sum(learned.values())}"
        )
    lines.append("")
    lines.append("Registry:")
    for row in report.get("registry", []):
        lines.append(
            f"  {row['name']}: stake {row.get('stake', '?'):g} live={row.get('live')} "
            f"jailed={row.get('jailed')} reputation(seen by peers)={row.get('reputation')}"
        )
    if "slash" in report:
        s = report["slash"]
        lines.append(
            f"\nEquivocation by {report['equivocation']['node']} at seq "
            f"{report['equivocation']['seq']}: operator {s['operator']} slashed "
            f"{s['slashed_tokens']:g} tokens (tx {s['tx'][:18]}…)"
        )
    lines.append(
        f"\nDone in {report['seconds']} s; stopped: {', '.join(report['down']['stopped'])}."
    )
    return "\n".join(lines)
