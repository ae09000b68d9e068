"""The registry commands of the `fai` command line: deploy, stake, advertise, unbond,
withdraw, slash, and the list of live peers.

`add_registry_commands(commands)` adds them to the top-level parser. Nothing heavy is
imported here: web3, the registry client, libp2p and the wire codec are imported inside the
handlers, after the settings, the key file and the arguments have been checked, so
`fai --help` stays instant and a mistake in a flag is reported without waiting for web3.

Exit codes: 0 done; 1 the chain or the registry refused (a typed contract revert, no chain
at the RPC URL, evidence the registry would reject); 2 bad input (missing setting, unreadable
key file, malformed argument). Both are told the way `fai_net.cli.common` tells every
command's failures.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fai_net.cli.common import (
    CliError,
    Handler,
    add_chain_flags,
    add_data_dir_flag,
    emit,
    group_help,
    guarded,
)

DEVNET_HINT = "is the devnet up? (fai devnet up)"
KEY_FILE_HINT = (
    "a file holding your Ethereum private key as hex; `fai devnet up` keeps its operators' "
    "keys under devnet/state/"
)
MAX_TTL = 24 * 3600
MIN_TTL = 60  # the expiry must still be ahead when the transaction is mined
JSON_NOTE = "--json prints one JSON document; token amounts in it are integers in base units "
JSON_NOTE += "(1 token = 10^18)."
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_32 = re.compile(r"(0x)?[0-9a-fA-F]{64}")


# -- argument types and formatting ---------------------------------------------------------


def token_amount(text: str) -> Decimal:
    """An argparse type: a positive number of whole tokens ("100", "12.5")."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a token amount (e.g. 100 or 12.5)"
        ) from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a token amount must be a positive number")
    return value


def to_base_units(tokens: Decimal, unit: int) -> int:
    """Whole tokens -> base units (`unit` = 10**decimals); refuses finer than one base unit."""
    with localcontext() as ctx:
        ctx.prec = 200
        scaled = tokens * unit
    if scaled != scaled.to_integral_value():
        decimals = len(str(unit)) - 1
        raise ValueError(f"{tokens} has more decimal places than the token's {decimals}")
    value = int(scaled)
    if value >= 2**256:
        raise ValueError(f"{tokens} tokens is more than the chain can count")
    return value


def token_count(amount: int, unit: int = 10**18) -> str:
    """ "1 token", "0.5 tokens", "15 tokens": amounts printed to people can be one."""
    return f"{format_tokens(amount, unit)} {'token' if amount == unit else 'tokens'}"


def format_tokens(amount: int, unit: int = 10**18) -> str:
    """Base units -> "12.5" (exact, no exponent, no trailing zeros)."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), unit)
    if not frac:
        return f"{sign}{whole:,}"
    digits = len(str(unit)) - 1
    return f"{sign}{whole:,}.{str(frac).rjust(digits, '0').rstrip('0')}"


def format_utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: int) -> str:
    seconds = abs(int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours or minutes:
        return f"{hours}h {minutes}m"
    return f"{seconds}s"


def format_relative(timestamp: int, now: int) -> str:
    """Like "in 23h 59m" or "2h 5m ago", measured against chain time `now`."""
    delta = timestamp - now
    return f"in {format_duration(delta)}" if delta >= 0 else f"{format_duration(delta)} ago"


def check_rpc_url(url: str, allow_remote: bool = False) -> str:
    """The URL if it is an http(s) URL on a loopback host (or `allow_remote`); else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"RPC URL {url!r} must look like http://127.0.0.1:8545")
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback and not allow_remote:
        raise ValueError(
            f"refusing RPC URL {url}: it is not on this machine (127.0.0.1). FAI runs its "
            "devnet on loopback; pass --allow-remote to use a remote chain on purpose"
        )
    return url


def parse_address(text: str, what: str) -> str:
    """A 0x-prefixed 20-byte address (checksum verified when mixed case), checksummed."""
    text = text.strip()
    if not _HEX_ADDRESS.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not an address (0x followed by 40 hex digits)")
    from eth_utils import is_checksum_address, to_checksum_address

    body = text[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(text):
        raise ValueError(f"{what} {text} has a bad checksum (a typo?)")
    return to_checksum_address(text)


def parse_bytes32(text: str, what: str) -> bytes:
    text = text.strip()
    if not _HEX_32.fullmatch(text):
        raise ValueError(f"{what} must be 32 bytes as 64 hex digits (0x optional), got {text!r}")
    return bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))


def _parse_hex(text: str, length: int, what: str) -> bytes:
    raw = text[2:] if text.lower().startswith("0x") else text
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise ValueError(f"{what} must be hex") from None
    if len(data) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(data)}")
    return data


def read_private_key(path_text: str) -> str:
    """The hex private key held by a key file (checked, never echoed)."""
    path = Path(path_text).expanduser()
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise CliError(f"key file {path} does not exist", 2) from None
    except IsADirectoryError:
        raise CliError(f"key file {path} is a directory", 2) from None
    except OSError as exc:
        raise CliError(f"cannot read key file {path}: {exc.strerror}", 2) from None
    except UnicodeDecodeError:
        text = ""
    body = text[2:] if text[:2].lower() == "0x" else text
    if not re.fullmatch(r"[0-9a-fA-F]{64}", body):
        raise CliError(
            f"key file {path} must hold one Ethereum private key: 64 hex digits, 0x optional",
            2,
        )
    try:
        if path.stat().st_mode & 0o077:
            print(f"fai: warning: key file {path} is readable by others", file=sys.stderr)
    except OSError:
        pass
    return "0x" + body.lower()


