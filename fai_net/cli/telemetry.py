"""`fai experiences import-telemetry` and `fai hook claude-code`: agent traces into a node.

The import reads a whole file (FAI's JSON Lines, OTLP/JSON or protobuf, recorded Claude
Code hook events, exported OpenAI Agents SDK traces), extracts experiences in this process
and adds them through the control socket: nothing but pattern texts, domains, qualities
and iterations reaches the node. Every refused unit is reported by reason with where it
was; `--strict` refuses the whole input at its first bad unit; an input that yields no
record at all exits 2. Parsing and extraction finish before the first `add`, so a bad
input imports nothing.

The hook is the opposite shape: one short process per Claude Code hook event, appending
to the node's telemetry spool (fai_net/telemetry/spool.py) and returning at once. It
always exits 0, so a broken event or a missing node never blocks the agent; what went
wrong goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from fai_core import jsonlimits
from fai_net.cli.common import add_data_dir_flag, group_help, print_json

#: Locations shown per refusal reason before "... and N more".
SHOWN_PER_REASON = 5
#: Largest hook event read from stdin; a bigger one is reported and skipped.
MAX_HOOK_EVENT_BYTES = 16 << 20


#: fai_core.ingest.detect.FORMATS, spelt out: importing it would load numpy on `fai --help`.
FORMATS = ("fai", "otlp", "claude-code", "openai-agents")


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=("auto", *FORMATS),
        default="auto",
        help="input format (default: auto-detected from the first bytes)",
    )
    p.add_argument(
        "--domain",
        metavar="D",
        help="domain of traces (or FAI records) that name none (default: general)",
    )
    p.add_argument(
        "--domain-rule",
        action="append",
        default=[],
        metavar="ATTR=VALUE:DOMAIN[/KIND]",
        help="traces whose attribute ATTR equals VALUE get DOMAIN (repeat; first match wins)",
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse the whole input at its first bad unit"
    )


def policy_from(domain: str | None, rules: list[str]):
    from fai_core.ingest.common import DomainPolicy, DomainRule

    try:
        return DomainPolicy(domain or "general", tuple(DomainRule.parse(r) for r in rules))
    except ValueError as exc:
        raise _refused(str(exc)) from None


def _refused(message: str) -> Exception:
    from fai_net.cli.node import _Refused

    return _Refused(message)


def problem_lines(problems, label: str, limit: int = SHOWN_PER_REASON) -> list[str]:
    """One line per distinct reason: its count and the first `limit` places it occurred."""
    places: dict[str, list[str]] = {}
    for problem in problems:
        places.setdefault(problem.reason, []).append(problem.where)
    lines = []
    for reason, where in sorted(places.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(where[:limit])
        more = f" and {len(where) - limit} more" if len(where) > limit else ""
        lines.append(f"fai: {label}: {len(where)} x {reason} ({shown}{more})")
    return lines


def read_input(args: argparse.Namespace, policy) -> tuple[str, Any]:
    """(format, Converted) of the file named on the command line, or a refusal."""
    from fai_core.ingest.common import IngestError
    from fai_core.ingest.detect import MAX_IMPORT_BYTES, read_telemetry

    try:
        with open(args.file, "rb") as stream:
            data = stream.read(MAX_IMPORT_BYTES + 1)
    except OSError as exc:
        raise _refused(f"cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        return read_telemetry(data, args.format, policy, now=time.time())
    except IngestError as exc:
        raise _refused(f"{args.file}: {exc}") from None


def extract(converted) -> tuple[list[dict[str, Any]], Any, int]:
    """(add items, ExtractionStats, trajectories dropped for mixed labels).

    The optimizer's embeddings are thrown away: the node embeds again on `add` with the
    fleet's model, so the cheap HashingEmbedder stands in here.
    """
    from fai_core.embedding import HashingEmbedder
    from fai_core.extraction import LocalDSOptimizer
    from fai_core.ingest.common import finish_trajectories
    from fai_net.telemetry.ingest import split_mixed_labels

    ends = {end.key: end for end in converted.ends}
    records = finish_trajectories(converted.records, ends)
    records, mixed = split_mixed_labels(records)
    extraction = LocalDSOptimizer(HashingEmbedder(8), bytes(32)).extract(records)
    items = [
        {
            "text": e.text,
            "domain": e.domain,
            "quality": float(e.quality),
            "iteration": int(e.iteration),
        }
        for e in extraction.experiences
    ]
    return items, extraction.stats, len(mixed)


def why_nothing(stats, mixed: int) -> list[str]:
    """Why extraction gave fewer experiences than it had groups, in plain words."""
    from fai_core.grpo import GROUP_SIZE

    reasons = []
    if stats.waiting_trajectories:
        reasons.append(
            f"{stats.waiting_trajectories} single-attempt session(s) wait for comparable "
            f"ones: a group needs {GROUP_SIZE} sessions of one domain and kind"
        )
    retried = stats.unscored_trajectories - stats.waiting_trajectories
    if retried:
        reasons.append(f"{retried} attempt(s) of retried tasks fall outside a full group")
    if stats.no_signal:
        reasons.append(f"{stats.no_signal} group(s) had no signal (every attempt scored alike)")
    if stats.no_pattern:
        reasons.append(f"{stats.no_pattern} group(s) gave no pattern (best and worst look alike)")
    if stats.introspection_errors:
        reasons.append(f"{stats.introspection_errors} group(s) failed introspection")
    if mixed:
        reasons.append(f"{mixed} trajectory(ies) dropped: one task with two domains or kinds")
    return reasons


def import_telemetry(args: argparse.Namespace) -> int:
    from fai_net.cli.node import _Node, _Progress, format_table, plural, send_items

    label = args.source_name or args.file
    policy = policy_from(args.domain, args.domain_rule)
    progress = _Progress(args.progress)
    fmt, converted = read_input(args, policy)
    if converted.problems:
        if args.strict:
            raise _refused(f"{label}: {converted.problems[0]} (--strict: nothing imported)")
        noun = "line(s)" if fmt in ("fai", "claude-code") else "unit(s)"
        print(
            f"fai: skipped {len(converted.problems)} bad telemetry {noun} in {label}",
            file=sys.stderr,
        )
        for line in problem_lines(converted.problems, label):
            print(line, file=sys.stderr)
    if converted.units and not converted.records:
        raise _refused(
            f"{label}: no tool call could be read from {converted.units} {fmt} unit(s) "
            f"({converted.ignored} without a tool call, {len(converted.problems)} refused)"
        )
    progress(
        f"extracting experiences from {plural(len(converted.records), 'record')} of {label} ..."
    )
    items, stats, mixed = extract(converted)
    node = _Node(args)
    sent = send_items(node, items, args, progress, label)
    progress.done()
    summary = {
        "source": label,
        "format": fmt,
        "records": len(converted.records),
        "bad_lines": len(converted.problems),
        "units": converted.units,
        "ignored": converted.ignored,
        "problems": dict(Counter(p.reason for p in converted.problems)),
        "experiences": len(items),
        **sent,
        "extraction": asdict(stats),
        "why_not_more": why_nothing(stats, mixed),
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"{label}: {fmt}, {plural(len(converted.records), 'record')} "
        f"({len(converted.problems)} bad skipped), {plural(stats.tasks, 'task')}, "
        f"{plural(stats.groups, 'group')} ({stats.pooled_groups} of single attempts) -> "
        f"{plural(len(items), 'experience')}"
    )
    if not items:
        print("no experiences: " + "; ".join(summary["why_not_more"] or ["no groups formed"]))
    elif summary["why_not_more"]:
        print("not used: " + "; ".join(summary["why_not_more"]))
    if sent["subscribed"]:
        print(f"subscribed to {', '.join(sent['subscribed'])}")
    skipped = sent["skipped_unsubscribed"]
    rows = [(d, n) for d, n in sent["imported"].items()]
    rows += [(d, f"0 (skipped {n}: not subscribed)") for d, n in sorted(skipped.items())]
    if rows:
        print(format_table(("DOMAIN", "IMPORTED"), rows))
    print(f"imported {plural(sent['added'], 'experience')} ({sent['inserted']} new to the library)")
    if skipped:
        print(
            f"skipped {plural(sum(skipped.values()), 'experience')} of unsubscribed domains "
            f"({', '.join(sorted(skipped))}); use --subscribe to import them"
        )
    return 0


# --------------------------------------------------------------------------------------------
# fai hook claude-code
# --------------------------------------------------------------------------------------------


def add_hook_command(commands) -> None:
    hook = commands.add_parser(
        "hook",
        help="agent hooks that feed a node's telemetry spool",
        description="Commands an agent runs on its own events. They append to the node's "
        "telemetry spool and return at once; the node learns from it while it runs.",
    )
    sub = hook.add_subparsers(dest="hook_command", metavar="AGENT")
    p = sub.add_parser(
        "claude-code",
        help="a Claude Code hook command (reads one hook event on stdin)",
        description="Wire this into Claude Code's hooks (PostToolUse, PostToolUseFailure, "
        "UserPromptSubmit, Stop, SessionEnd): it reads the event from stdin, keeps the tool "
        "name and outcome class only, appends them to the node's spool and exits 0, even "
        "on error (the agent is never blocked; problems go to stderr).",
    )
    add_data_dir_flag(p, help="the node's data directory (FAI_DATA_DIR)")
    p.add_argument("--config", help="a fai.toml naming data_dir")
    p.add_argument("--domain", metavar="D", help="domain of this agent's sessions")
    p.add_argument("--domain-rule", action="append", default=[], metavar="ATTR=VALUE:DOMAIN[/KIND]")
    p.add_argument(
        "--recall",
        type=int,
        default=0,
        metavar="K",
        help="on SessionStart and UserPromptSubmit, put the K most relevant experiences "
        "in the agent's context (the prompt is sent to the local node only, never stored)",
    )
    p.add_argument(
        "--feedback",
        action="store_true",
        help="on Stop, report how the turn went as feedback on the experiences recalled "
        "for it (a success: +0.5, a failure: -0.5)",
    )
    p.set_defaults(handler=claude_code_hook)
    hook.set_defaults(handler=group_help(hook))


def claude_code_hook(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    """Exit 0 always: a hook that fails must not fail the agent's tool call."""
    stdout = stdout if stdout is not None else sys.stdout
    try:
        message, context = _run_hook(args, stdin if stdin is not None else sys.stdin.buffer)
    except Exception as exc:  # the agent must never see a traceback or a non-zero code
        message, context = f"fai hook: {type(exc).__name__}: {exc}", None
    if context is not None:
        stdout.write(json.dumps(context) + "\n")
    if message:
        print(message, file=sys.stderr)
    return 0


