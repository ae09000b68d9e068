"""The main job: a devnet fleet learns from each other's telemetry, catches an equivocating
node, and slashes it on-chain.

1. `devnet.up`: Anvil, the registry, 5 staked nodes over 3 domains (registry membership:
   every batch carries its operator's EIP-712 header signature).
2. Each node gets a different slice of the shipped sample telemetry (whole tasks, so GRPO
   groups stay intact). Node0 is fed as an instrumented agent would feed it: its slice
   becomes OpenTelemetry GenAI spans (the real SDK, one trace per attempt), exported with
   the SDK's OTLP/HTTP exporter to the node's receiver (`--otlp-port 0`); the node's ingest
   loop extracts experiences from its spool into its library. The other nodes extract
   locally and `add` their experiences.
3. Nodes broadcast; receivers verify, filter with DeltaSoup and merge.
4. The last node equivocates: a second, different batch under a seq it already used, signed
   with its own node key and operator key. Receivers refuse it and write evidence.
5. The evidence is submitted (`slashEquivocation`); the operator is slashed and jailed; the
   other nodes see the slash on-chain within about a second and drop its node for good.
6. Report: per node, what it learned from the fleet (library entries by source node), and
   the registry state. Then everything is stopped.

`hosts=True` (`fai devnet demo --hosts`) runs the same job on a --hosts devnet: every node
in a network namespace of its own, the chain in another (fai_net/devnet/fleet.py). The
steps that open a socket do so in the namespace that can reach the far end: the OTLP
export in node0's (its receiver listens on that namespace's loopback), the slash in the
chain host's (`devnet.on_chain`); the rest goes through the nodes' control sockets.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fai_net.devnet import fleet as devnet
from fai_net.devnet.launch import poll_until

#: The node fed by OpenTelemetry traces through its OTLP receiver (the others get `add`).
OTLP_NODE = "node0"
#: Spans per export request: the SDK batch span processor's default batch size.
OTLP_BATCH = 512
#: The agent named by the demo's `invoke_agent` spans.
AGENT_NAME = "fai-demo-agent"

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
    from importlib.resources import as_file, files

    from fai_core.telemetry import read_jsonl

    with as_file(files("fai_core") / "data" / "sample_telemetry.jsonl") as path:
        records = read_jsonl(path).records
    by_task: dict[str, list] = {}
    for record in records:
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


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def trace_spans(records, *, service: str = "fai-devnet-demo") -> list:
    """OpenTelemetry GenAI spans of telemetry records, made with the real SDK.

    One trace per attempt (task_id, attempt): a root `invoke_agent` span with `fai.task.id`,
    `fai.domain` (and `fai.kind`), and one `execute_tool` child per record, named by its
    tool, with the record's input and output as `gen_ai.tool.call.arguments` and
    `gen_ai.tool.call.result` (JSON text unless a string), ending at the record's time and
    starting when the previous call ended (the first 1 s earlier). The root spans its tools
    and leaves its status unset: the node derives rewards from the tool outcomes, not from
    the records' `reward` field. Returns the finished spans (ReadableSpan), in end order.
    """
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Collect(SpanProcessor):
        def __init__(self) -> None:
            self.spans: list = []

        def on_end(self, span) -> None:
            self.spans.append(span)

    collect = Collect()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("fai_net.devnet.demo")
    attempts: dict[tuple[str, str], list] = {}
    for record in records:
        attempts.setdefault((record.task_id, record.attempt), []).append(record)
    for (task_id, _), steps in attempts.items():
        steps = sorted(steps, key=lambda r: r.time)  # stable: equal times keep their order
        start = _ns(steps[0].time) - 1_000_000_000
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT_NAME,
            "fai.task.id": task_id,
            "fai.domain": steps[0].domain,
        }
        if steps[0].kind:
            attributes["fai.kind"] = steps[0].kind
        root = tracer.start_span(
            f"invoke_agent {AGENT_NAME}",
            context=otel_context.Context(),  # no parent: a new trace
            attributes=attributes,
            start_time=start - 100_000_000,
        )
        parent = trace.set_span_in_context(root)
        previous = start
        for number, step in enumerate(steps, start=1):
            end = max(_ns(step.time), previous)
            result = step.output if isinstance(step.output, str) else json.dumps(step.output)
            span = tracer.start_span(
                f"execute_tool {step.tool}",
                context=parent,
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": step.tool,
                    "gen_ai.tool.type": "function",
                    "gen_ai.tool.call.id": f"call_{number}",
                    "gen_ai.tool.call.arguments": json.dumps(step.input),
                    "gen_ai.tool.call.result": result,
                },
                start_time=previous,
            )
            span.end(end_time=end)
            previous = end
        root.end(end_time=previous + 100_000_000)
    provider.shutdown()
    return collect.spans


def export_spans(spans: list, endpoint: str, batch: int = OTLP_BATCH) -> int:
    """Send spans with the SDK's OTLP/HTTP (protobuf) exporter, `batch` per request, as an
    instrumented agent's batch processor would. Returns the number of requests."""
    import requests
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    session = requests.Session()
    session.trust_env = False  # loopback: never through a proxy from the environment
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=30, session=session)
    requests_sent = 0
    try:
        for at in range(0, len(spans), batch):
            if exporter.export(spans[at : at + batch]) is not SpanExportResult.SUCCESS:
                raise devnet.DevnetError(f"the OTLP export to {endpoint} failed")
            requests_sent += 1
    finally:
        exporter.shutdown()
    return requests_sent