# -- shared plumbing ----------------------------------------------------------------------


def _settings(args: argparse.Namespace, **extra: Any):
    from fai_net.settings import resolve

    flags = {
        "rpc": args.rpc,
        "registry": args.registry,
        "key_file": args.key_file,
        "node": getattr(args, "node", None),
        **extra,
    }
    return resolve(flags, config=args.config, devnet_state=args.devnet_state)


class _Session:
    """Settings checked, then web3 and the registry client created on demand."""

    def __init__(self, args: argparse.Namespace, **extra: Any):
        self.args = args
        self.settings = _settings(args, **extra)
        self.rpc = check_rpc_url(str(self.settings.require("rpc")), args.allow_remote)
        args.fai_rpc_url = self.rpc  # for the error handler's "no chain at URL"
        self._w3 = None

    def registry_address(self) -> str:
        return parse_address(str(self.settings.require("registry")), "registry")

    @property
    def devnet(self) -> dict[str, Any] | None:
        """The devnet's state when this command talks to its chain (same RPC URL), else None:
        its nodes and hints only make sense for that chain."""
        state = self.settings.devnet
        if state and state.get("rpc_url") == self.rpc:
            return state
        return None

    def key(self, hint: str = "") -> str:
        """The operator's private key. With a devnet up and no key given, the way out is
        `--node N` (its operators' keys are on disk), not "start a devnet"."""
        nodes = devnet_node_flag(self.devnet)
        if not self.settings.get("key_file") and nodes:
            extra = f"; {hint}" if hint else ""
            raise CliError(
                f"no key file: give --key-file FILE (or set FAI_KEY_FILE), or {nodes} to act "
                f"as a devnet node's operator{extra}",
                2,
            )
        hint = hint or KEY_FILE_HINT
        return read_private_key(str(self.settings.require("key_file", hint)))

    @property
    def w3(self):
        if self._w3 is None:
            from web3 import HTTPProvider, Web3

            provider = HTTPProvider(
                self.rpc, request_kwargs={"timeout": 30}, exception_retry_configuration=None
            )
            self._w3 = Web3(provider)
            self.chain_id = self._w3.eth.chain_id  # fails fast if nothing listens there
        return self._w3

    def client(self, address: str):
        from fai_net.registry.client import RegistryClient

        w3 = self.w3
        if not w3.eth.get_code(address):
            raise CliError(
                f"no registry at {address} on chain {self.chain_id} ({self.rpc}): wrong "
                "--registry, or the chain was restarted? (fai registry deploy makes one)"
            )
        return RegistryClient(w3, address)


def devnet_node_flag(state: dict[str, Any] | None) -> str:
    """How to name the devnet's nodes with --node: "--node 0..2", "--node node0|relay", or
    "" when there is no devnet (or it has no nodes)."""
    names = [str(n.get("name", "")) for n in (state or {}).get("nodes") or []]
    if not names:
        return ""
    numbers = [n[4:] for n in names if re.fullmatch(r"node\d+", n)]
    if len(numbers) == len(names):
        values = sorted(int(n) for n in numbers)
        if values == list(range(values[0], values[0] + len(values))):
            span = str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"
            return f"--node {span}"
    return f"--node {'|'.join(names)}"


def _account(private_key: str):
    from eth_account import Account

    try:
        return Account.from_key(private_key)
    except Exception:  # never show the key; the message of eth_keys might
        raise CliError("the key file does not hold a valid secp256k1 private key", 2) from None


