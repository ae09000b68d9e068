"""Trace ingestion: OTLP/HTTP spans into a node's telemetry spool, and experiences out of it.

    .venv/bin/python bench/ingest.py [--json] [--quick] [--concurrency N] [--keep]

The target (the issue): 10,000 spans/s of ingestion per core before extraction, i.e. at
most 100 us of CPU per span from the HTTP request to the row in the spool.

Workload. The shipped sample telemetry (fai_core/data/sample_telemetry.jsonl: 734 tool
calls, 232 attempts at 30 tasks) replicated: replica k renames each task `<task>~k` and
its kind `<kind>-vk` (so every replica makes its own GRPO groups and its own pattern
texts, as new work would, instead of repeating the same experiences). Each replica
becomes real OpenTelemetry GenAI spans made with the SDK (`fai_net.devnet.demo.trace_spans`:
one trace per attempt, an `invoke_agent` root with `fai.task.id`/`fai.domain`/`fai.kind`,
an `execute_tool` child per call with `gen_ai.tool.call.arguments` and
`gen_ai.tool.call.result` holding the record's input and output): 966 spans per replica.
The span stream is cut into requests of 512 spans (the SDK batch processor's default; a
trace may straddle two requests, as with the SDK) and encoded once, before any timing,
with the SDK's own encoder (`opentelemetry.exporter.otlp.proto.common.trace_encoder.
encode_spans`, what `OTLPSpanExporter` sends). Every request is different (new trace ids,
tasks and kinds); the same request list is sent to the bare server, the receiver alone and
the node (each has its own spool). The sender is this process: `--concurrency` threads
(default 2) POST the bytes with http.client, one connection per request (the receiver
answers every request with Connection: close), retrying 429/503 after Retry-After.

Phases, in order:

1. In-process stages (one thread, no HTTP), CPU per span: protobuf `ParseFromString` of
   the payload (the first anchor), `parse_request`, `convert_request` (spans -> records and
   session ends, with one TraceSessions as the receiver keeps), `Spool.append`.
2. Bare HTTP (the second anchor): a stdlib ThreadingHTTPServer in its own process that
   reads the body and answers 200 with an empty ExportTraceServiceResponse and
   Connection: close - what any Python HTTP receiver costs before doing anything.
3. Receiver alone: `serve_otlp` with the node's real sink (`SpoolWriter` on a fresh
   spool) in its own process, rate limits raised out of the way. Spans/s (wall, first
   request sent to last answer) and the process's CPU per span (user+system, idle CPU
   subtracted). Then a few more replicas through the SDK's own `OTLPSpanExporter.export`
   (encoding and `requests` in this process: what an instrumented agent pays).
4. Extraction, offline, on that receiver's spool (this process): `TelemetryIngest.run_pass`
   (the node's pass: closed trajectories read, terminal rewards, GRPO extraction, consume)
   with an `add` that only collects, pass after pass until the spool holds nothing it can
   use; and on a copy of the spool, the first pass's parts timed one by one (`Spool.closed`,
   `finish_trajectories`, `LocalDSOptimizer.extract`).
5. A node: `fai node run --open --embedder hashing --otlp-port 0` (bench/fleet.py's
   Proc), subscribed to a domain the spans do not carry, so its ingest loop extracts
   nothing while the spans come in: spans/s and the node process's CPU per span (idle CPU
   subtracted), by thread. The node keeps its default receiver limits (requests 50/s,
   burst 100; spans 5,000/s, burst 50,000): the full run sends fewer spans than the burst,
   so the limiter does not slow it down; 429s are counted if it does.
6. Extraction in the node: the node subscribes to the spans' five domains and its ingest
   loop (a pass every 5 s, at most 5,000 trajectories per pass) extracts; time and node
   CPU until a pass changes nothing, per trajectory and per span.
7. End to end: more replicas sent to the subscribed node; from the first request to the
   pass after which nothing changes: spans sent -> experiences in the library (the 5 s
   pass interval is part of that latency).

Speeds are also given as ratios to the anchors measured in the same run (the machine is
shared and noisy): receiver spans/s over bare-HTTP spans/s, and receiver CPU per span
over ParseFromString CPU per span. A full run takes ~2 minutes on 2 cores; `--quick`
sends 9 replicas. Progress goes to stderr; `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from fleet import Proc, child_env, cpu_delta, proc_cpu, stop_all  # bench/fleet.py

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SAMPLE = ROOT / "fai_core" / "data" / "sample_telemetry.jsonl"
SPANS_PER_REQUEST = 512
TARGET_SPANS_PER_CORE_S = 10_000
PROTOBUF = "application/x-protobuf"
DOMAINS = ("coding", "devops", "data-analysis", "writing", "support")
IDLE_DOMAIN = "bench-idle"


def log(msg: str) -> None:
    print(f"[ingest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def div(a: float, b: float) -> float | None:
    return a / b if b else None


# -- workload ------------------------------------------------------------------------------


def replica_records(k: int) -> list:
    from fai_core.telemetry import read_jsonl

    return [
        replace(r, task_id=f"{r.task_id}~{k}", kind=f"{r.kind}-v{k}")
        for r in read_jsonl(SAMPLE).records
    ]


def make_spans(replicas: range) -> list:
    from fai_net.devnet.demo import trace_spans

    spans: list = []
    for k in replicas:
        spans += trace_spans(replica_records(k), service="fai-bench-agent")
    return spans


def encode(spans: list) -> list[tuple[bytes, int]]:
    """(request body, spans in it): the SDK's encoder, 512 spans a request."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return [
        (
            encode_spans(spans[i : i + SPANS_PER_REQUEST]).SerializeToString(),
            min(SPANS_PER_REQUEST, len(spans) - i),
        )
        for i in range(0, len(spans), SPANS_PER_REQUEST)
    ]


