"""The `fai` command line.

Heavy imports (numpy, the wire codec) happen inside the commands that need them, so that
`fai --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fai_net.cli.common import (
    EMBEDDERS,
    add_data_dir_flag,
    add_node_flag,
    add_registry_flag,
    add_rpc_flag,
    add_socket_flag,
    add_timeout_flag,
    group_help,
    run_command,
)

#: glibc malloc arenas a node may use (mallopt M_ARENA_MAX; glibc's default is 8 per core).
NODE_MALLOC_ARENAS = 2


def _limit_malloc_arenas(arenas: int = NODE_MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas, before the node starts any thread (MALLOC_ARENA_MAX, set
    in code: glibc reads the variable only when the process starts).

    A node embeds, opens its library and answers the control socket in worker threads, and
    each new thread can get an arena of its own, whose freed blocks stay mapped beside the
    others': 40-60 MB more RSS after embedding 500 texts, varying from run to run
    (docs/embedding.md, "Memory"). Two arenas measured as fast. Elsewhere than glibc,
    nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_arena_max = -8  # malloc.h
    mallopt(m_arena_max, arenas)


def _node_run(args: argparse.Namespace) -> int:
    _limit_malloc_arenas()
    import logging
    from pathlib import Path

    from fai_net.node.config import NodeConfig
    from fai_net.settings import resolve

    # Flags, then FAI_* variables, then fai.toml (`data_dir`, `rpc`, `registry`, `key_file`,
    # `domains = [...]`); the devnet state is not consulted: a node joins a chain explicitly.
    flags = {"data_dir": args.data_dir, "key_file": args.operator_key_file}
    if not args.open:
        flags.update(rpc=args.rpc, registry=args.registry)
    settings = resolve(flags, config=args.config, devnet_state="/nonexistent")
    toml_domains = settings.toml.get("domains", []) if settings.toml else []
    key_file = settings.get("key_file")
    config = NodeConfig(
        data_dir=Path(settings.require("data_dir")),
        domains=tuple(args.domain or toml_domains),
        listen=tuple(args.listen or ["/ip4/127.0.0.1/tcp/0"]),
        announce=tuple(args.announce or ()),
        seeds=tuple(args.seed or []),
        relays=tuple(args.relay or ()),
        relay_server=args.relay_server,
        relay_reservations=args.relay_reservations,
        relay_circuits=args.relay_circuits,
        embedder=args.embedder,
        open_membership=args.open,
        rpc_url=None if args.open else _rpc_url(settings.get("rpc"), args.allow_remote),
        registry=None if args.open else settings.get("registry"),
        operator_key_file=Path(key_file) if key_file else None,
        broadcast_interval_s=args.broadcast_interval,
        broadcast_threshold=args.broadcast_threshold,
        round_interval_s=args.round_interval,
        repair_interval_s=args.repair_interval,
        discovery_interval_s=args.discovery_interval,
        membership_refresh_s=args.membership_refresh,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        mdns=args.mdns,
        seen_ttl_s=args.seen_ttl,
        event_log=Path(args.event_log) if args.event_log else None,
        allow_raw_publish=args.allow_raw_publish,
        otlp_port=args.otlp_port,
        telemetry_domain=args.telemetry_domain,
        telemetry_rules=tuple(args.telemetry_rule or ()),
        telemetry_idle_s=args.telemetry_idle,
        wire_version=args.wire_version,
        baseline_drift=args.baseline_drift,
    )
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("libp2p", "multiaddr", "httpx", "urllib3", "web3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from fai_net.node.node import run_node

    run_node(config)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from fai_net.api.mcp_server import main as mcp_main

    argv = ["--timeout", str(args.timeout)]
    if args.node not in (None, "") and not (args.socket or args.data_dir):
        from fai_net.settings import resolve

        argv += ["--socket", resolve({"node": args.node}).get("socket")]
    if args.socket:
        argv += ["--socket", args.socket]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    mcp_main(argv)  # without flags: FAI_SOCKET, FAI_DATA_DIR, fai.toml
    return 0


def _add_node_commands(commands) -> None:
    """`fai node run`, the node client commands, `fai experiences`, `fai hook`, `fai mcp`."""
    node = commands.add_parser("node", help="run or talk to an FAI node")
    sub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    _add_node_run_command(sub)
    from fai_net.cli.node import add_node_client_commands

    add_node_client_commands(sub, commands)
    from fai_net.cli.telemetry import add_hook_command

    add_hook_command(commands)
    node.set_defaults(handler=group_help(node))
    _add_mcp_command(commands)


def _add_node_run_command(sub) -> None:
    run = sub.add_parser(
        "run",
        help="run a node until SIGINT/SIGTERM",
        description="Run an FAI node: a libp2p host on loopback gossiping experience "
        "batches on one topic per domain, with repair, discovery and a control socket.",
    )
    add_data_dir_flag(run, help="node state: key, library, batches (or FAI_DATA_DIR)", metavar=None)
    run.add_argument("--domain", action="append", help="domain tag (repeat; or fai.toml)")
    run.add_argument("--config", help="a fai.toml with data_dir, rpc, registry, domains, ...")
    run.add_argument("--listen", action="append", help="multiaddr (default 127.0.0.1, any port)")
    run.add_argument(
        "--announce",
        action="append",
        metavar="MULTIADDR",
        help="address peers should dial, if not the --listen one (repeat; needed with 0.0.0.0)",
    )
    run.add_argument("--seed", action="append", help="peer multiaddr with /p2p/ id (repeat)")
    _add_relay_flags(run)
    run.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    run.add_argument("--open", action="store_true", help="no registry (development only)")
    add_rpc_flag(run, help="Ethereum JSON-RPC URL of the registry's chain", metavar=None)
    add_registry_flag(run, help="DSO registry address", metavar=None)
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an RPC URL that is not on 127.0.0.1 (off: a node follows a local chain)",
    )
    run.add_argument("--operator-key-file", help="file with the operator's hex private key")
    run.add_argument("--broadcast-interval", type=float, default=60.0, metavar="S")
    run.add_argument("--broadcast-threshold", type=int, default=10, metavar="N")
    run.add_argument("--round-interval", type=float, default=2.0, metavar="S")
    run.add_argument("--repair-interval", type=float, default=10.0, metavar="S")
    run.add_argument("--discovery-interval", type=float, default=5.0, metavar="S")
    run.add_argument("--membership-refresh", type=float, default=5.0, metavar="S")
    run.add_argument("--metrics-port", type=int, default=0, help="0 = any free, -1 = off")
    run.add_argument("--seen-ttl", type=int, default=120, metavar="S", help="gossip seen cache")
    run.add_argument("--event-log", help="append batch events as JSON lines to this file")
    run.add_argument(
        "--allow-raw-publish",
        action="store_true",
        help="devnet demos only: the control socket may publish unchecked bytes",
    )
    run.add_argument(
        "--wire-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="wire format to publish (reads both; 1 while the fleet has older nodes)",
    )
    run.add_argument(
        "--baseline-drift",
        type=float,
        default=0.3,
        metavar="L2",
        help="wire v2: send a new baseline block once the library mean moved this far",
    )
    _add_trace_receiver_flags(run)
    run.add_argument("--mdns", action="store_true", help="mDNS discovery (off by default)")
    run.add_argument("--log-level", default="info")
    run.set_defaults(handler=_node_run)


def _rpc_url(url: str | None, allow_remote: bool) -> str | None:
    """The registry chain's URL, refused unless on loopback or `--allow-remote` (the rule
    every registry command keeps: a node should not follow a remote chain by accident)."""
    from fai_net.cli.registry import check_rpc_url

    return None if url is None else check_rpc_url(url, allow_remote)


def _add_relay_flags(run: argparse.ArgumentParser) -> None:
    """`fai node run`'s circuit relay v2: reaching a node no peer can dial, or serving one."""
    run.add_argument(
        "--relay",
        action="append",
        metavar="MULTIADDR",
        help="a relay (address with /p2p/ id) to keep a reservation at, for a node no peer "
        "can dial: it then announces <relay>/p2p-circuit (repeat)",
    )
    run.add_argument(
        "--relay-server",
        action="store_true",
        help="serve as a circuit relay for fleet members (opt-in; limits below)",
    )
    run.add_argument("--relay-reservations", type=int, default=16, metavar="N",
                     help="relay server: nodes reserved at once")  # fmt: skip
    run.add_argument("--relay-circuits", type=int, default=16, metavar="N",
                     help="relay server: relayed connections per reserved node")  # fmt: skip