def _run_hook(args: argparse.Namespace, stream) -> tuple[str | None, dict | None]:
    """(message for stderr, JSON for Claude Code on stdout) of one hook event."""
    from pathlib import Path

    from fai_core.ingest.claude_code import HookConverter
    from fai_net.settings import resolve
    from fai_net.telemetry.spool import Spool, SpoolFull, SpoolTurns

    raw = stream.read(MAX_HOOK_EVENT_BYTES + 1)
    if len(raw) > MAX_HOOK_EVENT_BYTES:
        return f"fai hook: event larger than {MAX_HOOK_EVENT_BYTES} bytes: skipped", None
    try:
        event = jsonlimits.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"fai hook: the event on stdin is not JSON ({exc}): skipped", None
    settings = resolve({"data_dir": args.data_dir}, config=args.config)
    data_dir = settings.get("data_dir")
    if not data_dir:
        return "fai hook: no node data directory: give --data-dir or set FAI_DATA_DIR", None
    policy = policy_from(args.domain, args.domain_rule)
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        return f"fai hook: {path} is not a node data directory: skipped", None
    name = event.get("hook_event_name") if isinstance(event, dict) else None
    messages: list[str] = []
    context = None
    with Spool.open(path / "telemetry.sqlite", timeout_s=1.0) as spool:
        turns = SpoolTurns(spool)
        converter = HookConverter(policy, turns)
        if args.feedback and name in ("Stop", "StopFailure", "SessionEnd"):
            messages += _report_turn(path, spool, event, turns)
        converted = converter.convert(event, time.time())
        try:
            spool.append(converted)
        except SpoolFull as exc:
            messages.append(str(exc))
        if args.recall > 0 and name in ("SessionStart", "UserPromptSubmit"):
            context, said = _recall_context(path, spool, event, args.recall, policy, turns)
            messages += said
    messages += [str(p) for p in converted.problems[:3]]
    return ("fai hook: " + "; ".join(messages) if messages else None), context


