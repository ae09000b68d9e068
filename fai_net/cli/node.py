"""`fai node status|peers|subscribe|unsubscribe|broadcast|stop` and `fai experiences ...`:
the command line of a running node.

Every command here is a client of the node's control socket (`fai_net.api.control`): it never
opens the library or the batch store itself, so it works while the node runs and cannot
race it. The socket is `--socket`, else `<--data-dir>/control.sock`, resolved like every
other setting (flag, then FAI_SOCKET / FAI_DATA_DIR, then fai.toml; `fai_net.settings`).

Exit codes (the convention of `fai_net.cli.common`): 0 done; 1 no node answers, or the node
failed; 2 the request was refused (bad text, unsubscribed domain, bad flag). Only stdlib
modules are imported at module level: the parser is built on every `fai` invocation, and
`fai --help` must stay instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fai_core import jsonlimits
from fai_net.cli.common import (
    Refused,
    add_json_flag,
    add_which_node_flags,
    error,
    group_help,
    guarded,
    int_in,
    positive_float,
    print_json,
)
from fai_net.peer_ids import peer_id_of_hex

#: Experiences per `add` call during an import (the node takes at most 1000 per call).
IMPORT_CHUNK = 200
#: Entries per `export` page (the node serves at most 1000).
EXPORT_PAGE = 500
_FILE_KEYS = frozenset({"text", "domain", "quality", "iteration"})


class _Refused(Refused):
    """A user-level refusal already worded for people; exit code 2 (`common.explain`).

    Its own name because `fai hook claude-code` reports a failure by exception type
    ("fai hook: _Refused: ...", fai_net/cli/telemetry.py) and that text stays as it is.
    """


# --------------------------------------------------------------------------------------------
# wiring
# --------------------------------------------------------------------------------------------


def add_node_client_commands(node_subparsers, commands) -> None:
    """Add status/peers/subscribe/unsubscribe/broadcast/stop to `fai node` and the `fai
    experiences` group.

    `node_subparsers` is the subparsers object of `fai node`; `commands` the top-level one.
    """
    conn = argparse.ArgumentParser(add_help=False)
    add_which_node_flags(conn)
    out = argparse.ArgumentParser(add_help=False)
    add_json_flag(out)
    parents = [conn, out]  # every command here: which node, and --json
    _add_node_state_commands(node_subparsers, parents)
    group = commands.add_parser(
        "experiences",
        help="add, search, import and export a running node's experiences",
        description="Experiences in a running node's library, through its control socket.",
    )
    experiences = group.add_subparsers(dest="experiences_command", metavar="SUBCOMMAND")
    group.set_defaults(handler=group_help(group, stderr=True))
    _add_library_commands(experiences, parents)
    _add_import_command(experiences, parents)
    _add_export_command(experiences, parents)
    _add_agent_commands(experiences, parents)
    _add_node_action_commands(node_subparsers, parents)


def _add_node_state_commands(node_subparsers, parents) -> None:
    """`fai node status|peers|subscribe|unsubscribe`."""
    p = node_subparsers.add_parser(
        "status",
        parents=parents,
        help="summary of a running node",
        description="Peers, library size per domain, stored batches, outbox, last sync, "
        "traffic, refused batches by reason, evidence files and membership mode.",
    )
    p.set_defaults(handler=guarded(_status))

    p = node_subparsers.add_parser(
        "peers",
        parents=parents,
        help="the node's peers",
        description="Peers the node is connected to or has seen: connection, repair "
        "round-trip latency, reputation, last contact. --json gives full node ids.",
    )
    p.set_defaults(handler=guarded(_peers))

    for name, verb in (("subscribe", "start"), ("unsubscribe", "stop")):
        p = node_subparsers.add_parser(
            name,
            parents=parents,
            help=f"{verb} following a domain's topic",
            description=f"{name.capitalize()} the running node to/from a domain's gossip "
            "topic. Subscribing also fetches the domain's history from peers by repair.",
        )
        p.add_argument("domain", metavar="DOMAIN", help="domain tag, e.g. coding")
        p.set_defaults(handler=guarded(_subscribe if name == "subscribe" else _unsubscribe))


def _add_library_commands(experiences, parents) -> None:
    """`fai experiences add|search`."""
    p = experiences.add_parser(
        "add",
        parents=parents,
        help="add experiences (the node embeds, stores and publishes them)",
        description="Add experiences given as --text flags (all in --domain) or as a "
        "JSONL file of {text, domain?, quality?, iteration?} objects. The node refuses "
        "domains it is not subscribed to. Adding the same (domain, text) again is harmless: "
        "experience ids are content addresses.",
    )
    p.add_argument("--domain", help="domain of the --text items (default for --file lines)")
    p.add_argument("--text", action="append", default=[], help="pattern text (repeat)")
    p.add_argument(
        "--quality",
        type=float,
        help="quality in (0, 1) of the --text items, default for --file lines (node: 0.5)",
    )
    p.add_argument("--file", help="JSONL file of experiences ('-' = stdin)")
    p.set_defaults(handler=guarded(_add))

    p = experiences.add_parser(
        "search",
        parents=parents,
        help="nearest experiences to a query",
        description="The node embeds QUERY and returns the k nearest experiences by "
        "cosine distance.",
    )
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--domain", help="only this domain")
    p.add_argument("-k", type=int_in(1, 100), default=10, help="results, 1..100 (default 10)")
    p.set_defaults(handler=guarded(_search))


def _add_import_command(experiences, parents) -> None:
    """`fai experiences import-telemetry` (the command itself: fai_net/cli/telemetry.py)."""
    from fai_net.cli.telemetry import add_import_arguments, import_telemetry

    p = experiences.add_parser(
        "import-telemetry",
        parents=parents,
        help="extract experiences from agent traces or tool telemetry and add them",
        description="Read a trace file (FAI JSON Lines, OTLP/JSON or protobuf as the "
        "OpenTelemetry SDK and collector write them, recorded Claude Code hook events, "
        "exported OpenAI Agents SDK traces; docs/telemetry.md), extract experiences locally "
        "with GRPO groups (single-attempt sessions are grouped with comparable ones) and "
        "the deterministic introspector, and add them to the node. Only pattern texts, "
        "domains, qualities and iterations leave this process. Bad units are skipped and "
        "reported by reason (--strict: refused whole); an input with no readable record "
        "exits 2. Experiences of domains the node does not follow are skipped and counted "
        "unless --subscribe.",
    )
    p.add_argument("file", metavar="FILE", help="the trace or telemetry file")
    p.add_argument("--source-name", help="label for this telemetry in messages (default: file)")
    p.add_argument(
        "--subscribe", action="store_true", help="subscribe the node to missing domains first"
    )
    _add_progress_flag(p)
    p.add_argument(
        "--chunk-size",
        type=int_in(1, IMPORT_CHUNK),
        default=IMPORT_CHUNK,
        metavar="N",
        help=f"experiences per add call, 1..{IMPORT_CHUNK} (default {IMPORT_CHUNK})",
    )
    add_import_arguments(p)
    p.set_defaults(handler=guarded(import_telemetry))


def _add_export_command(experiences, parents) -> None:
    """`fai experiences export`."""
    p = experiences.add_parser(
        "export",
        parents=parents,
        help="write the node's library as JSONL",
        description="Stream every library entry (or one domain's) as JSON lines of {id, "
        "text, domain, quality, iteration, origin, source, received_from, created_ms}.",
    )
    p.add_argument("--domain", help="only this domain")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--page-size",
        type=int_in(1, 1000),
        default=EXPORT_PAGE,
        metavar="N",
        help=f"entries per export call, 1..1000 (default {EXPORT_PAGE})",
    )
    _add_progress_flag(p)
    p.set_defaults(handler=guarded(_export))


def _add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action="store_true", help="progress on stderr even when it is not a TTY"
    )


def _add_agent_commands(experiences, parents) -> None:
    """`fai experiences recall|feedback`: what an agent asks before a task and reports after."""
    p = experiences.add_parser(
        "recall",
        parents=parents,
        help="the experiences most useful for a task, ranked by relevance and trust",
        description="What an agent asks its node before a task: the node embeds TASK, "
        "takes the experiences within --max-distance (cosine) of it and ranks them by "
        "relevance times trust (what this node's agents reported about them and their "
        "source; docs/recall.md). The table shows SCORE, RELEVANCE, UTILITY (0.5 = no "
        "reports), SOURCES (nodes that published it) and the first characters of each "
        "id; --json has the full ids, for `fai experiences feedback`.",
    )
    p.add_argument("task", metavar="TASK", help="the task or problem, in a sentence or two")
    p.add_argument("--domain", help="only this (subscribed) domain")
    p.add_argument("-k", type=int_in(1, 50), default=5, help="results, 1..50 (default 5)")
    p.add_argument(
        "--max-distance",
        type=positive_float,
        metavar="X",
        help="relevance cutoff as a cosine distance, 0 < X <= 2 (node default 0.65)",
    )
    p.add_argument(
        "--prompt",
        action="store_true",
        help="print only the block for a system prompt (nothing if no experience fits)",
    )
    p.set_defaults(handler=guarded(_recall))

    p = experiences.add_parser(
        "feedback",
        parents=parents,
        help="report whether a recalled experience helped",
        description="Record what a recalled experience did for the agent that used it. "
        "Later recalls on this node rank it (and its source) by these reports; a source "
        "whose experiences keep hurting is muted: its new experiences are not merged.",
    )
    p.add_argument("id", metavar="ID", help="the full experience id (recall --json)")
    p.add_argument(
        "outcome",
        metavar="OUTCOME",
        help="helped, no_effect, hurt, or a reward in [-1, 1]",
    )
    p.set_defaults(handler=guarded(_feedback))


def _add_node_action_commands(node_subparsers, parents) -> None:
    """`fai node broadcast|stop`."""
    p = node_subparsers.add_parser(
        "broadcast",
        parents=parents,
        help="publish a domain's new local experiences now",
        description="Publish the experiences added on this node that were not sent yet "
        "(the domain's outbox) now, instead of at the next broadcast interval or "
        "threshold, and print what was sent.",
    )
    p.add_argument("domain", metavar="DOMAIN", help="a subscribed domain, e.g. coding")
    p.set_defaults(handler=guarded(_broadcast))

    p = node_subparsers.add_parser(
        "stop",
        parents=parents,
        help="stop a running node",
        description="Ask the node to shut down, and wait (up to --timeout) until its "
        "control socket is gone.",
    )
    p.set_defaults(handler=guarded(_stop))


# --------------------------------------------------------------------------------------------
# connection
# --------------------------------------------------------------------------------------------


def resolve_socket(args: argparse.Namespace) -> tuple[str, str | None]:
    """(control socket path, data dir or None) from flags, a devnet node, environment or
    fai.toml.

    A flag beats `--node N` (a devnet node's socket and data dir, as typed flags: the run
    directory changes with every `fai devnet up`, the node's name does not), which beats the
    environment, which beats fai.toml; at the same level --socket beats --data-dir. Raises
    SettingsError when nothing names a node, or --node names none of the devnet's.
    """
    from fai_net.settings import SettingsError, resolve

    flags = {
        "socket": getattr(args, "socket", None),
        "data_dir": getattr(args, "data_dir", None),
        "node": getattr(args, "node", None),
    }
    settings = resolve(flags, config=getattr(args, "config", None))

    def rank(name: str) -> int:
        source = settings.sources[name]
        if source.startswith("--node"):
            return 1
        return {"flag": 0, "environment": 2}.get(source, 3)

    found = [
        (rank(name), order, name)
        for order, name in enumerate(("socket", "data_dir"))
        if settings.get(name) not in (None, "")
    ]
    if not found:
        raise SettingsError(
            "which node? give --data-dir DIR (uses DIR/control.sock), --socket PATH or "
            "--node N (a devnet node), set FAI_DATA_DIR or FAI_SOCKET, or put `data_dir = "
            "...` in fai.toml"
        )
    _, _, name = min(found)
    data_dir = settings.get("data_dir")
    if name == "socket":
        return str(Path(settings.get("socket")).expanduser()), data_dir
    return str(Path(data_dir).expanduser() / "control.sock"), data_dir


class _Node:
    """The control client of one command, with the socket it resolved."""

    def __init__(self, args: argparse.Namespace) -> None:
        from fai_net.api.control import ControlClient

        self.path, self.data_dir = resolve_socket(args)
        self.client = ControlClient(self.path, timeout=args.timeout)

    def call(self, action: str, **args: Any) -> dict[str, Any]:
        return self.client.call(action, **args)


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _ago(ms: int | None, now_ms: int | None = None) -> str:
    """'12s ago' for a unix-ms time; 'never' for None."""
    if ms is None:
        return "never"
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    seconds = max(0, (now - int(ms)) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172_800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _counts(counts: dict[str, int] | None) -> str:
    """'duplicate 3, stale 1' (largest first) or 'none'."""
    items = sorted(((k, int(v)) for k, v in (counts or {}).items() if v), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v}" for k, v in items) or "none"


def _short_id(node_id: str) -> str:
    """Ed25519 peer ids all start with 12D3KooW; the tail is what tells them apart."""
    return node_id if len(node_id) <= 16 else f"{node_id[:4]}…{node_id[-10:]}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 experience', '2 experiences': counts printed to people can be 1."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def with_source_node(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """--json items keep `source` (the hex key) and gain `source_node`, its peer id: the
    name the node's own `recall` answers already use, so every output spells it one way."""
    return [
        {**item, "source_node": item.get("source_node") or peer_id_of_hex(item.get("source"))}
        for item in items
    ]


def source_text(source_hex: str | None, own_peer_id: str | None) -> str:
    """An experience's source as people see peers: a short peer id, or 'this node'."""
    peer = peer_id_of_hex(source_hex)
    if peer is None:
        return "?"
    return "this node" if peer == own_peer_id else _short_id(peer)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right=()) -> str:
    """Plain aligned columns; column indexes in `right` are right-aligned. Last column is
    never padded (it is usually free text)."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


class _Progress:
    """'imported 400/734 experiences' on stderr: rewritten in place on a TTY, one line per
    step when forced with --progress on a pipe, silent otherwise."""

    def __init__(self, forced: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = self.tty or forced
        self.shown = False

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + message)
        else:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.enabled and self.tty and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# fai node ...
# --------------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    node = _Node(args)
    status = node.call("status")
    if args.json:
        print_json(status)
        return 0
    print(format_status(status))
    return 0


def format_status(s: dict[str, Any]) -> str:
    sizes = s.get("library_by_domain") or {}
    domains = s.get("domains") or []
    lines = [
        ("node", s.get("node_id", "?")),
        ("membership", s.get("membership", "?")),
        ("domains", ", ".join(domains) or "none"),
        ("peers", f"{s.get('peers', 0)} connected"),
        ("library", plural(s.get("library_size", 0), "experience")),
    ]
    for domain in sorted(set(sizes) | set(domains)):
        mark = "" if domain in domains else " (not subscribed)"
        lines.append((f"  {domain}", f"{sizes.get(domain, 0)}{mark}"))
    lines += [
        ("batches", f"{s.get('batches_stored', 0)} stored, {s.get('pending', 0)} awaiting merge"),
        ("outbox", f"{plural(s.get('outbox', 0), 'experience')} waiting to be published"),
        ("last sync", _ago(s.get("last_sync"))),
        (
            "traffic",
            f"{_bytes(s.get('bytes_received'))} in, {_bytes(s.get('bytes_sent'))} out",
        ),
        ("rejections", _counts(s.get("rejections"))),
        ("drops", _counts(s.get("drops"))),
        ("evidence", plural(s.get("evidence", 0), "equivocation file")),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _peers(args: argparse.Namespace) -> int:
    node = _Node(args)
    peers = node.call("peers").get("peers", [])
    if args.json:
        print_json({"peers": peers})
        return 0
    if not peers:
        print("no peers yet")
        return 0
    peers = sorted(peers, key=lambda p: (not p.get("connected"), p.get("node_id", "")))
    # In registry mode each peer is shown with its operator, as `fai registry peers` shows it.
    operators = any(p.get("operator") for p in peers)
    rows = [
        (
            _short_id(p.get("node_id", "?")),
            "yes" if p.get("connected") else "no",
            _num(p.get("latency_ms"), 1),
            _num(p.get("reputation"), 3),
            _ago(p.get("last_seen")) if p.get("last_seen") else "never",
            *([p.get("operator") or "?"] if operators else []),
        )
        for p in peers
    ]
    headers = ("NODE", "CONNECTED", "LATENCY MS", "REPUTATION", "LAST SEEN")
    print(format_table(headers + (("OPERATOR",) if operators else ()), rows, right=(2, 3)))
    connected = sum(1 for p in peers if p.get("connected"))
    print(f"\n{connected} connected, {len(peers)} known")
    return 0


def _check_domain(domain: str) -> None:
    from fai_core.experience import domain_problem

    problem = domain_problem(domain)
    if problem:
        raise _Refused(problem)


def _subscribe(args: argparse.Namespace) -> int:
    _check_domain(args.domain)
    result = _Node(args).call("subscribe", domain=args.domain)
    changed = bool(result.get("subscribed"))
    if args.json:
        print_json({"domain": args.domain, "subscribed": changed})
    elif changed:
        print(f"subscribed to {args.domain} (its history is fetched from peers)")
    else:
        print(f"already subscribed to {args.domain}")
    return 0


def _unsubscribe(args: argparse.Namespace) -> int:
    _check_domain(args.domain)
    result = _Node(args).call("unsubscribe", domain=args.domain)
    changed = bool(result.get("unsubscribed"))
    if args.json:
        print_json({"domain": args.domain, "unsubscribed": changed})
    elif changed:
        print(f"unsubscribed from {args.domain} (its experiences stay in the library)")
    else:
        print(f"was not subscribed to {args.domain}")
    return 0


# --------------------------------------------------------------------------------------------
# fai experiences add / search
# --------------------------------------------------------------------------------------------


def _items_from_file(
    path: str, default_domain: str | None, default_quality: float | None
) -> list[dict[str, Any]]:
    """{text, domain, quality?, iteration?} per non-blank line; a bad line is refused with
    its number before anything is sent."""
    name = "<stdin>" if path == "-" else path
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise _Refused(f"cannot read {name}: {exc.strerror}") from None
    items = []
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            try:
                obj = jsonlimits.loads(line)
            except ValueError as exc:
                raise _Refused(f"{where}: not JSON ({exc})") from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise _Refused(f"{where}: expected an object with a text field")
            unknown = sorted(set(obj) - _FILE_KEYS)
            if unknown:
                raise _Refused(f"{where}: unknown field(s) {unknown}")
            item = {k: v for k, v in obj.items() if v is not None}
            item.setdefault("domain", default_domain)
            if default_quality is not None:
                item.setdefault("quality", default_quality)
            if item["domain"] is None:
                raise _Refused(f"{where}: no domain (give one in the line or --domain)")
            _check_text(item["text"], where)
            items.append(item)
    except UnicodeDecodeError as exc:
        raise _Refused(f"{name} is not UTF-8: {exc.reason}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    return items


def _check_text(text: object, where: str) -> None:
    """The node's own text rule (`fai_core.experience.text_problem`), checked here too so a
    long file is refused with the offending line number before any of it is sent."""
    from fai_core.experience import text_problem

    problem = text_problem(text)
    if problem:
        raise _Refused(f"{where}: {problem[1]}")


def _chunks(items: Sequence[dict], size: int) -> Iterator[Sequence[dict]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _send(node: _Node, items: Sequence[dict], size: int, progress=None) -> dict[str, int]:
    """`add` the items in chunks; returns {added, inserted}. On a refusal mid-way, the
    message says how many were already added (re-sending them later is harmless)."""
    from fai_net.api.control import ControlError

    added = inserted = 0
    for chunk in _chunks(items, size):
        try:
            result = node.call("add", experiences=list(chunk))
        except ControlError as exc:
            if added:
                exc.message += f" ({added} of {len(items)} experiences were added before this)"
            raise
        added += int(result.get("added", len(chunk)))
        inserted += int(result.get("inserted", 0))
        if progress is not None:
            progress(added, len(items))
    return {"added": added, "inserted": inserted}


def _add(args: argparse.Namespace) -> int:
    if not args.text and not args.file:
        raise _Refused("nothing to add: give --text T (with --domain) or --file F.jsonl")
    if args.text and not args.domain:
        raise _Refused("--text needs --domain")
    items: list[dict[str, Any]] = []
    for text in args.text:  # the node checks these; a refusal names the rule broken
        item: dict[str, Any] = {"text": text, "domain": args.domain}
        if args.quality is not None:
            item["quality"] = args.quality
        items.append(item)
    if args.file:
        items += _items_from_file(args.file, args.domain, args.quality)
    if not items:
        raise _Refused(f"{args.file} holds no experiences")
    node = _Node(args)
    result = _send(node, items, IMPORT_CHUNK)
    by_domain = dict(Counter(item["domain"] for item in items))
    if args.json:
        print_json({**result, "by_domain": by_domain})
    else:
        per = ", ".join(f"{d} {n}" for d, n in sorted(by_domain.items()))
        added = plural(result["added"], "experience")
        print(f"added {added} ({result['inserted']} new to the library): {per}")
    return 0


def _search(args: argparse.Namespace) -> int:
    if args.domain is not None:
        _check_domain(args.domain)
    call: dict[str, Any] = {"query": args.query, "k": args.k}
    if args.domain is not None:
        call["domain"] = args.domain
    node = _Node(args)
    hits = node.call("search", **call).get("hits", [])
    if args.json:
        print_json({"hits": with_source_node(hits)})
        return 0
    if not hits:
        print("no experiences found")
        return 0
    own = node.call("info").get("node_id")
    rows = [
        (
            f"{h.get('distance', 0):.3f}",
            f"{h.get('quality', 0):.2f}",
            h.get("domain", "?"),
            # The source beside the origin, as `fai node peers` names it (the header stays).
            f"{h.get('origin', '?')} ({source_text(h.get('source'), own)})",
            h.get("text", ""),
        )
        for h in hits
    ]
    print(format_table(("DISTANCE", "QUALITY", "DOMAIN", "ORIGIN", "TEXT"), rows, right=(0, 1)))
    return 0


# --------------------------------------------------------------------------------------------
# fai experiences recall / feedback, fai node broadcast / stop
# --------------------------------------------------------------------------------------------

#: Characters of an experience id the recall table shows (ids are 72 hex digits, the
#: first 8 the same for all: the CID header).
ID_SHOWN = 16


def _client(args: argparse.Namespace):
    """The Python client (fai_net.api.client) of the node these flags name."""
    from fai_net.api.client import FaiClient

    path, _ = resolve_socket(args)
    return FaiClient(path, timeout=args.timeout)


def _recall(args: argparse.Namespace) -> int:
    if args.domain is not None:
        _check_domain(args.domain)
    found = _client(args).recall(args.task, args.domain, args.k, args.max_distance)
    if args.prompt:
        if found.get("prompt"):
            print(found["prompt"])
        return 0
    if args.json:
        experiences = with_source_node(found.get("experiences") or [])
        print_json({**found, "experiences": experiences})
        return 0
    items = found.get("experiences") or []
    if not items:
        print(f"no experiences within distance {found.get('max_distance', '?')} of this task")
        return 0
    rows = [
        (
            f"{e.get('score', 0):.3f}",
            f"{e.get('relevance', 0):.3f}",
            f"{e.get('utility', 0):.2f}",
            e.get("sources", 1),
            e.get("domain", "?"),
            e.get("text", ""),
            e.get("id", "")[:ID_SHOWN],
        )
        for e in items
    ]
    headers = ("SCORE", "RELEVANCE", "UTILITY", "SOURCES", "DOMAIN", "TEXT", "ID")
    print(format_table(headers, rows, right=(0, 1, 2, 3)))
    if found.get("withheld"):
        print(f"({found['withheld']} more within distance not offered: their sources are refused)")
    return 0


def _outcome(text: str) -> str | float:
    from fai_core.ranking import OUTCOMES

    if text in OUTCOMES:
        return text
    try:
        return float(text)
    except ValueError:
        raise _Refused(
            f"OUTCOME must be helped, no_effect, hurt or a number in [-1, 1], got {text!r}"
        ) from None


def _feedback(args: argparse.Namespace) -> int:
    outcome = _outcome(args.outcome)
    ident = args.id.strip().lower()
    if len(ident) <= ID_SHOWN:
        raise _Refused(
            f"{args.id!r} is too short for an experience id: give the full id, which "
            "`fai experiences recall TASK --json` prints (its table shows only the start)"
        )
    result = _client(args).feedback(ident, outcome)
    if args.json:
        print_json(with_source_node([result])[0])
        return 0
    reports = int(result.get("reports", 0))
    print(
        f"recorded {args.outcome} for {ident[:ID_SHOWN]}…: utility {result.get('utility', 0):.2f} "
        f"after {reports} report{'s' if reports != 1 else ''}; its source's standing "
        f"{result.get('source_standing', 0):.2f}"
    )
    if result.get("source_muted"):
        print("its source is now muted: this node no longer merges its new experiences")
    return 0


def _broadcast(args: argparse.Namespace) -> int:
    _check_domain(args.domain)
    result = _client(args).broadcast(args.domain)
    if args.json:
        print_json({"domain": args.domain, **result})
        return 0
    sent = int(result.get("experiences_sent", 0))
    if not sent:
        print(f"nothing new to send in {args.domain}")
        return 0
    batches = result.get("batch_ids") or [result.get("batch_id")]
    peers = int(result.get("peers_reached", 0))
    print(
        f"sent {sent} experience{'s' if sent != 1 else ''} in {args.domain} to {peers} "
        f"peer{'s' if peers != 1 else ''}, in {len(batches)} "
        f"batch{'es' if len(batches) != 1 else ''}: {', '.join(map(str, batches))}"
    )
    if not peers:
        print("no peer is on this domain's topic right now; peers fetch the batches by repair")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from fai_net.api.control import ControlError, NodeNotRunning

    client = _client(args)
    client.stop()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            client.info()
        except NodeNotRunning:
            break
        except ControlError:
            pass  # the node is going away; ask again
        time.sleep(0.1)
    else:
        error(f"the node at {client.socket_path} still answers after {args.timeout:g}s")
        return 1
    if args.json:
        print_json({"stopped": True, "socket": client.socket_path})
    else:
        print(f"stopped the node at {client.socket_path}")
    return 0


# --------------------------------------------------------------------------------------------
# fai experiences import-telemetry (the command itself: fai_net/cli/telemetry.py)
# --------------------------------------------------------------------------------------------


def send_items(node: _Node, items: list[dict], args: argparse.Namespace, progress, label: str):
    """Add extracted items to the node (subscribing first with --subscribe); what was
    imported per domain, what was skipped as unsubscribed, and the node's counts."""
    subscribed = list(node.call("info").get("domains", []))
    newly: list[str] = []
    missing = [d for d in sorted({item["domain"] for item in items}) if d not in subscribed]
    if args.subscribe:
        for domain in missing:
            if node.call("subscribe", domain=domain).get("subscribed"):
                newly.append(domain)
        subscribed += missing
    sendable = [item for item in items if item["domain"] in subscribed]
    skipped = Counter(item["domain"] for item in items if item["domain"] not in subscribed)

    def step(done: int, total: int) -> None:
        progress(f"imported {done}/{plural(total, 'experience')} from {label} ...")

    result = _send(node, sendable, args.chunk_size, step) if sendable else {"added": 0}
    return {
        "imported": dict(sorted(Counter(item["domain"] for item in sendable).items())),
        "added": result["added"],
        "inserted": result.get("inserted", 0),
        "skipped_unsubscribed": dict(sorted(skipped.items())),
        "subscribed": newly,
    }


