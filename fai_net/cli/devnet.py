"""`fai devnet up|status|down|fund|advance-time|equivocate|demo`: a local chain and fleet.

The devnet itself (Anvil, contracts, node processes, the main job) lives in
`fai_net.devnet`; this module is only its command line, imported lazily like the rest.
`--hosts` (up, demo) puts the chain and every node in network namespaces of their own
(fai_net/devnet/fleet.py says how); the other commands then work on it unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys

from fai_net.cli.common import (
    EMBEDDERS,
    add_json_flag,
    add_key_file_flag,
    add_node_flag,
    print_json,
)


def _progress(args: argparse.Namespace):
    """Progress lines go to stderr, so --json output on stdout stays clean."""
    if getattr(args, "quiet", False):
        return lambda _msg: None
    return lambda msg: print(f"[fai] {msg}", file=sys.stderr, flush=True)


def _state_dir(args: argparse.Namespace):
    from pathlib import Path

    from fai_net.devnet import fleet as devnet

    if args.state_dir:
        return Path(args.state_dir)
    # The variable every other command reads names the state *file*; its directory is the
    # devnet's, so one export points `devnet up` and `fai stake --node 1` at the same devnet.
    state_file = os.environ.get("FAI_DEVNET_STATE")
    return Path(state_file).parent if state_file else devnet.DEFAULT_STATE_DIR


def _unbonding_delay(text: str) -> int:
    """An argparse type: seconds the registry accepts as its unbonding delay."""
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    from fai_net.registry.deploy import check_unbonding_delay

    try:
        return check_unbonding_delay(seconds)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_state(args: argparse.Namespace) -> dict:
    """The devnet's state, its RPC URL checked as every registry command checks one
    (`check_rpc_url`): loopback, or, on a --hosts devnet, the lab chain host's 10.91.x
    address the devnet recorded, the one remote URL allowed, and that explicitly. A state
    file naming any other chain is refused before anything is sent to it."""
    import ipaddress
    from urllib.parse import urlsplit

    from fai_net.cli.registry import check_rpc_url
    from fai_net.devnet import fleet as devnet
    from fai_net.devnet.netns import SUBNET

    state = devnet.load_state(_state_dir(args))
    chain = (state.get("lab") or {}).get("chain") or {}
    lab = ipaddress.ip_network(f"{SUBNET}.0.0/16")
    host = urlsplit(state.get("rpc_url", "")).hostname
    in_lab = bool(chain.get("ip")) and host == chain["ip"] and ipaddress.ip_address(host) in lab
    try:
        check_rpc_url(state.get("rpc_url", ""), allow_remote=in_lab)
    except ValueError:  # its hint, --allow-remote, is not for a devnet's own state
        raise devnet.DevnetError(
            f"the devnet state names the chain {state.get('rpc_url')!r}: neither loopback nor "
            "its lab's chain host, so no devnet command talks to it"
        ) from None
    return state


def _node_lines(node: dict) -> list[str]:
    """How every devnet command shows a node: its peer id with its operator beside it, and
    its data directory (which `--node N` stands for in the node and registry commands)."""
    return [
        f"    peer {node['peer_id']}  operator {node['operator']}",
        f"    data {node['data_dir']}",
    ]


def _devnet_up(args: argparse.Namespace) -> int:
    from fai_net.cli.node import plural
    from fai_net.cli.registry import format_duration
    from fai_net.devnet import fleet as devnet

    domains = [tuple(d.split("+")) for d in args.domains.split(",")] if args.domains else None
    state = devnet.up(
        args.nodes,
        domains,
        state_dir=_state_dir(args),
        embedder=args.embedder,
        allow_raw_publish=args.allow_raw_publish,
        unbonding_delay=args.unbonding_delay,
        progress=_progress(args),
        hosts=args.hosts,
    )
    if args.json:
        print_json(state)
        return 0
    print(
        f"devnet up: chain {state['rpc_url']}, registry {state['registry']} (unbonding delay "
        f"{format_duration(state['unbonding_delay'])})"
    )
    if state.get("lab"):
        print(
            f"lab: {len(state['lab']['namespaces'])} network namespaces, sites 1 and 2; chain "
            f"host {state['lab']['chain']['ns']}; registry commands there: "
            f"`ip netns exec {state['lab']['chain']['ns']} .venv/bin/fai ... --allow-remote`"
        )
    for node in state["nodes"]:
        print(f"  {node['name']}: {node['addr']}  domains={','.join(node['domains'])}")
        print("\n".join(_node_lines(node)))
    print(f"state: {devnet.state_path(_state_dir(args))}; stop with `fai devnet down`")
    print("name a node in other commands with --node N, e.g. `fai node status --node 0`")
    old = devnet.old_runs(state)
    if old:
        print(
            f"{plural(len(old), 'run directory', 'run directories')} of earlier devnets "
            f"stay in {state['state_dir']} (oldest {old[0].name}): delete them when done"
        )
    return 0


def _devnet_status(args: argparse.Namespace) -> int:
    from fai_net.devnet import fleet as devnet

    report = devnet.status(_load_state(args))
    if args.json:
        print_json(report)
        return 0
    print(f"chain {report['rpc_url']}  registry {report['registry']}")
    header = f"{'node':7} {'run':4} {'peers':5} {'stake':>6} {'live':5} {'jailed':6} "
    print(header + f"{'rep':>5} {'ad expires':>10}  library")
    for row in report["nodes"]:
        library = ", ".join(f"{d}:{n}" for d, n in sorted((row["library"] or {}).items()))
        expires = row.get("ad_expires_in_s")
        expires_text = "-" if expires is None else f"{expires // 3600}h{expires % 3600 // 60:02d}m"
        rep = "-" if row["reputation"] is None else f"{row['reputation']:.2f}"
        print(
            f"{row['name']:7} {'yes' if row['running'] else 'NO':4} {row['peers'] or 0!s:5} "
            f"{row.get('stake', 0):>6g} {row.get('live')!s:5} {row.get('jailed')!s:6} "
            f"{rep:>5} {expires_text:>10}  {library or '-'}"
        )
        print("\n".join(_node_lines(row)))
        if row.get("addr") and "/127.0.0.1/" not in row["addr"]:
            print(f"    addr {row['addr']}")
    return 0


def _devnet_down(args: argparse.Namespace) -> int:
    from fai_net.devnet import fleet as devnet

    result = devnet.down(_state_dir(args), _progress(args))
    if args.json:
        print_json(result)
    else:
        print(
            f"devnet down: stopped {', '.join(result['stopped']) or 'nothing'}"
            + (f"; killed {', '.join(result['killed'])}" if result["killed"] else "")
        )
        if result.get("namespaces_deleted"):
            print(f"deleted network namespaces {', '.join(result['namespaces_deleted'])}")
        if result.get("run_dir"):
            print(
                f"its files (keys, logs, node libraries) stay in {result['run_dir']}: "
                "nothing was deleted"
            )
    return 0


def _devnet_fund(args: argparse.Namespace) -> int:
    """Tokens and gas for an address or a key file's address, from the devnet's owner."""
    from fai_net.cli.registry import (
        format_tokens,
        parse_address,
        read_private_key,
        to_base_units,
        token_count,
    )
    from fai_net.devnet import fleet as devnet

    if (args.address is None) == (args.key_file is None):
        raise ValueError("give the ADDRESS to fund or --key-file FILE (one of them)")
    if args.address is not None:
        address = parse_address(args.address, "ADDRESS")
    else:
        from eth_account import Account

        private_key = read_private_key(args.key_file)
        try:
            address = Account.from_key(private_key).address
        except Exception:  # never echo the key
            raise ValueError(f"{args.key_file} does not hold a valid private key") from None
    state = _load_state(args)
    result = devnet.fund(state, address, to_base_units(args.amount, 10**18))
    if args.json:
        print_json(result)
        return 0
    print(
        f"sent {format_tokens(result['amount'])} test tokens to {address}: it now holds "
        f"{token_count(result['token_balance'])} and "
        f"{format_tokens(result['eth_balance'])} ETH for gas"
    )
    print(f"tx {result['tx']}")
    return 0


def _devnet_advance_time(args: argparse.Namespace) -> int:
    """Move the devnet's chain clock (Anvil's stands still while no block is mined)."""
    import time

    from fai_net.cli.registry import format_duration, format_utc
    from fai_net.devnet import fleet as devnet

    devnet.check_advance(args.seconds)
    result = devnet.advance_time(_load_state(args), args.seconds)
    if args.json:
        print_json(result)
        return 0
    ahead = result["timestamp"] - int(time.time())
    if abs(ahead) <= 2:
        relation = "in step with this machine's clock"
    else:
        relation = f"{format_duration(ahead)} {'ahead of' if ahead > 0 else 'behind'} this "
        relation += "machine's clock"
    print(
        f"chain clock {format_utc(result['timestamp'])} at block {result['block']} (moved "
        f"{format_duration(result['timestamp'] - result['before'])}; {relation})"
    )
    if result["expired"]:
        print(
            f"the advertisements of {', '.join(result['expired'])} expired: not live until "
            "renewed (`fai advertise --node N`)"
        )
    return 0


def _devnet_equivocate(args: argparse.Namespace) -> int:
    from fai_net.devnet import fleet as devnet
    from fai_net.devnet.demo import equivocate, evidence_files, wait_for
    from fai_net.settings import devnet_node

    state = _load_state(args)
    result = equivocate(state, args.node)
    rogue = devnet_node(state, result["node"])
    found = []
    if args.wait > 0:
        try:
            found = wait_for(
                lambda: evidence_files(state, rogue, result["seq"]), args.wait, "evidence"
            )
        except devnet.DevnetError:
            found = []
    if found:
        witness, path = found[0]
        if args.save:
            path = _save_evidence(path, args.save)
        result.update(
            witness=witness["name"],
            evidence=str(path),
            submit=_slash_command(path, witness, state),
        )
    else:
        result.update(witness=None, evidence=None, submit=None)
    if args.json:
        print_json(result)
        return 0
    print(
        f"{result['node']} published a second batch at seq {result['seq']}: "
        f"{result['second']} (its first: {result['first']})"
    )
    if found:
        saved = "saved a copy of the evidence" if args.save else "wrote the evidence"
        print(f"{result['witness']} caught it; {saved} to {result['evidence']}")
        print(f"submit it on-chain: {result['submit']}")
    else:
        print(
            f"no node wrote evidence within {args.wait:g} s: a node that stored the first "
            f"batch writes it to <its data dir>/evidence/ when the second arrives"
        )
    return 0


def _save_evidence(source, target: str):
    """Copy an evidence file to where the user asked (0600: it is the user's to keep), so a
    script can name it without knowing the witness's data directory."""
    import shutil
    from pathlib import Path

    target_path = Path(target).expanduser()
    fd = os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
    return target_path


def _slash_command(path, witness: dict, state: dict) -> str:
    """The command that submits an evidence file with the witness's operator key; on a
    --hosts devnet run in the chain host's namespace (the only way to its address), with
    the --allow-remote its 10.91.x RPC URL needs."""
    import shlex

    node = witness["name"].removeprefix("node")
    command = f"fai slash equivocation --evidence {shlex.quote(str(path))} --node {node}"
    chain = (state.get("lab") or {}).get("chain")
    if chain:
        return f"ip netns exec {chain['ns']} {command} --allow-remote"
    return command


def _devnet_demo(args: argparse.Namespace) -> int:
    from fai_net.devnet.demo import format_report, run_demo

    report = run_demo(
        args.nodes,
        embedder=args.embedder,
        state_dir=_state_dir(args),
        progress=_progress(args),
        hosts=args.hosts,
    )
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


def _add_devnet_operator_commands(sub) -> None:
    """`fai devnet fund|advance-time|equivocate`: what a devnet operator does by hand."""
    fund = sub.add_parser(
        "fund",
        help="send test tokens and gas to an address or a key file's address",
        description="Send AMOUNT test tokens from the devnet's owner to ADDRESS (or to the "
        "address of --key-file FILE), and enough ETH for gas, so the key can `fai stake`. "
        "Prints the new token balance. Devnet only.",
        usage="fai devnet fund [-h] (ADDRESS | --key-file FILE) AMOUNT [--state-dir DIR] "
        "[--json] [--quiet]",
    )
    fund.add_argument("address", nargs="?", metavar="ADDRESS", help="0x address to fund")
    fund.add_argument("amount", type=_token_amount, metavar="AMOUNT", help="whole tokens")
    add_key_file_flag(fund, help="fund this private key's address")
    _add_devnet_flags(fund)
    fund.set_defaults(handler=_devnet_fund)
    adv = sub.add_parser(
        "advance-time",
        help="move the devnet chain's clock ahead and mine a block",
        description="Move the devnet chain's clock SECONDS ahead (evm_increaseTime) and mine "
        "a block, then print the chain's time. Anvil's clock stands still while no block is "
        "mined: `advance-time 0` just mines one, bringing the chain's time to now. Devnet "
        "only.",
    )
    adv.add_argument("seconds", type=int, metavar="SECONDS", help="0 .. 2 years")
    _add_devnet_flags(adv)
    adv.set_defaults(handler=_devnet_advance_time)
    eq = sub.add_parser(
        "equivocate",
        help="demo: make a node publish a conflicting batch",
        description="Make a node publish a second, different batch under a seq it already "
        "used (the devnet must be up with --allow-raw-publish), wait for a peer to write "
        "the evidence file, and print its path and the command that submits it.",
    )
    add_node_flag(eq, help="the node: 4 or node4", required=True)
    eq.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the evidence file (default 30; 0 = do not wait)",
    )
    eq.add_argument(
        "--save", metavar="FILE", help="also copy the evidence file to FILE (mode 0600)"
    )
    _add_devnet_flags(eq)
    eq.set_defaults(handler=_devnet_equivocate)