def _tx(receipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def chain_command(handler: Handler) -> Handler:
    """`common.guarded` for a command that talks to the chain: besides the typed refusals
    (CliError), a revert or a chain that is not there is told in one line, exit code 1.

    Input mistakes (ValueError, FaiError such as a missing setting) go on to
    `common.run_command`, which prints them and exits 2.
    """

    def explain_chain(exc: Exception, args: argparse.Namespace) -> str | None:
        return _chain_failure(exc, getattr(args, "fai_rpc_url", None))

    return guarded(handler, also=explain_chain)


# Revert arguments shown as token amounts or as UTC times instead of raw integers.
_AMOUNT_ARGS = frozenset(
    {"stake", "minimum", "requested", "available", "balance", "needed", "allowance"}
)
_TIME_ARGS = frozenset({"readyAt", "nowTs", "expiry", "maxExpiry", "deadline"})


def revert_message(exc) -> str:
    """A typed contract revert as one line: its message with amounts in tokens and times in
    UTC, then the Solidity error's name, e.g. "stake 5 tokens is below the minimum bond 10
    tokens (BelowMinimumBond)"."""
    message = str(exc)
    if exc.template:
        shown = {}
        for name, value in exc.args_by_name.items():
            if isinstance(value, bytes | bytearray):
                value = "0x" + bytes(value).hex()
            elif isinstance(value, int) and name in _AMOUNT_ARGS:
                value = f"{token_count(value)}"
            elif isinstance(value, int) and name in _TIME_ARGS:
                value = format_utc(value)
            shown[name] = value
        with contextlib.suppress(KeyError, IndexError, ValueError):
            message = exc.template.format(**shown)
    return f"{message} ({exc.name})"


def _chain_failure(exc: Exception, rpc: str | None) -> str | None:
    """A one-line explanation of a failure that comes from the chain, or None."""
    from fai_net.registry.errors import ContractRevert, RegistryError

    if isinstance(exc, ContractRevert):
        return revert_message(exc)
    if isinstance(exc, RegistryError):
        return str(exc)
    import requests
    from web3.exceptions import TimeExhausted, Web3Exception, Web3RPCError

    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"no chain at {rpc}: {DEVNET_HINT}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"the chain at {rpc} did not answer in time"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"the chain at {rpc} failed: {exc}"
    if isinstance(exc, TimeExhausted):
        return f"the transaction was not mined in time: {exc}"
    if isinstance(exc, Web3RPCError):
        detail = exc.message or str(exc)
        return f"the chain refused the request: {detail}"
    if isinstance(exc, Web3Exception):
        return f"chain error: {exc}"
    return None


# -- handlers -----------------------------------------------------------------------------


@chain_command
def _deploy(args: argparse.Namespace) -> int:
    session = _Session(args)
    if args.owner_key_file:
        private_key = read_private_key(args.owner_key_file)
    else:
        private_key = session.key("or give --owner-key-file")
    if args.unbonding_delay is not None and not 0 < args.unbonding_delay <= 365 * 86400:
        raise ValueError("--unbonding-delay must be 1 s .. 365 days")
    from fai_net.registry.deploy import (
        DEFAULT_MIN_BOND,
        DEFAULT_UNBONDING_DELAY,
        TOKEN,
        RegistryParams,
        deploy_registry,
    )

    params = RegistryParams(
        min_bond=DEFAULT_MIN_BOND if args.min_bond is None else to_base_units(args.min_bond, TOKEN),
        unbonding_delay=args.unbonding_delay or DEFAULT_UNBONDING_DELAY,
    )
    deployer = _account(private_key)
    client = deploy_registry(session.w3, deployer, params=params)
    data = {
        "registry": client.address,
        "token": client.token_address,
        "chain_id": client.chain_id,
        "owner": deployer.address,
        "block": client.from_block,
        "min_bond": params.min_bond,
        "unbonding_delay": params.unbonding_delay,
    }
    supply = client.token_balance(deployer.address)
    lines = [
        f"registry  {client.address}",
        f"token     {client.token_address} ({format_tokens(supply)} FAI test tokens held "
        "by the owner)",
        f"owner     {deployer.address}",
        f"chain     {client.chain_id} at {session.rpc}, deployed in block {client.from_block}",
        f"rules     minimum bond {token_count(params.min_bond)}, unbonding delay "
        f"{format_duration(params.unbonding_delay)}",
        f"next: export FAI_REGISTRY={client.address}",
    ]
    emit(args, data, lines)
    return 0


def _amount_arg(args: argparse.Namespace, required: bool = False) -> Decimal | None:
    """The amount as `TOKENS` or `--amount TOKENS` (`fai stake 5` reads as it sounds)."""
    given = [a for a in (args.tokens, args.amount) if a is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise ValueError(f"two amounts given ({given[0]} and --amount {given[1]}): give one")
    if required and not given:
        raise ValueError("give the amount in tokens, e.g. 5 or --amount 5")
    return given[0] if given else None


@chain_command
def _stake(args: argparse.Namespace) -> int:
    tokens = _amount_arg(args)
    session = _Session(args)
    address = session.registry_address()
    private_key = session.key()
    from fai_net.registry.deploy import TOKEN

    amount = None if tokens is None else to_base_units(tokens, TOKEN)
    client = session.client(address)
    account = _account(private_key)
    info = client.operator(account.address)
    first = not info.registered
    if first:
        amount = client.min_bond if amount is None else amount
        if amount < client.min_bond:
            raise CliError(
                f"the first stake must be at least the minimum bond, "
                f"{token_count(client.min_bond)} (asked {format_tokens(amount)})",
                2,
            )
    elif amount is None:
        raise CliError(
            f"{account.address} is already registered with {token_count(info.stake)} "
            "bonded: give an amount (e.g. `fai stake 5`) to add stake",
            2,
        )
    balance = client.token_balance(account.address)
    if balance < amount:
        raise CliError(
            f"{account.address} holds {token_count(balance)} of {client.token_address}"
            f", {format_tokens(amount)} needed"
        )
    receipt = client.register(account, amount) if first else client.add_stake(account, amount)
    after = client.operator(account.address)
    data = {
        "operator": account.address,
        "action": "register" if first else "add",
        "amount": amount,
        "stake": after.stake,
        "min_bond": client.min_bond,
        "live": client.is_live(account.address),
        "tx": _tx(receipt),
    }
    verb = "registered" if first else "added stake for"
    lines = [
        f"{verb} {account.address}: +{token_count(amount)}, "
        f"{format_tokens(after.stake)} bonded (minimum {format_tokens(client.min_bond)})",
        f"tx {data['tx']}",
    ]
    if not data["live"]:
        lines.append("not live yet: post an advertisement with `fai advertise`")
    emit(args, data, lines)
    return 0


def _node_key_and_addrs(data_dir: str, multiaddrs: list[str]) -> tuple[Any, list[str]]:
    """The node's identity (never created here) and, if none given, its listen addresses."""
    directory = Path(data_dir).expanduser()
    key_path = directory / "node.key"
    if not key_path.is_file():
        raise CliError(
            f"no node key at {key_path}: run the node once (fai node run --data-dir "
            f"{directory} ...) to create it, or give --peer-key",
            2,
        )
    if not multiaddrs:
        info_path = directory / "node.json"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise CliError(
                f"no --multiaddr given and {info_path} does not exist: start the node, or "
                "give --multiaddr",
                2,
            ) from None
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {info_path}: {exc}", 2) from None
        addrs = info.get("addrs") if isinstance(info, dict) else None
        if not addrs or not all(isinstance(a, str) for a in addrs):
            raise CliError(f"{info_path} lists no addrs: give --multiaddr", 2)
        multiaddrs = list(addrs)
    from fai_net.node.identity import load_or_create

    identity = load_or_create(directory)  # the file exists: this only loads and checks it
    return identity, multiaddrs


def _shown(text: str, limit: int = 120) -> str:
    """An address from the user or the chain, quoted with control characters escaped (an
    on-chain string must not be able to drive the terminal) and cut to `limit`."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _checked_multiaddrs(
    multiaddrs: list[str], peer_key: bytes, source: Path | None
) -> tuple[list[str], list[str]]:
    """The addresses to post, and those that got the node's /p2p/ appended.

    Checked before anything is signed or sent: an address peers cannot dial, or that names
    another node, would sit on-chain as the node's only way in. `source` None: given with
    --multiaddr, where a bare address gets this node's /p2p/<peer id> appended; else the
    node.json they came from, posted as the node reported them (nodes append the advertised
    key's peer id to a bare address before dialling).
    """
    from fai_net.registry.possession import multiaddr_problem, peer_id_of

    peer_id = peer_id_of(peer_key)
    posted, appended = [], []
    for text in multiaddrs:
        problem = multiaddr_problem(text, peer_key, need_peer_id=False)
        if problem:
            where = "--multiaddr" if source is None else f"{source} lists"
            raise CliError(f"{where} {_shown(text)} refused: {problem}; nothing was sent", 2)
        if source is None and "/p2p/" not in text:
            text = f"{text.rstrip('/')}/p2p/{peer_id}"
            appended.append(text)
        posted.append(text)
    return list(dict.fromkeys(posted)), appended


def _advertised_node(args: argparse.Namespace, session: _Session):
    """(node key or public key, public key, key proof or None, multiaddrs, appended)."""
    multiaddrs = list(dict.fromkeys(args.multiaddr or []))
    if args.peer_key:
        peer_key = parse_bytes32(args.peer_key, "--peer-key")
        if not multiaddrs:
            raise ValueError("give --multiaddr (at least one) with --peer-key")
        if not args.key_proof:
            raise ValueError(
                "give --key-proof HEX with --peer-key (the node's 64-byte Ed25519 binding proof "
                "for your operator address), or --data-dir DIR to make it from the node key"
            )
        key_proof = _parse_hex(args.key_proof, 64, "--key-proof")
        posted, appended = _checked_multiaddrs(multiaddrs, peer_key, None)
        return peer_key, peer_key, key_proof, posted, appended
    if args.key_proof:
        raise ValueError("--key-proof goes with --peer-key (with --data-dir it is made here)")
    data_dir = session.settings.get("data_dir")
    if not data_dir:
        raise ValueError("give --peer-key HEX or --data-dir DIR (or set FAI_DATA_DIR)")
    node, addrs = _node_key_and_addrs(str(data_dir), multiaddrs)
    source = None if multiaddrs else Path(str(data_dir)).expanduser() / "node.json"
    posted, appended = _checked_multiaddrs(addrs, node.public_key, source)
    return node, node.public_key, None, posted, appended


@chain_command
def _advertise(args: argparse.Namespace) -> int:
    session = _Session(args, data_dir=args.data_dir)
    address = session.registry_address()
    private_key = session.key()
    if not MIN_TTL <= args.ttl <= MAX_TTL:
        raise ValueError(f"--ttl must be {MIN_TTL}..{MAX_TTL} seconds (at most 24 h)")
    node, peer_key, key_proof, multiaddrs, appended = _advertised_node(args, session)
    from fai_net.registry.possession import peer_id_of

    client = session.client(address)
    account = _account(private_key)
    receipt = client.advertise(account, node, multiaddrs, ttl=args.ttl, key_proof=key_proof)
    info = client.operator(account.address)
    now = client.block_timestamp()
    live = client.is_live(account.address)
    data = {
        "operator": account.address,
        "peer_id": peer_id_of(peer_key),
        "peer_key": peer_key.hex(),
        "multiaddrs": multiaddrs,
        "peer_id_appended": appended,
        "expiry": info.ad_expiry,
        "nonce": info.ad_nonce - 1,
        "live": live,
        "tx": _tx(receipt),
    }
    lines = [
        f"advertised node {data['peer_id']} for operator {account.address}",
        f"  (peer key {peer_key.hex()})",
        *(f"  {m}" for m in multiaddrs),
        *(
            [f"appended the node's /p2p/{data['peer_id']} to {len(appended)} address(es)"]
            if appended
            else []
        ),
        f"expires {format_utc(info.ad_expiry)} ({format_relative(info.ad_expiry, now)}); "
        f"renew before then with `fai advertise`",
        f"tx {data['tx']}",
    ]
    if not live:
        lines.append(
            f"not live: bonded stake {format_tokens(info.stake)} is below the minimum "
            f"{format_tokens(client.min_bond)} (fai stake)"
            if info.stake < client.min_bond
            else "not live (jailed or not registered)"
        )
    emit(args, data, lines)
    return 0


@chain_command
def _unbond(args: argparse.Namespace) -> int:
    tokens = _amount_arg(args, required=True)
    session = _Session(args)
    address = session.registry_address()
    private_key = session.key()
    from fai_net.registry.deploy import TOKEN

    amount = to_base_units(tokens, TOKEN)
    from fai_net.registry.errors import BelowMinimumBond

    client = session.client(address)
    account = _account(private_key)
    try:
        receipt = client.request_unbond(account, amount)
    except BelowMinimumBond:
        stake = client.operator(account.address).stake
        raise CliError(
            f"unbonding {token_count(amount)} would leave {format_tokens(stake - amount)}"
            f" bonded, below the minimum bond {format_tokens(client.min_bond)}: unbond all "
            f"{format_tokens(stake)} or at most {format_tokens(max(stake - client.min_bond, 0))}"
            " (BelowMinimumBond)"
        ) from None
    info = client.operator(account.address)
    now = client.block_timestamp()
    data = {
        "operator": account.address,
        "amount": amount,
        "stake": info.stake,
        "unbonding": info.unbonding,
        "ready_at": info.unbond_ready_at,
        "live": client.is_live(account.address),
        "tx": _tx(receipt),
    }
    lines = [
        f"unbonding {token_count(amount)} for {account.address}: "
        f"{format_tokens(info.unbonding)} unbonding, {format_tokens(info.stake)} still bonded",
        f"withdrawable at {format_utc(info.unbond_ready_at)} "
        f"({format_relative(info.unbond_ready_at, now)}) with `fai withdraw`",
        f"tx {data['tx']}",
    ]
    emit(args, data, lines)
    return 0


def _not_ready_message(session: _Session, unbonding: int, ready: int) -> str:
    """Why a withdrawal is refused, told by the chain's own clock.

    The registry compares the unbonding time with the timestamp of the block the call runs
    in, and a chain's clock moves only with its blocks: an idle chain can be behind this
    machine's clock. When the wait is over by this machine's clock but not by the chain's,
    say so, and on the devnet name the command that moves its clock on.
    """
    import time

    block = session.w3.eth.get_block("latest")
    chain_now, wall = int(block["timestamp"]), int(time.time())
    lines = [
        f"{token_count(unbonding)} unbonding become withdrawable at "
        f"{format_utc(ready)} ({format_relative(ready, chain_now)}) (UnbondingNotReady)",
        f"  the chain's clock reads {format_utc(chain_now)} (latest block, "
        f"#{block['number']}); withdrawable at {format_utc(ready)}",
    ]
    if wall >= ready > chain_now:
        lines.append(
            f"  this machine's clock reads {format_utc(wall)}, {format_duration(wall - chain_now)}"
            f" ahead: the chain has not produced a block since {format_utc(chain_now)}, and its "
            "clock moves only with new blocks"
        )
        if session.devnet:
            lines.append(
                f"  on this devnet, `fai devnet advance-time {ready - chain_now}` moves its clock "
                "on; then run `fai withdraw` again"
            )
        else:
            lines.append("  run `fai withdraw` again once the chain has produced a later block")
    return "\n".join(lines)


@chain_command
def _withdraw(args: argparse.Namespace) -> int:
    session = _Session(args)
    address = session.registry_address()
    private_key = session.key()
    from fai_net.registry.errors import UnbondingNotReady

    client = session.client(address)
    account = _account(private_key)
    try:
        receipt = client.withdraw(account)
    except UnbondingNotReady as exc:
        ready = exc.args_by_name.get("readyAt")
        if ready is None:
            raise
        unbonding = client.operator(account.address).unbonding
        raise CliError(_not_ready_message(session, unbonding, ready)) from None
    withdrawn = sum(e.args.amount for e in client.events(receipt, "Withdrawn"))
    left = bool(client.events(receipt, "Deregistered"))
    info = client.operator(account.address)
    data = {
        "operator": account.address,
        "amount": withdrawn,
        "stake": info.stake,
        "deregistered": left,
        "tx": _tx(receipt),
    }
    lines = [
        f"withdrew {token_count(withdrawn)} to {account.address}; "
        f"{format_tokens(info.stake)} still bonded",
        *(["the operator holds nothing any more and left the registry"] if left else []),
        f"tx {data['tx']}",
    ]
    emit(args, data, lines)
    return 0


@chain_command
def _slash_equivocation(args: argparse.Namespace) -> int:
    from fai_net.admission import evidence

    proof = evidence.load(args.evidence)  # re-verifies both envelopes; first, needs no chain
    session = _Session(args)
    address = session.registry_address()
    private_key = session.key()
    try:
        headers = proof.signed_headers()
    except evidence.EvidenceError as exc:
        raise CliError(
            f"{args.evidence} cannot be submitted: {exc}; the registry only slashes headers "
            "signed by the operator (or its signer)"
        ) from None
    client = session.client(address)
    owner = client.header_signer_operator(headers[0])
    for n, header in enumerate(headers, 1):
        if owner is None or client.header_signer_operator(header, owner) is None:
            attributed = client.peer_key_operator(proof.sender)
            whose = f"operator {attributed}" if attributed else "no live operator"
            raise CliError(
                f"{args.evidence} cannot be submitted: the operator signature of batch {n} "
                f"(peer key {proof.sender.hex()}, seq {proof.seq}) is not attributable: it does "
                "not recover to an operator that advertised this peer key, or to a signer such "
                "an operator authorised on this registry (both batches must be signed for the "
                f"same operator; the key is attributed to {whose}); signed for another chain "
                "or registry?"
            )
    reporter = _account(private_key)
    # Commit (reward bound to the reporter), then reveal in a later block.
    receipt = client.slash_equivocation(reporter, *headers, operator=owner)
    slashes = client.events(receipt, "Slashed")
    jailed = bool(client.events(receipt, "Jailed"))
    slashed = slashes[0].args if slashes else None
    operator = slashed.operator if slashed else owner
    data = {
        "operator": operator,
        "peer_key": proof.sender.hex(),
        "seq": proof.seq,
        "amount": slashed.amount if slashed else 0,
        "reward": slashed.reward if slashed else 0,
        "reporter": reporter.address,
        "jailed": jailed,
        "tx": _tx(receipt),
    }
    lines = [
        f"slashed operator {operator}: {token_count(data['amount'])} for equivocating "
        f"on seq {proof.seq} of peer key {proof.sender.hex()}",
        f"reporter {reporter.address} rewarded {token_count(data['reward'])}",
        *(["the operator is jailed: it can only withdraw what is left"] if jailed else []),
        f"tx {data['tx']}",
    ]
    emit(args, data, lines)
    return 0


@chain_command
def _slash_report(args: argparse.Namespace) -> int:
    session = _Session(args)
    address = session.registry_address()
    private_key = session.key()
    target = parse_address(args.target, "--target")
    evidence_hash = parse_bytes32(args.evidence_hash, "--evidence-hash")
    client = session.client(address)
    reporter = _account(private_key)
    receipt = client.report_fraud(reporter, target, evidence_hash)
    case_id = client.fraud_case_id(target, evidence_hash)
    case = client.fraud_case(case_id)
    opened = bool(client.events(receipt, "FraudCaseOpened"))
    executed = client.events(receipt, "FraudCaseExecuted")
    reports = client.events(receipt, "FraudReported")
    weight = reports[0].args.weight if reports else 0
    data = {
        "case_id": "0x" + case_id.hex(),
        "target": target,
        "evidence_hash": "0x" + evidence_hash.hex(),
        "reporter": reporter.address,
        "opened": opened,
        "weight": weight,
        "reported_stake": case.reported_stake,
        "snapshot_bonded_stake": case.snapshot_bonded_stake,
        "reporters": case.reporters,
        "executed": bool(executed),
        "slashed": executed[0].args.slashed if executed else 0,
        "tx": _tx(receipt),
    }
    lines = [
        f"{'opened' if opened else 'voted on'} fraud case {data['case_id']} against {target}",
        f"your weight {token_count(weight)}; reported {format_tokens(case.reported_stake)}"
        f" of {format_tokens(case.snapshot_bonded_stake)} snapshotted bonded stake "
        f"({case.reporters} reporter(s); the slash needs more than 2/3)",
    ]
    if executed:
        lines.append(f"threshold passed: {target} slashed {token_count(data['slashed'])}")
    lines.append(f"tx {data['tx']}")
    emit(args, data, lines)
    return 0


def _peer_row(p, now: int) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """A live peer as JSON, as a table row, and how many of its addresses are unusable.

    Another operator can post any string as a multiaddr straight to the contract: such an
    address is listed, marked with what is wrong (quoted, so it cannot drive the terminal),
    never dropped silently with its peer.
    """
    from fai_net.registry.possession import multiaddr_problem, peer_id_of

    data = {
        "operator": p.operator,
        "peer_id": peer_id_of(p.peer_key),
        "peer_key": p.peer_key.hex(),
        "stake": p.stake,
        "expiry": p.expiry,
        "multiaddrs": list(p.multiaddrs),
    }
    shown, bad = [], []
    for text in p.multiaddrs:
        problem = multiaddr_problem(text, p.peer_key, need_peer_id=False)
        if problem:
            bad.append({"multiaddr": text, "problem": problem})
            shown.append(f"{_shown(text)} [unusable: {problem}]")
        else:
            shown.append(text)
    if bad:
        data["bad_multiaddrs"] = bad
    row = (
        peer_id_of(p.peer_key),
        p.operator,
        format_tokens(p.stake),
        f"{format_utc(p.expiry)} ({format_relative(p.expiry, now)})",
        ", ".join(shown),
    )
    return data, row, len(bad)


@chain_command
def _peers(args: argparse.Namespace) -> int:
    session = _Session(args)
    client = session.client(session.registry_address())
    block = session.w3.eth.block_number
    now = session.w3.eth.get_block(block)["timestamp"]
    peers = client.live_peers(block)
    rows = [_peer_row(p, now) for p in peers]
    if args.json:
        emit(args, [data for data, _, _ in rows], [])
        return 0
    if not peers:
        print(f"no live peers on registry {client.address} (block {block})")
        return 0
    table = [("PEER ID", "OPERATOR", "STAKE", "ADVERTISEMENT EXPIRES", "MULTIADDRS")]
    table += [row for _, row, _ in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print(f"{len(peers)} live peer(s) on registry {client.address} at block {block}")
    for row in table:
        cells = [row[i].ljust(widths[i]) if i != 2 else row[i].rjust(widths[i]) for i in range(4)]
        print("  ".join([*cells, row[4]]))
    bad = sum(n for _, _, n in rows)
    if bad:
        print(
            f"{bad} advertised address(es) marked unusable: nodes cannot dial them (the "
            "operator must post a new advertisement with `fai advertise`)"
        )
    return 0


def _operator_report(client, operator: str, now: int) -> tuple[dict[str, Any], list[str]]:
    """One operator's registry record as JSON and as text; its node shown by peer id."""
    from fai_net.registry.possession import peer_id_of

    info = client.operator(operator)
    signer = client.contract.functions.signerOf(operator).call()
    has_key = any(info.peer_key)
    data = {
        "operator": operator,
        "registry": client.address,
        "chain_id": client.chain_id,
        "registered": info.registered,
        "live": client.is_live(operator),
        "jailed": info.jailed,
        "stake": info.stake,
        "unbonding": info.unbonding,
        "unbond_ready_at": info.unbond_ready_at,
        "ad_expiry": info.ad_expiry,
        "ad_nonce": info.ad_nonce,
        "peer_id": peer_id_of(info.peer_key) if has_key else None,
        "peer_key": info.peer_key.hex() if has_key else None,
        "signer": None if int(signer, 16) == 0 else signer,
        "token_balance": client.token_balance(operator),
        "min_bond": client.min_bond,
        "chain_time": now,
    }
    state = "live" if data["live"] else "not live"
    if info.jailed:
        state += ", jailed"
    if not info.registered:
        state += ", not registered"
    lines = [
        f"peer       {data['peer_id']}  operator {operator} ({state})"
        if has_key
        else f"operator   {operator} ({state}); no peer key advertised",
        f"bonded     {token_count(info.stake)} (minimum {format_tokens(client.min_bond)})",
    ]
    if info.unbonding:
        lines.append(
            f"unbonding  {token_count(info.unbonding)}, withdrawable "
            f"{format_utc(info.unbond_ready_at)} ({format_relative(info.unbond_ready_at, now)})"
        )
    if has_key:
        lines.append(f"peer key   {data['peer_key']}")
    if info.ad_expiry:
        lines.append(
            f"advert     expires {format_utc(info.ad_expiry)} "
            f"({format_relative(info.ad_expiry, now)})"
        )
    else:
        lines.append("advert     none")
    if data["signer"]:
        lines.append(f"signer     {data['signer']}")
    lines.append(f"balance    {token_count(data['token_balance'])} in the wallet")
    return data, lines


def _devnet_operators(session: _Session) -> list[tuple[str, str]] | None:
    """(node name, operator address) of every devnet node, when `fai registry status` is
    asked about no one in particular on the devnet's chain; None otherwise."""
    if session.args.operator or session.settings.get("key_file") or not session.devnet:
        return None
    found = []
    for node in session.devnet.get("nodes") or []:
        operator = node.get("operator")
        if not operator and node.get("operator_key_file"):
            operator = _account(read_private_key(node["operator_key_file"])).address
        if operator:
            found.append((str(node.get("name", "?")), parse_address(operator, "operator")))
    return found or None


@chain_command
def _status(args: argparse.Namespace) -> int:
    session = _Session(args)
    address = session.registry_address()
    nodes = _devnet_operators(session)
    if nodes is None:
        if args.operator:
            operator = parse_address(args.operator, "--operator")
        else:
            operator = _account(session.key("or give --operator")).address
        nodes = [("", operator)]
    client = session.client(address)
    now = client.block_timestamp()
    reports = []
    for name, operator in nodes:
        data, lines = _operator_report(client, operator, now)
        if name:
            data = {"node": name, **data}
            lines = [f"{name}:", *(f"  {line}" for line in lines)]
        reports.append((data, lines))
    if len(reports) == 1 and not reports[0][0].get("node"):
        emit(args, reports[0][0], reports[0][1])
        return 0
    text = [f"{len(reports)} devnet node operator(s) on registry {client.address}"]
    for _, lines in reports:
        text += ["", *lines]
    emit(args, [data for data, _ in reports], text)
    return 0


# -- the parser ---------------------------------------------------------------------------


def _leaf(sub, name: str, handler, help_text: str, description: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=JSON_NOTE,
    )
    add_chain_flags(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_registry_commands(commands) -> None:
    """Add `registry`, `stake`, `advertise`, `unbond`, `withdraw` and `slash` to `fai`."""
    _add_registry_group(commands)
    _add_stake_command(commands)
    _add_advertise_command(commands)
    _add_unbond_commands(commands)
    _add_slash_commands(commands)


def _add_registry_group(commands) -> None:
    """`fai registry deploy|peers|status`."""
    registry = commands.add_parser(
        "registry",
        help="deploy a DSO registry, list its live peers, show an operator",
        description="The on-chain DSO registry: stake bonds, signed peer advertisements, "
        "slashing. See docs/registry.md.",
    )
    registry.set_defaults(handler=group_help(registry))
    reg_sub = registry.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    deploy = _leaf(
        reg_sub,
        "deploy",
        _deploy,
        "deploy a test stake token and a registry",
        "Deploy FaiTestToken (the whole supply goes to the owner) and a DSORegistry owned "
        "by the same key, then print their addresses.",
    )
    deploy.add_argument(
        "--owner-key-file",
        metavar="FILE",
        help="the deployer's and owner's private key file (default: --key-file)",
    )
    deploy.add_argument(
        "--min-bond", type=token_amount, metavar="TOKENS", help="minimum bond (default 10)"
    )
    deploy.add_argument(
        "--unbonding-delay", type=int, metavar="S", help="unbonding delay (default 7 days)"
    )
    _leaf(
        reg_sub,
        "peers",
        _peers,
        "list the live peers (peer id, operator, stake, expiry, multiaddrs)",
        "List every live operator (bonded >= minimum, not jailed, advertisement unexpired) "
        "whose advertisement carries a valid Ed25519 proof for its peer key, by its node's "
        "libp2p peer id, with the multiaddrs of its current advertisement, read at one block. "
        "An address nodes cannot dial is listed, marked unusable (--json: bad_multiaddrs).",
    )
    status = _leaf(
        reg_sub,
        "status",
        _status,
        "show an operator's stake, unbonding, jail and advertisement",
        "Show the registry's record of an operator, its node by libp2p peer id: your key's "
        "address, or --operator; with neither, on a devnet, every devnet node's operator "
        "(--json: a list, each with its node's name).",
    )
    status.add_argument("--operator", metavar="ADDR", help="operator address (default: yours)")


def _add_stake_command(commands) -> None:
    stake = _leaf(
        commands,
        "stake",
        _stake,
        "register as an operator (first stake) or add stake",
        "Bond stake tokens in the registry: the first time registers the operator (at least "
        "the minimum bond); later calls add to the bond. Approves the token as needed.",
    )
    stake.add_argument(
        "tokens",
        nargs="?",
        type=token_amount,
        metavar="TOKENS",
        help="whole tokens, e.g. 100 or 12.5 (same as --amount)",
    )
    stake.add_argument(
        "--amount",
        type=token_amount,
        metavar="TOKENS",
        help="whole tokens, e.g. 100 or 12.5 (first stake: default the minimum bond)",
    )


def _add_advertise_command(commands) -> None:
    advertise = _leaf(
        commands,
        "advertise",
        _advertise,
        "post or renew your node's signed peer advertisement",
        "Sign and post an advertisement binding your operator address to a node's Ed25519 "
        "peer key and multiaddrs, valid for --ttl (at most 24 h); run it again to renew.",
    )
    source = advertise.add_mutually_exclusive_group()
    source.add_argument(
        "--peer-key",
        metavar="HEX",
        help="the node's 32-byte Ed25519 public key (with --key-proof)",
    )
    add_data_dir_flag(
        source,
        help="a node's data directory: the key from DIR/node.key (never created here), the "
        "multiaddrs from DIR/node.json unless --multiaddr is given (FAI_DATA_DIR)",
    )
    advertise.add_argument(
        "--multiaddr",
        action="append",
        metavar="M",
        help="address to advertise (repeat, 1..8): /ip4|ip6|dns/HOST/tcp/PORT/p2p/<the node's "
        "peer id>; without /p2p/ the node's own is appended; anything else is refused before "
        "a transaction is sent",
    )
    advertise.add_argument(
        "--key-proof",
        metavar="HEX",
        help="with --peer-key: the node's 64-byte Ed25519 signature binding its key to your "
        "operator address (fai_net.registry.possession.prove_binding); nodes ignore "
        "advertisements without a valid one",
    )
    advertise.add_argument(
        "--ttl", type=int, default=MAX_TTL, metavar="S", help="lifetime (default/max 86400)"
    )


def _add_unbond_commands(commands) -> None:
    """`fai unbond` and `fai withdraw`."""
    unbond = _leaf(
        commands,
        "unbond",
        _unbond,
        "start unbonding part or all of your stake",
        "Move bonded stake into unbonding; it can be withdrawn after the registry's "
        "unbonding delay (and stays slashable until then). What stays bonded must be 0 or at "
        "least the minimum bond.",
    )
    unbond.add_argument(
        "tokens", nargs="?", type=token_amount, metavar="TOKENS", help="same as --amount"
    )
    unbond.add_argument("--amount", type=token_amount, metavar="TOKENS", help="whole tokens")
    _leaf(
        commands,
        "withdraw",
        _withdraw,
        "withdraw stake whose unbonding delay has passed",
        "Pay out your unbonding stake once the unbonding delay has passed.",
    )


def _add_slash_commands(commands) -> None:
    """`fai slash equivocation|report`."""
    slash = commands.add_parser(
        "slash",
        help="submit equivocation evidence or a fraud report",
        description="Slashing: prove equivocation with an evidence file, or report fraud "
        "(bonded operators vote; more than 2/3 of the snapshotted bonded stake slashes).",
    )
    slash.set_defaults(handler=group_help(slash))
    slash_sub = slash.add_subparsers(dest="slash_command", metavar="SUBCOMMAND")
    equivocation = _leaf(
        slash_sub,
        "equivocation",
        _slash_equivocation,
        "slash an operator with an equivocation evidence file",
        "Re-verify an fai/equivocation/v1 evidence file (two batches, one seq, two CIDs), "
        "check both headers are attributable to one operator on-chain, then commit to them "
        "and reveal them in the next block; the reporter (your key) receives the reward.",
    )
    equivocation.add_argument("--evidence", required=True, metavar="FILE", help="evidence file")
    report = _leaf(
        slash_sub,
        "report",
        _slash_report,
        "open or vote on a fraud case against an operator",
        "Report fraud by TARGET under an evidence hash: the first report opens the case, "
        "later reports by operators bonded when it opened vote. Your key must be a bonded "
        "operator.",
    )
    report.add_argument("--target", required=True, metavar="ADDR", help="the accused operator")
    report.add_argument(
        "--evidence-hash", required=True, metavar="HEX", help="32-byte hash of the evidence"
    )