# --------------------------------------------------------------------------------------------
# fai experiences export
# --------------------------------------------------------------------------------------------


def iter_export(node: _Node, domain: str | None, page: int = EXPORT_PAGE) -> Iterator[dict]:
    """Every library entry, paged through the node's `export` action.

    Offset paging over a live library can repeat an entry when a merge or an eviction lands
    between two pages; repeats are dropped here by id. (An entry can also be missed in that
    window; re-run the export for an exact snapshot of a quiet node.)
    """
    seen: set[str] = set()
    offset = 0
    while True:
        call: dict[str, Any] = {"offset": offset, "limit": page}
        if domain is not None:
            call["domain"] = domain
        reply = node.call("export", **call)
        items = reply.get("items") or []
        for item in items:
            ident = item.get("id")
            if ident in seen:
                continue
            seen.add(ident)
            yield item
        nxt = reply.get("next")
        if nxt is None or not items or nxt <= offset:
            return
        offset = int(nxt)


def _export(args: argparse.Namespace) -> int:
    if args.domain is not None:
        _check_domain(args.domain)
    node = _Node(args)
    progress = _Progress(args.progress and bool(args.output))
    if not args.output:
        for entry in iter_export(node, args.domain, args.page_size):
            sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return 0
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    by_domain: Counter[str] = Counter()
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as out:
            for entry in iter_export(node, args.domain, args.page_size):
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                by_domain[entry.get("domain", "?")] += 1
                total = sum(by_domain.values())
                if total % EXPORT_PAGE == 0:
                    progress(f"exported {total} experiences ...")
        os.replace(partial, target)
    except OSError as exc:
        raise _Refused(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    progress.done()
    total = sum(by_domain.values())
    if args.json:
        print_json({"exported": total, "file": str(target), "by_domain": dict(by_domain)})
    else:
        per = ", ".join(f"{d} {n}" for d, n in sorted(by_domain.items())) or "nothing"
        print(f"exported {plural(total, 'experience')} to {target}: {per}")
    return 0
