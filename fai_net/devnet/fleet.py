"""A local devnet: Anvil on loopback, the token and registry, and N registered node processes
(or the same across network namespaces: `--hosts`, below).

Everything `up` starts runs in its own session (detached from the terminal), and everything
it starts is written to `<state_dir>/devnet.json`: other commands find the chain and the
nodes there, and `down` stops exactly those processes by pid (after checking each pid still
runs what we started, since pids are reused). Keys are generated per devnet and written to
files of mode 0600 under the state directory; they hold only devnet funds.

`up(hosts=True)` (`fai devnet up --hosts`) runs the same devnet across network namespaces
(fai_net/devnet/netns.py, `devnet_lab`): Anvil in host `chain` on site 1, on that host's
10.91.x address, and each node in a host of its own, the sites in turn, listening on its
host's address at NODE_PORT. That address is what its operator advertises on-chain, and the
nodes get no seeds: they find each other from the advertisements alone, across the router,
as nodes on separate machines would. Needs root (`check_hosts` refuses in one line without).

The lab outlives `up`, as namespaces persist until deleted: devnet.json records their names
(`lab.namespaces`), and `down` deletes exactly those after stopping the processes. This
machine's own namespace gets no address or route into the lab, so every step that talks to
the chain (deploying, staking, advertising, status, fund, advance-time) runs on a thread
inside the chain host's namespace (`on_chain`); the nodes are reached by their control
sockets, which are filesystem paths and so work across namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fai_core.errors import FaiError
from fai_core.reputation import atomic_write_json
from fai_net.devnet.anvil import free_port
from fai_net.devnet.launch import (
    NODE_READY,
    Launched,
    NotReady,
    ProcessExited,
    alive,
    launch,
    launch_node,
    node_command,
    terminate_group,
)
from fai_net.devnet.netns import SUBNET
from fai_net.settings import REPO_ROOT

DEFAULT_STATE_DIR = REPO_ROOT / "devnet" / "state"
STATE_FILE = "devnet.json"
CHAIN_ID = 31337
#: Tokens each operator gets; each bonds the registry minimum and keeps the rest.
OPERATOR_TOKENS = 1_000
#: The libp2p port of every node on a --hosts devnet (each host has an address of its own).
NODE_PORT = 4001

Progress = Callable[[str], None]


class DevnetError(FaiError):
    """The devnet cannot do what was asked (already up, not up, a step failed)."""


def _quiet(_: str) -> None:
    return None


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    path = state_path(state_dir)
    if not path.exists():
        raise DevnetError(f"no devnet is up (no {path}); start one with `fai devnet up`")
    return json.loads(path.read_text())


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _alive(pid: int | None, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (pids are reused)."""
    return alive(pid, marker)