def _token_amount(text: str):
    from fai_net.cli.registry import token_amount

    return token_amount(text)


def _add_devnet_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every `fai devnet` command: which devnet, and how to print."""
    parser.add_argument(
        "--state-dir",
        help="where the devnet keeps its state (default: the directory of "
        "$FAI_DEVNET_STATE, else devnet/state)",
    )
    add_json_flag(parser, help="print JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _add_hosts_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="run the chain and each node in a network namespace of its own, on two routed "
        "sites (10.91.0.0/16; needs root and iproute2)",
    )


def add_devnet_commands(commands) -> None:
    devnet_cmd = commands.add_parser(
        "devnet", help="a local chain and fleet on 127.0.0.1 (or on namespace hosts)"
    )
    sub = devnet_cmd.add_subparsers(dest="devnet_command", metavar="SUBCOMMAND")

    up_cmd = sub.add_parser(
        "up",
        help="start Anvil, deploy the registry, stake and start N nodes",
        description="Start Anvil on 127.0.0.1, deploy the token and the DSO registry, fund "
        "and stake one operator per node, advertise each node's address on-chain, start the "
        "node processes (registry membership), and write the devnet state file. With "
        "--hosts, the chain and each node run in a network namespace of their own (two "
        "sites joined by a router, 10.91.0.0/16) and advertise those addresses.",
    )
    up_cmd.add_argument("--nodes", type=int, default=3)
    up_cmd.add_argument(
        "--domains",
        default="coding+writing",
        help="comma-separated domain sets given to nodes in turn, '+' within a set "
        "(default coding+writing: every node on both)",
    )
    up_cmd.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    up_cmd.add_argument(
        "--allow-raw-publish",
        action="store_true",
        help="let nodes publish unchecked bytes (needed by `fai devnet equivocate`)",
    )
    up_cmd.add_argument(
        "--unbonding-delay",
        type=_unbonding_delay,
        metavar="SECONDS",
        help="the registry's unbonding delay, 1 s .. 365 days (default 7 days)",
    )
    _add_hosts_flag(up_cmd)
    _add_devnet_flags(up_cmd)
    up_cmd.set_defaults(handler=_devnet_up)
    st = sub.add_parser(
        "status",
        help="nodes, peers, library per domain, stake, reputation",
        description="Each node's process, peers, stake, liveness, reputation among its "
        "peers and library, with its peer id, operator address and data directory.",
    )
    _add_devnet_flags(st)
    st.set_defaults(handler=_devnet_status)
    dn = sub.add_parser(
        "down",
        help="stop everything the devnet started",
        description="Stop the devnet's nodes and chain, and delete the network namespaces "
        "of a --hosts devnet. Its run directory (keys, logs, libraries) is kept.",
    )
    _add_devnet_flags(dn)
    dn.set_defaults(handler=_devnet_down)
    _add_devnet_operator_commands(sub)
    demo_cmd = sub.add_parser(
        "demo",
        help="the main job: learn from telemetry, catch and slash an equivocator",
        description="Start a devnet of 5 nodes over 3 domains, feed each a slice of the "
        "sample telemetry, let them share experiences, make one node equivocate, slash it "
        "on-chain, print what every node learned, and stop everything.",
    )
    demo_cmd.add_argument("--nodes", type=int, default=5)
    demo_cmd.add_argument("--embedder", choices=EMBEDDERS, default="minilm")
    _add_hosts_flag(demo_cmd)
    _add_devnet_flags(demo_cmd)
    demo_cmd.set_defaults(handler=_devnet_demo)