#: How long a hook waits for its node before giving up (the agent waits meanwhile).
HOOK_NODE_TIMEOUT_S = 3.0


def _recall_context(path, spool, event, k: int, policy, turns):
    """Claude Code's hook output that adds the K most relevant experiences to the context.

    The task is the user's prompt (UserPromptSubmit) or, at session start, the domain
    itself. The text goes to the local node's control socket to be embedded and is not
    kept; the ids recalled are kept in the spool so that Stop can report on them."""
    from fai_core.ingest.common import safe_id
    from fai_net.api.control import ControlClient, ControlError, NodeNotRunning

    name = event["hook_event_name"]
    task = event.get("prompt") if name == "UserPromptSubmit" else None
    domain, _ = policy.resolve({})
    if not isinstance(task, str) or not task.strip():
        task = f"{domain} work"
    client = ControlClient(path / "control.sock", timeout=HOOK_NODE_TIMEOUT_S)
    try:
        reply = client.call("recall", task=task[:4096], k=min(k, 50))
    except NodeNotRunning:
        return None, ["no node is running: nothing recalled"]
    except (ControlError, OSError) as exc:
        return None, [f"recall failed: {exc}"]
    session = safe_id(event.get("session_id"))
    if session is not None:
        ids = [e["id"] for e in reply["experiences"]]
        spool.remember_recalled(session, turns.get(session, 0), ids)
    if not reply.get("prompt"):
        return None, []
    output = {"hookEventName": name, "additionalContext": reply["prompt"]}
    return {"hookSpecificOutput": output}, []