def up(
    nodes: int = 3,
    domains: list[tuple[str, ...]] | None = None,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    embedder: str = "minilm",
    allow_raw_publish: bool = False,
    unbonding_delay: int | None = None,
    progress: Progress = _quiet,
    node_args: list[str] | None = None,
    per_node_args: dict[str, list[str]] | None = None,
    hosts: bool = False,
) -> dict[str, Any]:
    """Start Anvil, deploy, fund/stake/advertise `nodes` operators, start their nodes.

    `unbonding_delay` (seconds; None = the registry default) is the registry's, so a demo
    of unbond/withdraw need not wait 7 days. `node_args` go to every node,
    `per_node_args[name]` only to node `name` (e.g. node0). `hosts`: on a namespace lab
    (module docstring); refused with a one-line DevnetError where namespaces cannot be made.
    """
    state_dir = Path(state_dir)
    if not 1 <= nodes <= 20:
        raise DevnetError("a devnet has 1..20 nodes")
    if hosts:
        check_hosts()
    _refuse_if_up(state_dir, progress)
    params = _registry_params(unbonding_delay)
    domains = domains or [("coding", "writing")]
    state_dir.mkdir(parents=True, exist_ok=True)
    run_dir = _new_run_dir(state_dir)
    state: dict[str, Any] = {
        "state_dir": str(state_dir),
        "run_dir": str(run_dir),
        "embedder": embedder,
        "allow_raw_publish": allow_raw_publish,
        "unbonding_delay": params.unbonding_delay,
        "lab": None,
        "nodes": [],
    }
    started: list[int] = []
    lab = None
    try:
        if hosts:
            lab = _build_lab(state, nodes, progress)
            atomic_write_json(state_path(state_dir), state)  # from now on `down` removes it
        reg, owner = on_chain(state, _start_chain, state, params, started, progress)
        atomic_write_json(state_path(state_dir), state)
        launched = []
        for i in range(nodes):
            extra = [
                *(["--allow-raw-publish"] if allow_raw_publish else []),
                *(node_args or []),
                *(per_node_args or {}).get(f"node{i}", []),
            ]
            node_domains = tuple(domains[i % len(domains)])
            node = on_chain(state, _enrol_node, i, node_domains, state, reg, owner, progress)
            proc = _launch_node(node, state, embedder, extra)
            started.append(proc.pid)
            node["pid"] = proc.pid
            state["nodes"].append(node)
            launched.append((node, proc))
        atomic_write_json(state_path(state_dir), state)
        progress(f"waiting for {nodes} node(s) to start (embedder: {embedder})")
        for node, proc in launched:
            info = _wait_ready(Path(node["data_dir"]), proc, Path(node["log"]))
            node["metrics_port"] = info.get("metrics_port")
            node["otlp_port"] = info.get("otlp_port")
            progress(f"{node['name']} up: {node['peer_id'][:16]}… domains {node['domains']}")
        atomic_write_json(state_path(state_dir), state)
        return state
    except BaseException:
        for pid in reversed(started):
            _terminate(pid)
        if lab is not None:
            lab.close()
        state_path(state_dir).unlink(missing_ok=True)
        raise


def check_hosts() -> None:
    """Refuse `--hosts` in one line, before anything starts, where this machine cannot make
    network namespaces (not root, no `ip`)."""
    from fai_net.devnet import netns

    why = netns.lab_unavailable()
    if why is not None:
        why = "; ".join(why.splitlines())
        raise DevnetError(f"cannot run the devnet on namespace hosts (--hosts): {why}")


def _build_lab(state: dict[str, Any], nodes: int, progress: Progress):
    """Build the namespace lab (netns.devnet_lab) and record it in `state["lab"]`: every
    namespace's name (what `down` deletes), the chain's host, and each node's host."""
    from fai_net.devnet import netns

    progress(f"building the lab: {nodes} node host(s) on two sites and a chain host ({SUBNET}.x)")
    lab = netns.devnet_lab(nodes)
    state["lab"] = {
        "namespaces": list(lab.namespaces),
        "router": lab.hosts["router"].ns,
        "chain": {"ns": lab.hosts["chain"].ns, "ip": lab.hosts["chain"].ip},
        "hosts": {
            name: {"ns": host.ns, "ip": host.ip, "site": int(host.ip.split(".")[2])}
            for name, host in lab.hosts.items()
            if name.startswith("node")
        },
    }
    return lab