def feed_otlp(node: dict[str, Any], records, client, timeout: float = 180) -> dict[str, Any]:
    """Export a node's slice as OTLP traces to its receiver, then wait for its ingest loop
    (a pass every 5 s) to turn them into experiences. Returns what came of them."""
    if not node.get("otlp_port"):
        raise devnet.DevnetError(f"{node['name']} runs no OTLP receiver")
    endpoint = f"http://127.0.0.1:{node['otlp_port']}/v1/traces"
    before = client.call("status")["telemetry"]
    spans = trace_spans(records)
    host = node.get("host")
    if host:  # the receiver is on the loopback of node's own namespace
        from fai_net.devnet.netns import in_netns

        sent = in_netns(host["ns"], export_spans, spans, endpoint)
    else:
        sent = export_spans(spans, endpoint)
    # The receiver writes to the spool before it answers: a pass that starts after this
    # status call (the second to end from now) sees every span.
    passes = client.call("status")["telemetry"]["passes"]

    def ingested():
        tele = client.call("status")["telemetry"]
        return tele if tele["passes"] >= passes + 2 else None

    tele = wait_for(ingested, timeout, f"{node['name']}'s ingest of its OTLP traces")
    otlp, otlp0 = tele.get("otlp", {}), before.get("otlp", {})
    return {
        "endpoint": endpoint,
        "requests": sent,
        "spans": len(spans),
        "tool_spans": len(records),
        "traces": len({span.context.trace_id for span in spans}),
        "received_spans": otlp.get("spans", 0) - otlp0.get("spans", 0),
        "refused_spans": otlp.get("problems", 0) - otlp0.get("problems", 0),
        "trajectories": tele["trajectories"] - before["trajectories"],
        "groups": tele["groups"] - before["groups"],
        "no_signal": tele["no_signal"] - before["no_signal"],
        "experiences": tele["experiences"] - before["experiences"],
        "by_domain": tele["by_domain"],
        "waiting": tele["waiting"],
        "spool": tele["spool"],
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    value = poll_until(predicate, timeout, interval)
    if value:
        return value
    raise devnet.DevnetError(f"timed out after {timeout:.0f} s waiting for {what}")


RAW_PUBLISH_OFF = (
    "this devnet was started without --allow-raw-publish, so its nodes refuse to publish a "
    "forged batch: `fai devnet down`, then `fai devnet up --allow-raw-publish ...`"
)


def equivocate(state: dict[str, Any], which: str) -> dict[str, Any]:
    """Make node `which` ("4" or "node4") publish a second batch under a seq it already
    published. Refused up front when the devnet's nodes cannot publish raw bytes."""
    from fai_net.api.control import ControlError
    from fai_net.settings import devnet_node

    node = devnet_node(state, which)
    if state.get("allow_raw_publish") is False:
        raise devnet.DevnetError(RAW_PUBLISH_OFF)
    try:
        return _publish_twin(state, node)
    except ControlError as exc:
        if exc.code == "forbidden":  # a state file from before allow_raw_publish was kept
            raise devnet.DevnetError(RAW_PUBLISH_OFF) from None
        raise


def _baseline_of(store: sqlite3.Connection, batch):
    """The stored baseline block of a version 2 batch (None for version 1)."""
    from fai_core.baseline_block import decode_baseline_block

    if batch.baseline_cid is None:
        return None
    row = store.execute(
        "SELECT data FROM baseline_blocks WHERE cid = ?", (batch.baseline_cid,)
    ).fetchone()
    if row is None:
        raise devnet.DevnetError(f"the baseline block of {batch.cid_text} is not in the store")
    return decode_baseline_block(bytes(row[0]), batch.baseline_cid)


def _publish_twin(state: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Re-sign node's latest own batch with a changed text under the same seq, and have the
    node publish it unchecked (`publish_raw`)."""
    import numpy as np
    from eth_account import Account

    from fai_core.experience import Experience
    from fai_core.wire import decode_envelope, encode_batch, encode_batch_v2
    from fai_net.node.identity import load_or_create
    from fai_net.registry import eip712

    name = node["name"]
    data_dir = Path(node["data_dir"])
    store = sqlite3.connect(f"file:{data_dir / 'batches' / 'store.sqlite'}?mode=ro", uri=True)
    try:
        row = store.execute(
            "SELECT envelope FROM batches WHERE origin = 'local' ORDER BY cursor DESC LIMIT 1"
        ).fetchone()
        block = None
        if row is not None:
            block = _baseline_of(store, decode_envelope(bytes(row[0])).batch)
    finally:
        store.close()
    if row is None:
        number = name.removeprefix("node")
        raise devnet.DevnetError(
            f"{name} has not published anything to equivocate on: add and publish first "
            f"(`fai experiences add --node {number} --domain D --text ...`, then "
            f"`fai node broadcast D --node {number}`)"
        )
    original = decode_envelope(bytes(row[0])).batch
    if block is not None:
        original = original.with_baseline(block)
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

    common = dict(
        key=identity.key,
        seq=original.seq,
        timestamp_ms=time.time_ns() // 1_000_000,
        group=original.group,
        operator_signer=sign_header,
    )
    if block is not None:  # the same wire version as the original, so the same topic
        twin = encode_batch_v2(exps, baseline=block, attach_baseline=True, **common)
    else:
        twin = encode_batch(
            exps,
            model=original.model,
            baseline=np.asarray(original.baseline),
            scale_dtype=original.scale_dtype,
            **common,
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


def evidence_files(
    state: dict[str, Any], rogue: dict[str, Any], seq: int | None = None
) -> list[tuple[dict[str, Any], Path]]:
    """(witness node, evidence file) for every file the other nodes wrote about `rogue`
    (at `seq`, if given). A receiver that already holds one batch of a (sender, seq) and
    gets a different one writes `<its data dir>/evidence/equivocation-<sender>-<seq>.json`
    (fai_net.admission.evidence.write)."""
    prefix = f"equivocation-{rogue['public_key'][:16]}-"
    pattern = f"{prefix}{seq}.json" if seq is not None else f"{prefix}*.json"
    found = []
    for node in state["nodes"]:
        if node["name"] != rogue["name"]:
            for path in sorted((Path(node["data_dir"]) / "evidence").glob(pattern)):
                found.append((node, path))
    return found


def slash_from_evidence(state: dict[str, Any], evidence_file: Path, reporter_key: str) -> dict:
    """Submit an evidence file on-chain with `reporter_key`, where the chain answers."""
    return devnet.on_chain(state, _slash, state, evidence_file, reporter_key)


def _slash(state: dict[str, Any], evidence_file: Path, reporter_key: str) -> dict:
    from eth_account import Account
    from web3 import Web3

    from fai_net.admission import evidence
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
    hosts: bool = False,
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
        per_node_args={OTLP_NODE: ["--otlp-port", "0"]},
        hosts=hosts,
    )
    report: dict[str, Any] = {"nodes": {}}
    if state.get("lab"):
        report["hosts"] = {n["name"]: n["addr"] for n in state["nodes"]}
        report["hosts"]["chain"] = state["rpc_url"]
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
        for node, records in zip(state["nodes"], slices, strict=True):
            _feed_node(node, records, clients[node["name"]], report, progress)
        published: dict[str, set[str]] = {}
        for node in state["nodes"]:
            published[node["name"]] = set(clients[node["name"]].call("batches")["cids"])
        progress("waiting for every batch to reach every subscriber and be merged")
        wait_for(lambda: _settled(state, clients, published), 90, "the fleet to converge")
        _equivocate_and_slash(state, clients, report, progress)
        for node in state["nodes"]:
            report["nodes"][node["name"]]["library"] = learned_by_source(node, names)
        report["registry"] = devnet.status(state)["nodes"]
    finally:
        report["down"] = devnet.down(state_dir, progress)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def _feed_node(node: dict[str, Any], records, client, report: dict[str, Any], progress) -> None:
    """Give `node` its telemetry slice (over OTLP for OTLP_NODE, else as extracted `add`s),
    have it broadcast every domain it got, and record its row in `report["nodes"]`."""
    if node["name"] == OTLP_NODE:
        fed = feed_otlp(node, records, client)
        domains, extracted = sorted(fed["by_domain"]), fed["experiences"]
    else:
        items = extract_items(records, bytes.fromhex(node["public_key"]))
        domains, extracted = sorted({i["domain"] for i in items}), len(items)
        for domain in sorted(set(domains) - set(node["domains"])):
            client.call("subscribe", domain=domain)
        if items:
            client.call("add", experiences=items)
    sent = 0
    for domain in domains:
        sent += client.call("broadcast", domain=domain)["experiences_sent"]
    row = {"records": len(records), "extracted": extracted}
    if node["name"] == OTLP_NODE:
        row["otlp"] = fed
        report["otlp_node"] = node["name"]
        progress(
            f"{node['name']}: {len(records)} telemetry records as OpenTelemetry "
            f"traces ({fed['traces']} traces, {fed['spans']} spans, "
            f"{fed['requests']} request(s)) exported over OTLP to its receiver: "
            f"{fed['received_spans']} spans received, {fed['refused_spans']} refused "
            f"-> its ingest loop extracted {extracted} experiences "
            f"({fed['trajectories']} trajectories, {fed['groups']} GRPO groups), "
            f"{sent} broadcast; rewards come from the tool outcomes in the spans, not "
            "the sample's reward field, so these can differ from the JSONL path"
        )
    else:
        progress(
            f"{node['name']}: {len(records)} telemetry records -> {extracted} "
            f"experiences, {sent} broadcast"
        )
    report["nodes"][node["name"]] = row


def _settled(state: dict[str, Any], clients: dict, published: dict[str, set[str]]) -> bool:
    """Every node holds every published batch of each of its domains, with no round
    pending."""
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


def _equivocate_and_slash(state: dict[str, Any], clients: dict, report: dict, progress) -> None:
    """The last node equivocates; a witness's evidence slashes its operator on-chain, and
    the fleet drops it. Records `equivocation` and `slash` in `report`."""
    rogue = state["nodes"][-1]
    progress(f"{rogue['name']} equivocates: a second batch under a seq it already used")
    report["equivocation"] = equivocate(state, rogue["name"])
    witnesses = [n for n in state["nodes"] if n is not rogue]

    def evidence_file():
        found = evidence_files(state, rogue)
        return found[0] if found else None

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


def format_report(report: dict[str, Any]) -> str:
    lines = [""]
    if report.get("hosts"):
        lines.append("Each on a network namespace host of its own, on two routed sites:")
        lines += [f"  {name}: {where}" for name, where in report["hosts"].items()]
    for name, row in report["nodes"].items():
        if "otlp" in row:
            o = row["otlp"]
            lines.append(
                f"{name} was fed over OTLP: {o['spans']} spans ({o['traces']} traces, "
                f"{o['tool_spans']} tool calls) -> {o['experiences']} experiences "
                "(rewards from tool outcomes, not the sample's reward field)"
            )
    lines += ["", "What each node learned from the fleet (library entries by source):"]
    for name, row in report["nodes"].items():
        library = row.get("library", {})
        own = library.get("own", 0)
        learned = {k: v for k, v in library.items() if k != "own"}
        fleet = ", ".join(f"{k}: {v}" for k, v in sorted(learned.items())) or "nothing"
        if "otlp" in row:
            source = f"{row['otlp']['spans']} OTLP spans"
        else:
            source = f"{row['records']} records"
        lines.append(
            f"  {name}: {row['extracted']} own from {source}; "
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