def _report_turn(path, spool, event, turns) -> list[str]:
    """Feedback on the experiences recalled for the turn that is ending: +0.5 when the
    turn's tool calls ended in success, -0.5 in failure, nothing when they do not say."""
    from fai_core.ingest.common import SessionEnd, safe_id, terminal_reward
    from fai_core.introspection import classify_output
    from fai_net.api.control import ControlClient, ControlError, NodeNotRunning

    session = safe_id(event.get("session_id"))
    if session is None:
        return []
    turn = turns.get(session, 0)
    ids = spool.recalled(session, turn)
    if not ids:
        return []
    task_id = safe_id(f"{event['session_id']}#{turn}")
    steps = spool.steps_of(task_id, "0")
    failed = True if event.get("hook_event_name") == "StopFailure" else None
    outcomes = [classify_output(r.output) for r in steps]
    verdict = terminal_reward(outcomes, SessionEnd(task_id, "0", failed))
    if verdict == 0.0:
        return []
    # At most once: forgotten before reporting, so a call that fails partway is never
    # repeated on the ids it had already reported (feedback is a weak signal; a lost
    # report costs less than a doubled one).
    spool.forget_recalled(session, turn)
    client = ControlClient(path / "control.sock", timeout=HOOK_NODE_TIMEOUT_S)
    failed: list[str] = []
    for ident in ids:
        try:
            client.call("feedback", id=ident, outcome=0.5 * verdict)
        except NodeNotRunning:
            return ["no node is running: feedback not reported"]
        except (ControlError, OSError) as exc:  # e.g. the lesson was evicted since
            failed.append(f"{ident[:16]}: {exc}")
    return [f"feedback failed on {len(failed)} id(s) ({failed[0]})"] if failed else []