def on_chain(state: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` where the devnet's chain answers: here on a loopback devnet; on a
    --hosts devnet in the chain host's namespace (`netns.in_netns` says why a thread), as
    this machine's own namespace has no route to the lab and gets none."""
    lab = state.get("lab")
    if not lab:
        return fn(*args)
    from fai_net.devnet.netns import NetnsError, in_netns

    try:
        return in_netns(lab["chain"]["ns"], fn, *args)
    except NetnsError as exc:
        raise DevnetError(f"cannot reach this devnet's chain host: {exc.strerror}") from None


def _registry_params(unbonding_delay: int | None):
    """The registry's parameters: the defaults, with `unbonding_delay` if one is given."""
    from fai_net.registry import RegistryParams

    if unbonding_delay is None:
        return RegistryParams()
    from fai_net.registry.deploy import check_unbonding_delay

    return RegistryParams(unbonding_delay=check_unbonding_delay(unbonding_delay))


def _start_chain(state: dict[str, Any], params, started: list[int], progress: Progress):
    """Start Anvil (its pid goes to `started`), make and fund the owner, deploy the token
    and the registry; records all of it in `state`. Returns (the registry, the owner)."""
    from eth_account import Account
    from web3 import Web3

    from fai_net.devnet.anvil import Anvil
    from fai_net.registry import deploy_registry

    run_dir = Path(state["run_dir"])
    chain_host = (state.get("lab") or {}).get("chain")
    if chain_host:
        anvil = Anvil(chain_id=CHAIN_ID, host=chain_host["ip"], netns=chain_host["ns"])
    else:
        anvil = Anvil(chain_id=CHAIN_ID)
    progress(f"starting anvil on {anvil.host}")
    anvil.start()
    started.append(anvil.process.pid)
    state.update(rpc_url=anvil.url, chain_id=CHAIN_ID, anvil_pid=anvil.process.pid)
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
    owner = Account.from_key(secrets.token_bytes(32))
    _write_secret(run_dir / "owner.key", owner.key.hex())
    w3.provider.make_request("anvil_setBalance", [owner.address, hex(10**22)])
    progress("deploying the token and the DSO registry")
    reg = deploy_registry(w3, owner, params=params)
    state.update(
        registry=reg.address,
        token=reg.token_address,
        owner=owner.address,
        owner_key_file=str(run_dir / "owner.key"),
    )
    return reg, owner


def _refuse_if_up(state_dir: Path, progress: Progress = _quiet) -> None:
    """One devnet per state directory: a second would orphan the first's processes (a state
    file whose processes are all gone is stale and gets replaced, and the namespaces of its
    lab, if it had one, are deleted: nothing else would ever delete them)."""
    if state_path(state_dir).exists():
        old = load_state(state_dir)
        if _alive(old.get("anvil_pid"), "anvil") or any(
            _alive(n.get("pid"), "fai_net") for n in old.get("nodes", [])
        ):
            raise DevnetError(
                f"a devnet is already up ({state_path(state_dir)}); `fai devnet down`"
            )
        removed = _remove_lab(old)
        if removed:
            progress(f"deleted the {len(removed)} namespaces of a stale devnet's lab")


def _new_run_dir(state_dir: Path) -> Path:
    """A fresh run-YYYYmmdd-HHMMSS directory (suffixed if two devnets start in one second):
    a run's keys, logs and node data are never mixed with an earlier run's."""
    base = time.strftime("run-%Y%m%d-%H%M%S")
    for n in range(100):
        run_dir = state_dir / (base if n == 0 else f"{base}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise DevnetError(f"cannot make a run directory under {state_dir}")


def old_runs(state: dict[str, Any]) -> list[Path]:
    """Run directories of earlier (stopped) devnets beside this one's: kept, never deleted
    here, since they hold those runs' logs, keys and libraries."""
    current = Path(state["run_dir"])
    return sorted(p for p in Path(state["state_dir"]).glob("run-*") if p.is_dir() and p != current)


def _enrol_node(i, node_domains, state, reg, owner, progress) -> dict[str, Any]:
    """Key, fund, stake and advertise node `i`'s operator; returns its state entry (no pid:
    `_launch_node` starts it). Every node's files live in the run directory. The address
    advertised is the one it will listen on: 127.0.0.1 and a free port, or on a --hosts
    devnet its own host's 10.91.x address and NODE_PORT, so peers find it from the chain."""
    from eth_account import Account

    from fai_net.node.identity import KEY_FILE, NodeIdentity
    from fai_net.registry.deploy import TOKEN

    name, run_dir, w3 = f"node{i}", Path(state["run_dir"]), reg.w3
    host = (state.get("lab") or {}).get("hosts", {}).get(name)
    data_dir = run_dir / name
    data_dir.mkdir()
    seed = secrets.token_bytes(32)
    _write_secret(data_dir / KEY_FILE, "")  # create 0600 first, then the bytes
    (data_dir / KEY_FILE).write_bytes(seed)
    identity = NodeIdentity.from_seed(seed)
    operator = Account.from_key(secrets.token_bytes(32))
    op_file = run_dir / f"{name}.operator.key"
    _write_secret(op_file, operator.key.hex())
    w3.provider.make_request("anvil_setBalance", [operator.address, hex(10**21)])
    reg.tx.send(owner, reg.token.functions.transfer(operator.address, OPERATOR_TOKENS * TOKEN))
    listen = f"/ip4/{host['ip']}/tcp/{NODE_PORT}" if host else f"/ip4/127.0.0.1/tcp/{free_port()}"
    addr = f"{listen}/p2p/{identity.peer_id}"
    progress(f"{name}: staking and advertising {addr}")
    reg.register(operator)
    reg.advertise(operator, identity, [addr])
    return {
        "name": name,
        "data_dir": str(data_dir),
        "domains": list(node_domains),
        "operator": operator.address,
        "operator_key_file": str(op_file),
        "peer_id": str(identity.peer_id),
        "public_key": identity.public_key.hex(),
        "addr": addr,
        "listen": listen,
        "host": host,
        "pid": None,
        "control_socket": str(data_dir / "control.sock"),
        "log": str(run_dir / f"{name}.log"),
    }


def _launch_node(node: dict[str, Any], state: dict[str, Any], embedder, extra) -> Launched:
    """Start node's process, detached; on a --hosts devnet inside its host's namespace
    (`ip netns exec`, which execs the node: the pid is the node's). It has no seed: it
    finds its peers from their advertisements on-chain, as a node on another machine would.
    The control socket is a path, so it answers from this machine's own namespace."""
    from fai_net.devnet.netns import Host

    data_dir, log = Path(node["data_dir"]), Path(node["log"])
    args = [
        *("--data-dir", str(data_dir), "--listen", node["listen"]),
        *("--rpc", state["rpc_url"], "--registry", state["registry"]),
        *("--operator-key-file", node["operator_key_file"], "--embedder", embedder),
        *[x for d in node["domains"] for x in ("--domain", d)],
        *extra,
    ]
    options: dict[str, Any] = {"log": log, "new_session": True, "stdin": subprocess.DEVNULL}
    host = node.get("host")
    if not host:
        return launch_node(args, data_dir=data_dir, **options)
    # The chain is on the lab's 10.91.x address, not loopback: said on purpose.
    args += ["--announce", node["listen"], "--allow-remote"]
    argv = Host(node["name"], host["ns"]).argv(*node_command(args))
    return launch(argv, name=node["name"], ready=data_dir / NODE_READY, **options)


def _wait_ready(data_dir: Path, proc: Launched, log: Path, timeout: float = 180.0):
    try:
        return proc.wait_ready(timeout, interval=0.2, tail_lines=15)
    except ProcessExited as exc:
        raise DevnetError(f"{data_dir.name} exited {exc.returncode}:\n" + exc.tail) from None
    except NotReady:
        raise DevnetError(
            f"{data_dir.name} did not start within {timeout:.0f} s (log: {log})"
        ) from None


def _terminate(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the process group, then SIGKILL; True if it had to be killed. Another user's
    processes (root's, for a --hosts devnet) are a clear refusal, not a traceback."""
    try:
        return terminate_group(pid, timeout)
    except PermissionError:
        raise DevnetError(
            f"not allowed to stop process group {pid}: another user started it (root, for a "
            "--hosts devnet); run `fai devnet down` as that user"
        ) from None


def down(state_dir: Path = DEFAULT_STATE_DIR, progress: Progress = _quiet) -> dict[str, Any]:
    """Stop every process the devnet started (nodes first, then the chain), then delete the
    namespaces of its lab, if it has one: exactly those it recorded, once nothing runs in
    them. If they cannot be deleted the state file stays, so `down` can be run again."""
    state = load_state(state_dir)
    stopped, killed = [], []
    for node in state.get("nodes", []):
        if _alive(node.get("pid"), "fai_net"):
            progress(f"stopping {node['name']} (pid {node['pid']})")
            (killed if _terminate(node["pid"]) else stopped).append(node["name"])
    if _alive(state.get("anvil_pid"), "anvil"):
        progress(f"stopping anvil (pid {state['anvil_pid']})")
        _terminate(state["anvil_pid"])
        stopped.append("anvil")
    removed = _remove_lab(state)
    if removed:
        progress(f"deleted the lab's {len(removed)} network namespaces")
    state_path(state_dir).unlink(missing_ok=True)
    return {
        "stopped": stopped,
        "killed": killed,
        "namespaces_deleted": removed,
        "run_dir": state.get("run_dir"),
    }


def _remove_lab(state: dict[str, Any]) -> list[str]:
    """Delete the recorded namespaces of `state`'s lab that still exist (none without one)."""
    names = (state.get("lab") or {}).get("namespaces") or []
    if not names:
        return []
    from fai_net.devnet import netns

    try:
        return netns.delete_namespaces(names)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DevnetError(
            f"cannot delete the devnet's network namespaces ({', '.join(names)}): {exc}"
        ) from None


def node_client(node: dict[str, Any], timeout: float = 60.0):
    from fai_net.api.control import ControlClient

    return ControlClient(node["control_socket"], timeout=timeout)


def status(state: dict[str, Any]) -> dict[str, Any]:
    """Each node as its own status reports it, plus its stake and how its peers rate it."""
    from fai_net.api.control import ControlError, NodeNotRunning

    rows = []
    seen_by: dict[str, list[float]] = {}
    reports = {}
    for node in state["nodes"]:
        try:
            client = node_client(node, timeout=20)
            reports[node["name"]] = (client.call("status"), client.call("peers")["peers"])
        except (NodeNotRunning, ControlError, OSError):
            reports[node["name"]] = None
    for report in reports.values():
        if report is None:
            continue
        for peer in report[1]:
            if peer.get("reputation") is not None:
                seen_by.setdefault(peer["node_id"], []).append(peer["reputation"])
    try:
        registry = on_chain(state, _registry_rows, state)
    except DevnetError as exc:  # its lab is gone, or not ours to enter: the nodes anyway
        registry = {n["operator"]: {"chain_error": str(exc)[:120]} for n in state["nodes"]}
    for node in state["nodes"]:
        report = reports[node["name"]]
        chain = registry.get(node["operator"], {})
        scores = seen_by.get(node["peer_id"], [])
        rows.append(
            {
                "name": node["name"],
                "peer_id": node["peer_id"],
                "operator": node["operator"],
                "data_dir": node["data_dir"],
                "addr": node.get("addr"),
                "running": report is not None,
                "domains": report[0]["domains"] if report else node["domains"],
                "peers": report[0]["peers"] if report else None,
                "library": report[0]["library_by_domain"] if report else None,
                "batches": report[0]["batches_stored"] if report else None,
                "rejections": report[0]["rejections"] if report else None,
                "evidence": report[0]["evidence"] if report else None,
                "reputation": round(sum(scores) / len(scores), 3) if scores else None,
                **chain,
            }
        )
    return {
        "rpc_url": state["rpc_url"],
        "registry": state["registry"],
        "run_dir": state.get("run_dir"),
        "nodes": rows,
    }


def _registry_rows(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from web3 import Web3

    from fai_net.registry import RegistryClient
    from fai_net.registry.deploy import TOKEN

    try:
        w3 = Web3(Web3.HTTPProvider(state["rpc_url"], request_kwargs={"timeout": 5}))
        reg = RegistryClient(w3, state["registry"])
        now = reg.block_timestamp()
    except Exception as exc:  # the chain is down: report the nodes anyway
        return {n["operator"]: {"chain_error": str(exc)[:120]} for n in state["nodes"]}
    out = {}
    for node in state["nodes"]:
        info = reg.operator(node["operator"])
        out[node["operator"]] = {
            "stake": info.stake / TOKEN,
            "live": reg.is_live(node["operator"]),
            "jailed": info.jailed,
            "ad_expires_in_s": max(0, info.ad_expiry - now) if info.ad_expiry else None,
        }
    return out


#: Gas money `fund` leaves an address with (wei): enough for thousands of registry calls.
FUND_ETH = 100 * 10**18
#: The most `advance_time` moves the clock in one call: two years, past any delay or TTL
#: the registry has (unbonding at most 365 days), short of a typo's centuries.
MAX_ADVANCE_S = 2 * 365 * 24 * 3600


def _chain(state: dict[str, Any]):
    """Web3 on the devnet's Anvil, after checking that the Anvil this devnet started still
    runs (a stale state file must not send funds or time to whatever took its port)."""
    from web3 import Web3

    if not _alive(state.get("anvil_pid"), "anvil"):
        raise DevnetError(
            f"this devnet's chain (anvil, pid {state.get('anvil_pid')}) is not running: "
            "`fai devnet down`, then `fai devnet up`"
        )
    return Web3(Web3.HTTPProvider(state["rpc_url"], request_kwargs={"timeout": 30}))


def _anvil_call(w3, method: str, params: list) -> Any:
    """An Anvil-only RPC method; its error (returned, not raised, by web3) becomes ours."""
    reply = w3.provider.make_request(method, params)
    if reply.get("error"):
        raise DevnetError(f"the devnet chain refused {method}: {reply['error']}")
    return reply.get("result")


def fund(state: dict[str, Any], address: str, amount: int) -> dict[str, Any]:
    """Send `amount` base units of the devnet's test token from its owner to `address`, and
    top its ETH up to FUND_ETH for gas (never lowered), so a fresh key can stake."""
    return on_chain(state, _fund, state, address, amount)


def _fund(state: dict[str, Any], address: str, amount: int) -> dict[str, Any]:
    from eth_account import Account
    from eth_utils import to_checksum_address

    from fai_net.registry import RegistryClient

    address = to_checksum_address(address)
    w3 = _chain(state)
    reg = RegistryClient(w3, state["registry"])
    owner = Account.from_key(Path(state["owner_key_file"]).read_text().strip())
    available = reg.token_balance(owner.address)
    if amount > available:
        from fai_net.registry.deploy import TOKEN

        raise DevnetError(
            f"the devnet owner holds {available / TOKEN:g} tokens, fewer than the "
            f"{amount / TOKEN:g} asked"
        )
    eth = w3.eth.get_balance(address)
    if eth < FUND_ETH:
        _anvil_call(w3, "anvil_setBalance", [address, hex(FUND_ETH)])
    receipt = reg.tx.send(owner, reg.token.functions.transfer(address, amount))
    return {
        "address": address,
        "amount": amount,
        "token_balance": reg.token_balance(address),
        "eth_balance": w3.eth.get_balance(address),
        "token": reg.token_address,
        "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
    }


def check_advance(seconds: int) -> int:
    """`seconds` if `advance_time` takes it (said before looking for a devnet)."""
    if seconds < 0:
        raise ValueError(f"SECONDS must be 0 or more, got {seconds}: the chain clock only moves on")
    if seconds > MAX_ADVANCE_S:
        raise ValueError(f"SECONDS must be at most {MAX_ADVANCE_S} (two years), got {seconds}")
    return seconds


def advance_time(state: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Move the devnet chain's clock `seconds` ahead and mine a block.

    Anvil stamps a block when it mines it, and mines only on a transaction: while idle its
    latest timestamp stands still, so a delay that has passed by the wall clock has not
    passed for the registry. `seconds = 0` just mines, bringing the clock to now.
    `expired` names the nodes whose advertisement the move outdated (they are no longer
    live: nodes do not renew their own).
    """
    check_advance(seconds)
    return on_chain(state, _advance_time, state, seconds)


def _advance_time(state: dict[str, Any], seconds: int) -> dict[str, Any]:
    from fai_net.registry import RegistryClient

    w3 = _chain(state)
    reg = RegistryClient(w3, state["registry"])
    before = w3.eth.get_block("latest")
    expiries = {n["name"]: reg.operator(n["operator"]).ad_expiry for n in state["nodes"]}
    if seconds:
        _anvil_call(w3, "evm_increaseTime", [seconds])
    _anvil_call(w3, "evm_mine", [])
    after = w3.eth.get_block("latest")
    return {
        "advanced_s": seconds,
        "before": before["timestamp"],
        "timestamp": after["timestamp"],
        "block": after["number"],
        "expired": [
            name
            for name, expiry in expiries.items()
            if before["timestamp"] < expiry <= after["timestamp"]
        ],
    }