def describe(spans: list, payloads: list[tuple[bytes, int]]) -> dict:
    tools = sum(1 for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool")
    size = sum(len(p) for p, _ in payloads)
    return {
        "spans": len(spans),
        "tool_spans": tools,
        "traces": len(spans) - tools,
        "requests": len(payloads),
        "bytes": size,
        "bytes_per_span": round(size / len(spans), 1),
    }


# -- sending -------------------------------------------------------------------------------


def post(port: int, body: bytes, timeout: float = 60.0) -> tuple[int, bytes, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
        answer = conn.getresponse()
        return answer.status, answer.read(), answer.getheader("Retry-After")
    finally:
        conn.close()


def send_all(port: int, payloads: list[tuple[bytes, int]], concurrency: int) -> dict:
    """POST every payload (threads take the next one), retrying 429/503 after Retry-After."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    lock = threading.Lock()
    todo = iter(payloads)
    out = {"ok": 0, "retried": 0, "failed": 0, "rejected_spans": 0, "statuses": {}}

    def worker() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            body, _ = item
            for _ in range(20):
                status, data, retry = post(port, body)
                with lock:
                    out["statuses"][status] = out["statuses"].get(status, 0) + 1
                if status in (429, 503):
                    with lock:
                        out["retried"] += 1
                    time.sleep(float(retry or 1))
                    continue
                break
            with lock:
                if status == 200:
                    out["ok"] += 1
                    reply = ExportTraceServiceResponse.FromString(data)
                    out["rejected_spans"] += reply.partial_success.rejected_spans
                else:
                    out["failed"] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["wall_s"] = time.perf_counter() - started
    out["started"] = started
    return out


def rate(sent: dict, payloads: list[tuple[bytes, int]]) -> dict:
    spans = sum(n for _, n in payloads)
    return {
        "wall_s": r3(sent["wall_s"]),
        "spans_per_s": round(spans / sent["wall_s"]),
        "requests_per_s": round(len(payloads) / sent["wall_s"], 1),
        "http": {str(k): v for k, v in sorted(sent["statuses"].items())},
        "failed_requests": sent["failed"],
        "rejected_spans": sent["rejected_spans"],
    }


# -- servers in their own process ----------------------------------------------------------


def serve(mode: str, directory: Path) -> int:
    """`--serve bare|receiver DIR`: run a server until SIGTERM; port in DIR/ready.json."""
    directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats: dict = {}
    if mode == "bare":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        empty = ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(empty)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(empty)
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        server = Server(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        port = server.server_address[1]
        closer = server.shutdown
    else:
        from fai_core.ingest.common import DomainPolicy
        from fai_net.telemetry.otlp_receiver import OtlpLimits, serve_otlp
        from fai_net.telemetry.spool import SpoolWriter

        writer = SpoolWriter(directory / "telemetry.sqlite", max_steps=10**8)
        limits = OtlpLimits(
            requests_per_s=1e9, request_burst=10**9, spans_per_s=1e12, span_burst=10**12
        )
        receiver = serve_otlp(0, writer, DomainPolicy(), limits)
        port = receiver.port

        def closer() -> None:
            stats.update(receiver.stats)
            receiver.stop()
            writer.close()

    (directory / "ready.json").write_text(json.dumps({"port": port, "pid": os.getpid()}))
    stop.wait()
    closer()
    (directory / "stats.json").write_text(json.dumps(stats))
    return 0


def server_proc(mode: str, directory: Path) -> Proc:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, str(directory)]
    return Proc(mode, directory, cmd, "ready.json")


def idle_cpu_rate(pid: int, seconds: float) -> float:
    start = proc_cpu(pid)["cpu"]
    time.sleep(seconds)
    return (proc_cpu(pid)["cpu"] - start) / seconds


def measured_send(pid: int, port: int, payloads, concurrency: int, idle_rate: float) -> dict:
    """Send everything; the server process's CPU over the window, idle CPU subtracted."""
    spans = sum(n for _, n in payloads)
    cpu0 = proc_cpu(pid)
    sent = send_all(port, payloads, concurrency)
    cpu = cpu_delta(cpu0, proc_cpu(pid))
    busy = max(0.0, cpu["cpu_s"] - idle_rate * sent["wall_s"])
    us_per_span = 1e6 * busy / spans
    out = rate(sent, payloads)
    out.update(
        cpu_s=r3(cpu["cpu_s"]),
        idle_cpu_s=r3(idle_rate * sent["wall_s"]),
        cpu_us_per_span=r3(us_per_span),
        spans_per_core_s=round(1e6 / us_per_span) if us_per_span else None,
        threads_cpu_s={k: r3(v) for k, v in cpu["threads_cpu_s"].items() if v >= 0.005},
    )
    return out


# -- phase 1: in-process stages --------------------------------------------------------------


def stages(payloads: list[tuple[bytes, int]], workdir: Path) -> dict:
    """CPU (thread time) per span of each step the receiver takes, one thread, no HTTP."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from fai_core.ingest.common import DomainPolicy
    from fai_core.ingest.otlp import TraceSessions, convert_request, parse_request
    from fai_net.telemetry.spool import Spool

    spans = sum(n for _, n in payloads)
    clock = time.thread_time
    t = clock()
    for body, _ in payloads:
        ExportTraceServiceRequest.FromString(body)
    parse_pb = clock() - t
    t = clock()
    requests = [parse_request(body, PROTOBUF) for body, _ in payloads]
    parse = clock() - t
    t = clock()
    for request in requests:  # what any Python reader of the spans does at the least
        for rs in request.resource_spans:
            for scope in rs.scope_spans:
                for span in scope.spans:
                    _ = (span.trace_id, span.span_id, span.parent_span_id, span.name)
                    _ = {kv.key: kv.value.WhichOneof("value") for kv in span.attributes}
    walk = clock() - t
    sessions, policy = TraceSessions(), DomainPolicy()
    t = clock()
    converted = [convert_request(req, policy, sessions=sessions) for req in requests]
    convert = clock() - t
    spool = Spool.open(workdir / "stages.sqlite", max_steps=10**8)
    try:
        t0, w0 = clock(), time.perf_counter()
        for c in converted:
            spool.append(c)
        append, append_wall = clock() - t0, time.perf_counter() - w0
    finally:
        spool.close()
    problems = sum(len(c.problems) for c in converted)
    records = sum(len(c.records) for c in converted)
    total = parse + convert + append
    return {
        "spans": spans,
        "records": records,
        "problems": problems,
        "us_per_span": {
            "protobuf_ParseFromString": r3(1e6 * parse_pb / spans),
            "parse_request": r3(1e6 * parse / spans),
            "walk_attributes_anchor": r3(1e6 * walk / spans),
            "convert_request": r3(1e6 * convert / spans),
            "spool_append_cpu": r3(1e6 * append / spans),
            "spool_append_wall": r3(1e6 * append_wall / spans),
            "total_cpu": r3(1e6 * total / spans),
        },
        "spans_per_core_s": round(spans / total),
    }


# -- phase 4: extraction offline -----------------------------------------------------------


def offline_extraction(spool_path: Path, workdir: Path) -> dict:
    import trio

    from fai_core.embedding import HashingEmbedder
    from fai_core.extraction import LocalDSOptimizer
    from fai_core.ingest.common import finish_trajectories
    from fai_net.telemetry.ingest import TelemetryIngest, split_mixed_labels
    from fai_net.telemetry.spool import Spool

    # The first pass's parts, one by one, on a copy (the pass itself consumes).
    copy = workdir / "copy.sqlite"
    with (
        contextlib.closing(sqlite3.connect(spool_path)) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)
    spool = Spool.open(copy)
    try:
        clock = time.perf_counter
        t = clock()
        closed = spool.closed(DOMAINS)
        read_s = clock() - t
        t = clock()
        records, _ = split_mixed_labels(finish_trajectories(closed.records, closed.ends))
        finish_s = clock() - t
        t = clock()
        extraction = LocalDSOptimizer(HashingEmbedder(8), bytes(32)).extract(records)
        extract_s = clock() - t
        t = clock()
        spool.consume(extraction.consumed)
        consume_s = clock() - t
    finally:
        spool.close()
    trajectories = len(closed.ends)
    parts = {
        "trajectories": trajectories,
        "tool_calls": len(closed.records),
        "experiences": len(extraction.experiences),
        "ms": {
            "spool_closed": r3(1e3 * read_s),
            "finish_trajectories": r3(1e3 * finish_s),
            "extract": r3(1e3 * extract_s),
            "consume": r3(1e3 * consume_s),
        },
        "extract_us_per_trajectory": r3(1e6 * extract_s / trajectories),
        "extract_us_per_tool_call": r3(1e6 * extract_s / len(closed.records)),
    }

    passes: list[dict] = []

    async def run() -> None:
        added: list[dict] = []

        async def add(items: list[dict]) -> dict:
            added.extend(items)
            return {"added": len(items)}

        ingest = TelemetryIngest(spool_path, add, lambda: list(DOMAINS))
        try:
            held = ingest.spool.counts()
            start = held["closed"] + held["open"]
            while True:
                w, c = time.perf_counter(), time.process_time()
                n = await ingest.run_pass()
                now = ingest.held["closed"] + ingest.held["open"]
                passes.append(
                    {
                        "wall_s": time.perf_counter() - w,
                        "cpu_s": time.process_time() - c,
                        "trajectories_consumed": held["closed"] + held["open"] - now,
                        "experiences": n,
                    }
                )
                if ingest.held["steps"] == held["steps"]:
                    break
                held = dict(ingest.held)
            passes[-1]["left_in_spool"] = dict(ingest.held)
            passes[-1]["trajectories_at_start"] = start
        finally:
            ingest.close()

    trio.run(run)
    useful = [p for p in passes if p["trajectories_consumed"]]
    trajectories = sum(p["trajectories_consumed"] for p in useful)
    wall = sum(p["wall_s"] for p in useful)
    cpu = sum(p["cpu_s"] for p in useful)
    return {
        "first_pass_parts": parts,
        "run_pass": {
            "passes": len(passes),
            "trajectories_consumed": trajectories,
            "experiences": sum(p["experiences"] for p in passes),
            "wall_s": r3(wall),
            "cpu_s": r3(cpu),
            "us_per_trajectory": r3(div(1e6 * cpu, trajectories)),
            "per_pass": [
                {k: r3(v) if isinstance(v, float) else v for k, v in p.items()} for p in passes
            ],
        },
    }


# -- phases 5-7: a node --------------------------------------------------------------------


def node_proc(directory: Path) -> Proc:
    cmd = [
        sys.executable, "-m", "fai_net.cli", "node", "run",
        "--data-dir", str(directory), "--open", "--embedder", "hashing",
        "--domain", IDLE_DOMAIN, "--otlp-port", "0", "--metrics-port", "0",
        "--broadcast-interval", "600", "--log-level", "warning",
    ]  # fmt: skip
    return Proc("node", directory, cmd, "node.json")


def held(spool: dict) -> int:
    """Trajectories in a spool (status `telemetry.spool`)."""
    return spool["closed"] + spool["open"]


def wait_extracted(client, pid: int, passes0: int, timeout: float) -> dict:
    """Poll status until a pass (at least the second from now) changes nothing; the time
    of the last change is when extraction was done."""
    deadline = time.monotonic() + timeout
    seen: dict[int, tuple[int, int, float]] = {}
    while time.monotonic() < deadline:
        tele = client.call("status")["telemetry"]
        now = time.perf_counter()
        p = tele["passes"]
        if p not in seen:
            key = (tele["spool"]["steps"], tele["experiences"])
            seen[p] = (*key, now, proc_cpu(pid))
        prev = max((q for q in seen if q < p), default=None)
        if p >= passes0 + 2 and prev is not None and seen[prev][:2] == seen[p][:2]:
            changed = min(q for q in seen if seen[q][:2] == seen[p][:2])
            return {"done_at": seen[changed][2], "cpu": seen[changed][3], "tele": tele}
        time.sleep(0.25)
    raise TimeoutError("the node's ingest did not settle")


def run_node(
    workdir: Path, payloads, e2e_payloads, traces: tuple[int, int], concurrency: int, procs
) -> dict:
    from fai_net.api.control import ControlClient

    node = node_proc(workdir / "node")
    procs.append(node)
    log("starting a node (--open, hashing embedder, --otlp-port 0)")
    node.launch(child_env()).wait_ready(180)
    client = ControlClient(node.dir / "control.sock", timeout=120)
    port = node.info["otlp_port"]
    time.sleep(2)
    idle = idle_cpu_rate(node.pid, 4.0)
    spans = sum(n for _, n in payloads)
    log(f"node: sending {spans} spans in {len(payloads)} requests (ingest not subscribed)")
    receive = measured_send(node.pid, port, payloads, concurrency, idle)
    tele = client.call("status")["telemetry"]
    receive["node_otlp_stats"] = tele.get("otlp")
    receive["spool_at_last_pass"] = tele["spool"]

    log("node: subscribing to the spans' domains; its ingest loop extracts")
    passes0 = tele["passes"]
    cpu0, t0 = proc_cpu(node.pid), time.perf_counter()
    for domain in DOMAINS:
        client.call("subscribe", domain=domain)
    done = wait_extracted(client, node.pid, passes0, 300)
    wall = done["done_at"] - t0
    cpu = cpu_delta(cpu0, done["cpu"])
    busy = max(0.0, cpu["cpu_s"] - idle * wall)
    tele = done["tele"]
    consumed = traces[0] - held(tele["spool"])
    extraction = {
        "wall_s": r3(wall),
        "cpu_s": r3(busy),
        "threads_cpu_s": {k: r3(v) for k, v in cpu["threads_cpu_s"].items() if v >= 0.005},
        "passes": tele["passes"] - passes0,
        "trajectories_consumed": consumed,
        "experiences": tele["experiences"],
        "groups": tele["groups"],
        "no_signal": tele["no_signal"],
        "us_per_trajectory": r3(div(1e6 * busy, consumed)),
        "us_per_span_sent": r3(1e6 * busy / spans),
        "left_in_spool": tele["spool"],
        "library_size": client.call("status")["library_size"],
    }

    e2e_spans = sum(n for _, n in e2e_payloads)
    log(f"node: end to end, {e2e_spans} more spans while subscribed")
    status0 = client.call("status")
    before = status0["telemetry"]
    cpu0 = proc_cpu(node.pid)
    sent = send_all(port, e2e_payloads, concurrency)
    passes = client.call("status")["telemetry"]["passes"]
    done = wait_extracted(client, node.pid, passes, 120)
    wall = done["done_at"] - sent["started"]
    cpu = cpu_delta(cpu0, done["cpu"])
    busy = max(0.0, cpu["cpu_s"] - idle * wall)
    tele = done["tele"]
    library = client.call("status")["library_size"]
    e2e = {
        "spans": e2e_spans,
        "send": rate(sent, e2e_payloads),
        "first_request_to_experiences_s": r3(wall),
        "cpu_s": r3(busy),
        "cpu_us_per_span": r3(1e6 * busy / e2e_spans),
        "threads_cpu_s": {k: r3(v) for k, v in cpu["threads_cpu_s"].items() if v >= 0.005},
        "trajectories_consumed": held(before["spool"]) + traces[1] - held(tele["spool"]),
        "experiences": tele["experiences"] - before["experiences"],
        "library_size_before": status0["library_size"],
        "library_size_after": library,
        "ingest_interval_s": 5.0,
    }
    return {"idle_cpu_per_s": r3(idle), "receive": receive, "extraction": extraction, "e2e": e2e}


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict:
    main_n = 6 if args.quick else 48
    sdk_n = 1 if args.quick else 4
    e2e_n = 2 if args.quick else 8
    log(f"making spans with the OpenTelemetry SDK: {main_n}+{sdk_n}+{e2e_n} replicas")
    t = time.perf_counter()
    spans = make_spans(range(main_n))
    sdk_spans = make_spans(range(main_n, main_n + sdk_n))
    e2e_spans = make_spans(range(main_n + sdk_n, main_n + sdk_n + e2e_n))
    made_s = time.perf_counter() - t
    t = time.perf_counter()
    payloads = encode(spans)
    e2e_payloads = encode(e2e_spans)
    encode_s = time.perf_counter() - t
    workload = describe(spans, payloads)
    workload["sdk_make_us_per_span"] = r3(
        1e6 * made_s / (len(spans) + len(sdk_spans) + len(e2e_spans))
    )
    workload["sdk_encode_us_per_span"] = r3(1e6 * encode_s / (len(spans) + len(e2e_spans)))
    log(f"workload: {workload}")

    log("in-process stages")
    stage = stages(payloads, workdir)

    log("bare HTTP server (anchor)")
    bare = server_proc("bare", workdir / "bare")
    procs.append(bare)
    bare.launch(child_env()).wait_ready(60)
    idle = idle_cpu_rate(bare.pid, 1.0)
    # The bare server is fast: the payloads are sent several times, for a window long
    # enough for the process CPU counters (10 ms ticks).
    t = time.perf_counter()
    send_all(bare.info["port"], payloads, args.concurrency)
    repeat = max(1, min(50, round(2.0 / max(time.perf_counter() - t, 1e-3))))
    bare_run = measured_send(bare.pid, bare.info["port"], payloads * repeat, args.concurrency, idle)
    bare_run["payload_repeats"] = repeat
    bare.stop()

    log("receiver alone (SpoolWriter sink)")
    rx = server_proc("receiver", workdir / "receiver")
    procs.append(rx)
    rx.launch(child_env()).wait_ready(60)
    idle = idle_cpu_rate(rx.pid, 1.0)
    rx_run = measured_send(rx.pid, rx.info["port"], payloads, args.concurrency, idle)
    log("receiver alone: the SDK's OTLPSpanExporter")
    from fai_net.devnet.demo import export_spans

    c, w = time.process_time(), time.perf_counter()
    sdk_requests = export_spans(sdk_spans, f"http://127.0.0.1:{rx.info['port']}/v1/traces")
    sdk_wall, sdk_cpu = time.perf_counter() - w, time.process_time() - c
    rx.stop()
    rx_stats = json.loads((rx.dir / "stats.json").read_text())
    rx_run["receiver_stats"] = rx_stats
    sdk = {
        "spans": len(sdk_spans),
        "requests": sdk_requests,
        "wall_s": r3(sdk_wall),
        "spans_per_s": round(len(sdk_spans) / sdk_wall),
        "exporter_cpu_us_per_span": r3(1e6 * sdk_cpu / len(sdk_spans)),
    }

    log("extraction offline on the receiver's spool (TelemetryIngest.run_pass)")
    offline = offline_extraction(rx.dir / "telemetry.sqlite", workdir)

    traces = (workload["traces"], describe(e2e_spans, e2e_payloads)["traces"])
    node = run_node(workdir, payloads, e2e_payloads, traces, args.concurrency, procs)

    from fai_net.telemetry.otlp_receiver import OtlpLimits

    parse_us = stage["us_per_span"]["protobuf_ParseFromString"]
    ratios = {
        "receiver_over_bare_http_spans_per_s": r3(
            div(rx_run["spans_per_s"], bare_run["spans_per_s"])
        ),
        "node_over_bare_http_spans_per_s": r3(
            div(node["receive"]["spans_per_s"], bare_run["spans_per_s"])
        ),
        "receiver_cpu_over_parse_cpu": r3(div(rx_run["cpu_us_per_span"], parse_us)),
        "node_cpu_over_parse_cpu": r3(div(node["receive"]["cpu_us_per_span"], parse_us)),
        "receiver_cpu_over_bare_http_cpu": r3(
            div(rx_run["cpu_us_per_span"], bare_run["cpu_us_per_span"])
        ),
    }
    target = {
        "spans_per_core_s": TARGET_SPANS_PER_CORE_S,
        "receiver_alone_spans_per_core_s": rx_run["spans_per_core_s"],
        "node_spans_per_core_s": node["receive"]["spans_per_core_s"],
        "in_process_spans_per_core_s": stage["spans_per_core_s"],
        "met_by_receiver_alone": (rx_run["spans_per_core_s"] or 0) >= TARGET_SPANS_PER_CORE_S,
        "met_by_node": (node["receive"]["spans_per_core_s"] or 0) >= TARGET_SPANS_PER_CORE_S,
        "node_default_limit_spans_per_s": OtlpLimits().spans_per_s,
    }
    return {
        "workload": workload,
        "stages_in_process": stage,
        "bare_http": bare_run,
        "receiver_alone": rx_run,
        "sdk_exporter": sdk,
        "extraction_offline": offline,
        "node": node,
        "ratios": ratios,
        "target": target,
    }


def print_table(report: dict) -> None:
    w, st, b, rx = (
        report[k] for k in ("workload", "stages_in_process", "bare_http", "receiver_alone")
    )
    n, off = report["node"], report["extraction_offline"]
    print(
        f"workload: {w['spans']} spans ({w['tool_spans']} tool calls, {w['traces']} traces) "
        f"in {w['requests']} requests of <= {SPANS_PER_REQUEST}, {w['bytes_per_span']} B/span"
    )
    print("\nCPU per span, one thread, no HTTP (us):")
    for k, v in st["us_per_span"].items():
        print(f"  {k:28s} {v:>9}")
    print(f"\n{'path':32s} {'spans/s':>9} {'CPU us/span':>12} {'spans/core-s':>13}")
    for label, row in (
        ("bare HTTP (anchor)", b),
        ("receiver alone -> spool", rx),
        ("node process -> spool", n["receive"]),
    ):
        print(
            f"  {label:30s} {row['spans_per_s']:>9} {row['cpu_us_per_span']:>12} "
            f"{row['spans_per_core_s'] or '-':>13}"
        )
    s = report["sdk_exporter"]
    print(
        f"  {'SDK OTLPSpanExporter -> rx':30s} {s['spans_per_s']:>9} "
        f"(exporter CPU {s['exporter_cpu_us_per_span']} us/span in the agent)"
    )
    print("\nratios:", json.dumps(report["ratios"]))
    rp = off["run_pass"]
    print(
        f"\nextraction offline (run_pass): {rp['trajectories_consumed']} trajectories in "
        f"{rp['passes']} passes, {rp['cpu_s']} s CPU = {rp['us_per_trajectory']} us/trajectory;"
        f" extract alone {off['first_pass_parts']['extract_us_per_trajectory']} "
        "us/trajectory"
    )
    ex = n["extraction"]
    print(
        f"extraction in the node: {ex['trajectories_consumed']} trajectories -> "
        f"{ex['experiences']} "
        f"experiences in {ex['wall_s']} s ({ex['passes']} passes), "
        f"{ex['us_per_trajectory']} us CPU/trajectory"
    )
    e = n["e2e"]
    print(
        f"end to end: {e['spans']} spans -> {e['experiences']} experiences "
        f"(library {e['library_size_before']} -> {e['library_size_after']}) in "
        f"{e['first_request_to_experiences_s']} s, {e['cpu_us_per_span']} us CPU/span"
    )
    t = report["target"]
    print(
        f"\ntarget {t['spans_per_core_s']} spans/s per core: receiver alone "
        f"{t['receiver_alone_spans_per_core_s']}, node {t['node_spans_per_core_s']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a smoke run (fewer spans)")
    parser.add_argument("--concurrency", type=int, default=2, help="sender threads")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve[0], Path(args.serve[1]))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="fai-ingest-", dir="/tmp"))
    procs: list[Proc] = []
    load0 = os.getloadavg()
    started = time.time()
    ok = False
    try:
        report = {
            "machine": {
                "cores": os.cpu_count(),
                "loadavg_before": [round(x, 2) for x in load0],
                "python": sys.version.split()[0],
            },
            "settings": {"quick": args.quick, "concurrency": args.concurrency},
        }
        report.update(run(args, workdir, procs))
        report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        report["total_wall_s"] = round(time.time() - started, 1)
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_all(procs)
        if args.keep or not ok:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