def _add_trace_receiver_flags(run: argparse.ArgumentParser) -> None:
    """`fai node run`'s OpenTelemetry receiver: where traces come in, how they get a domain."""
    run.add_argument(
        "--otlp-port",
        type=int,
        metavar="PORT",
        help="receive OpenTelemetry traces (OTLP/HTTP POST /v1/traces) on 127.0.0.1:PORT "
        "and learn from their tool calls; 0 = any free port (see node.json); off by default",
    )
    run.add_argument(
        "--telemetry-domain",
        default="general",
        metavar="D",
        help="domain of received traces that name none (default: general)",
    )
    run.add_argument(
        "--telemetry-rule",
        action="append",
        metavar="ATTR=VALUE:DOMAIN[/KIND]",
        help="traces whose attribute ATTR (e.g. service.name) equals VALUE get DOMAIN "
        "(repeat; the first match wins; a trace's own fai.domain attribute outranks rules)",
    )
    run.add_argument(
        "--telemetry-idle",
        type=float,
        default=600.0,
        metavar="S",
        help="a session with no end marker closes after S seconds without a new tool call",
    )


def _add_mcp_command(commands) -> None:
    mcp = commands.add_parser(
        "mcp",
        help="serve FAI to agents over MCP (stdio) for a running node",
        description="An MCP server on stdin/stdout for the node behind --data-dir or "
        "--socket (else FAI_SOCKET, FAI_DATA_DIR, fai.toml): the tools recall(task), "
        "add(text, domain), feedback(id, outcome) and dso_network(action=status|broadcast|"
        "receive|peers), and the fai_context prompt and fai://context/{task} resource.",
    )
    add_socket_flag(mcp, metavar=None)
    add_data_dir_flag(mcp)
    add_node_flag(mcp, help="node N of the running devnet (0 or node0)")
    add_timeout_flag(mcp, default=30.0, type=float, metavar=None)
    mcp.set_defaults(handler=_mcp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fai", description="Federated Agent Intelligence: share experiences, not weights."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    from fai_net.cli.wire_demo import add_demo_command

    add_demo_command(commands)
    _add_node_commands(commands)
    from fai_net.cli.devnet import add_devnet_commands

    add_devnet_commands(commands)
    from fai_net.cli.registry import add_registry_commands

    add_registry_commands(commands)
    from fai_net.cli.sim import add_sim_command

    add_sim_command(commands)
    return parser


def _mark_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's parser itself as the default `_fai_parser`: after parsing,
    the innermost one chosen wins, so errors can show that command's usage line."""
    parser.set_defaults(_fai_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _mark_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command's handler, and turn input mistakes into exit code 2.

    Arguments no parser takes are reported by the command that was chosen (argparse's own
    `parse_args` reports them with the top-level usage, `fai [-h] COMMAND ...`, which says
    nothing about the command typed). Failures are told as every command tells them
    (`fai_net.cli.common.run_command`): one `fai: error:` line, then, for an input error
    (a bad value, a missing setting), that command's usage.
    """
    parser = build_parser()
    _mark_parsers(parser)
    args, extras = parser.parse_known_args(argv)
    command = getattr(args, "_fai_parser", parser)
    if extras:
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_command(args, command, top_level=command is parser)


if __name__ == "__main__":
    sys.exit(main())
