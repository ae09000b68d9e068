"""`fai registry|stake|advertise|unbond|withdraw|slash` as a user runs them: subprocesses
against the session Anvil.

Every run gets an environment without the caller's FAI_* variables and no fai.toml in its
working directory, so only what a test passes reaches the command. The `env` fixture reverts
the chain after each test, including what the subprocesses did.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.wire import BatchHeader, encode_batch
from fai_net.admission import evidence
from fai_net.cli import registry as cli_registry
from fai_net.peer_ids import peer_id_of
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import TOKEN

from .conftest import Env

NOBODY = "0x000000000000000000000000000000000000dEaD"


class Fai:
    """Runs `python -m fai_net.cli ...` in `cwd` with only the given FAI_* settings."""

    def __init__(self, cwd: Path, **settings: str):
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAI_")}
        self.env["FAI_DEVNET_STATE"] = str(cwd / "no-devnet.json")
        self.env.update(settings)

    def start(self, *argv: str | Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "fai_net.cli", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=self.env,
        )

    @staticmethod
    def finish(proc: subprocess.Popen, code: int | None = 0) -> subprocess.CompletedProcess:
        stdout, stderr = proc.communicate(timeout=120)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if code is not None:
            assert done.returncode == code, (done.returncode, stdout, stderr)
            if code:
                assert "Traceback" not in stderr, stderr
                assert stderr.startswith("fai: error: "), stderr
        return done

    def __call__(self, *argv: str | Path, code: int | None = 0) -> subprocess.CompletedProcess:
        return self.finish(self.start(*argv), code)

    def parallel(self, *calls: tuple[int | None, tuple]) -> list[subprocess.CompletedProcess]:
        """Independent runs at once (each costs ~2 s of imports): (code, argv) pairs."""
        procs = [(code, self.start(*argv)) for code, argv in calls]
        return [self.finish(proc, code) for code, proc in procs]

    def json(self, *argv: str | Path):
        return json.loads(self(*argv, "--json").stdout)


def key_file(path: Path, account: LocalAccount) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(account.key.hex())
    return path


def batch(env: Env, signer: LocalAccount | None, key: NodeKey, seq: int, text: str) -> bytes:
    """A real wire batch; `signer` signs its EIP-712 header for the registry (or nobody)."""
    ts = 1_000
    vector = np.random.default_rng(len(text)).standard_normal(16).astype(np.float32)
    exp = Experience.create(text, vector, 0.8, "coding", key.public_key, ts)

    def operator_signer(header: BatchHeader) -> bytes:
        return env.reg.sign_batch_header(
            signer, header.sender, header.seq, header.cid_digest, header.timestamp_ms
        ).signature

    signed = encode_batch(
        [exp],
        key=key,
        seq=seq,
        timestamp_ms=ts,
        model="test-model",
        baseline=np.zeros(16, np.float32),
        group=8,
        operator_signer=None if signer is None else operator_signer,
    )
    return signed.envelope


def equivocation_file(env: Env, directory: Path, signer, key: NodeKey, seq: int = 9) -> Path:
    first = batch(env, signer, key, seq, "retry flaky network calls with backoff")
    second = batch(env, signer, key, seq, "pin dependencies before upgrading")
    return evidence.write(directory, evidence.check(first, second))


def go_live(env: Env, op: LocalAccount, n: int, stake: int = 20 * MIN) -> NodeKey:
    node = NodeKey(bytes([n]) * 32)
    env.reg.register(op, stake)
    env.reg.advertise(op, node, [f"/ip4/127.0.0.1/tcp/{4000 + n}"])
    return node


def test_deploy_stake_advertise_peers_unbond_withdraw(env: Env, anvil, tmp_path: Path):
    deployer = Account.from_key((0xC11_0001).to_bytes(32, "big"))
    env.rpc("anvil_setBalance", [deployer.address, hex(10**21)])
    deployer_key = key_file(tmp_path / "deployer.key", deployer)
    fai = Fai(tmp_path, FAI_RPC=anvil.url)

    deployed = fai.json(
        "registry", "deploy", "--owner-key-file", deployer_key, "--unbonding-delay", "3600"
    )
    assert deployed["owner"] == deployer.address and deployed["chain_id"] == 31337
    assert deployed["block"] == env.w3.eth.block_number
    assert env.w3.eth.get_code(deployed["registry"]) and env.w3.eth.get_code(deployed["token"])
    fai.env.update(FAI_REGISTRY=deployed["registry"], FAI_KEY_FILE=str(deployer_key))

    # A contract revert is one plain line and exit code 1. A data directory without
    # node.key is refused, and no key is created there.
    empty = tmp_path / "empty"
    empty.mkdir()
    not_registered, no_node_key = fai.parallel(
        (1, ("unbond", "--amount", "1")), (2, ("advertise", "--data-dir", empty))
    )
    assert "is not registered (NotRegistered)" in not_registered.stderr
    assert "no node key" in no_node_key.stderr and not (empty / "node.key").exists()

    staked = fai.json("stake", "--amount", "12.5")
    assert staked["action"] == "register" and staked["stake"] == 12 * TOKEN + TOKEN // 2
    assert staked["live"] is False
    added = fai("stake", "--amount", "2.5")
    assert "+2.5 tokens, 15 bonded" in added.stdout

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    seed = bytes(range(100, 132))
    fd = os.open(data_dir / "node.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, seed)
    os.close(fd)
    addrs = ["/ip4/127.0.0.1/tcp/4101", "/ip4/127.0.0.1/tcp/4102"]
    (data_dir / "node.json").write_text(json.dumps({"addrs": addrs}))
    ad = fai.json("advertise", "--data-dir", data_dir)
    public_key = NodeKey(seed).public_key.hex()
    assert ad["peer_key"] == public_key and ad["multiaddrs"] == addrs and ad["live"] is True

    peers = fai.json("registry", "peers")
    assert peers == [
        {
            "operator": deployer.address,
            "peer_id": peer_id_of(NodeKey(seed).public_key),
            "peer_key": public_key,
            "stake": 15 * TOKEN,
            "expiry": ad["expiry"],
            "multiaddrs": addrs,
        }
    ]

    unbond = fai.json("unbond", "--amount", "15")
    assert unbond["unbonding"] == 15 * TOKEN and unbond["stake"] == 0 and not unbond["live"]
    early = fai("withdraw", code=1)
    assert "15 tokens unbonding become withdrawable at" in early.stderr
    assert "(in 1h 0m)" in early.stderr or "(in 0h 59m)" in early.stderr
    env.travel(3601)
    withdrawn = fai.json("withdraw")
    assert withdrawn["amount"] == 15 * TOKEN and withdrawn["deregistered"] is True

    # Settings from a TOML file alone (no FAI_* variables).
    toml = tmp_path / "settings.toml"
    toml.write_text(
        f'rpc = "{anvil.url}"\nregistry = "{deployed["registry"]}"\nkey_file = "{deployer_key}"\n'
    )
    status = Fai(tmp_path).json("registry", "status", "--config", toml)
    assert status["operator"] == deployer.address and status["registry"] == deployed["registry"]
    assert not status["registered"] and status["stake"] == status["unbonding"] == 0
    assert status["token_balance"] == 10**9 * TOKEN  # the whole supply is back


def test_slash_equivocation_from_an_evidence_file(env: Env, anvil, tmp_path: Path):
    cheat, honest, reporter = env.ops[0], env.ops[1], env.outsider
    cheat_node = go_live(env, cheat, 1)
    go_live(env, honest, 2)
    fai = Fai(
        tmp_path,
        FAI_RPC=anvil.url,
        FAI_REGISTRY=env.reg.address,
        FAI_KEY_FILE=str(key_file(tmp_path / "reporter.key", reporter)),
    )

    # Headers without operator signatures, or signed by someone else's key: refused.
    unsigned = equivocation_file(env, tmp_path / "unsigned", None, cheat_node)
    framed = equivocation_file(env, tmp_path / "framed", honest, cheat_node)
    no_sig, not_theirs = fai.parallel(
        (1, ("slash", "equivocation", "--evidence", unsigned)),
        (1, ("slash", "equivocation", "--evidence", framed)),
    )
    assert "lacks the operator signature" in no_sig.stderr
    assert "is not attributable" in not_theirs.stderr and cheat.address in not_theirs.stderr
    assert env.reg.is_live(cheat.address)

    proof = equivocation_file(env, tmp_path / "proof", cheat, cheat_node)
    slashed = fai.json("slash", "equivocation", "--evidence", proof)
    assert slashed["operator"] == cheat.address and slashed["seq"] == 9
    assert slashed["amount"] == 2 * MIN and slashed["reward"] == 2 * MIN // 10
    assert slashed["jailed"] and slashed["reporter"] == reporter.address
    receipt = env.w3.eth.get_transaction_receipt(slashed["tx"])
    assert receipt["status"] == 1
    assert env.reg.operator(cheat.address).jailed and not env.reg.is_live(cheat.address)

    table = fai("registry", "peers").stdout
    assert "1 live peer(s)" in table and honest.address in table and cheat.address not in table
    assert "/ip4/127.0.0.1/tcp/4002" in table and "(in 23h " in table and " 200 " in table


def test_fraud_report_opens_a_case(env: Env, anvil, tmp_path: Path):
    target, reporter, third = env.ops[0], env.ops[1], env.ops[2]
    for n, op in enumerate((target, reporter, third), 1):
        go_live(env, op, n)
    evidence_hash = "ab" * 32
    fai = Fai(tmp_path, FAI_RPC=anvil.url, FAI_REGISTRY=env.reg.address)
    report = fai.json(
        "slash",
        "report",
        "--target",
        target.address,
        "--evidence-hash",
        "0x" + evidence_hash,
        "--key-file",
        key_file(tmp_path / "reporter.key", reporter),
    )
    assert report["opened"] and not report["executed"] and report["reporters"] == 1
    assert report["weight"] == 20 * MIN and report["snapshot_bonded_stake"] == 60 * MIN
    case_id = env.reg.fraud_case_id(target.address, bytes.fromhex(evidence_hash))
    assert report["case_id"] == "0x" + case_id.hex()
    assert env.reg.fraud_case(case_id).reported_stake == 20 * MIN


def test_missing_settings_bad_key_files_no_chain_no_registry(anvil, tmp_path: Path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"http://127.0.0.1:{port}"
    chain = ("--rpc", anvil.url, "--registry", NOBODY)
    missing, bad_key, absent_key, bad_key_first, down, no_code = Fai(tmp_path).parallel(
        (2, ("registry", "peers")),
        (2, ("stake", *chain, "--key-file", bad)),
        (2, ("withdraw", *chain, "--key-file", tmp_path / "absent.key")),
        (2, ("advertise", *chain, "--key-file", bad)),
        (1, ("registry", "peers", "--rpc", url, "--registry", NOBODY)),
        (1, ("registry", "status", *chain, "--operator", NOBODY)),
    )
    assert "no rpc: give --rpc, set FAI_RPC, put `rpc = ...` in fai.toml" in missing.stderr
    assert "must hold one Ethereum private key: 64 hex digits" in bad_key.stderr
    assert "absent.key does not exist" in absent_key.stderr
    assert "64 hex digits" in bad_key_first.stderr
    assert f"no chain at {url}: is the devnet up? (fai devnet up)" in down.stderr
    assert f"no registry at {NOBODY}" in no_code.stderr


HELP = [
    ("registry",),
    ("registry", "deploy"),
    ("registry", "peers"),
    ("registry", "status"),
    ("stake",),
    ("advertise",),
    ("unbond",),
    ("withdraw",),
    ("slash",),
    ("slash", "equivocation"),
    ("slash", "report"),
]


def test_every_command_has_help(tmp_path: Path):
    fai = Fai(tmp_path)
    runs = fai.parallel(*((0, (*command, "--help")) for command in HELP))
    for command, run in zip(HELP, runs, strict=True):
        out = run.stdout
        assert out.startswith(f"usage: fai {' '.join(command)}"), out
        if len(command) == 2 or command[0] not in ("registry", "slash"):
            assert "--json" in out and "--rpc URL" in out and "--allow-remote" in out
    # A command group without its subcommand prints its help.
    group = fai("slash", code=None)
    assert group.returncode == 2 and group.stdout.startswith("usage: fai slash")
    assert "equivocation" in group.stdout and "report" in group.stdout


def test_the_module_imports_nothing_heavy():
    code = (
        "import sys, fai_net.cli.registry; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'web3', 'eth_account', 'eth_utils', 'numpy', 'libp2p', 'requests'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rpc_urls_off_this_machine_need_allow_remote():
    check = cli_registry.check_rpc_url
    for url in ("http://127.0.0.1:8545", "http://localhost:8545", "https://[::1]:8545/"):
        assert check(url) == url
    with pytest.raises(ValueError, match="--allow-remote"):
        check("http://192.0.2.7:8545")
    assert check("https://192.0.2.7/rpc", allow_remote=True) == "https://192.0.2.7/rpc"
    with pytest.raises(ValueError, match="must look like"):
        check("ws://127.0.0.1:8545")
    # The refusal comes before any connection is made.
    args = argparse.Namespace(
        rpc="http://192.0.2.7:8545",
        registry=NOBODY,
        key_file=None,
        config=None,
        devnet_state="/nonexistent/devnet.json",
        allow_remote=False,
    )
    with pytest.raises(ValueError, match="not on this machine"):
        cli_registry._Session(args)


def test_token_amounts():
    parse, units = cli_registry.token_amount, cli_registry.to_base_units
    assert units(parse("100"), TOKEN) == 100 * TOKEN
    assert units(parse("12.5"), TOKEN) == 12 * TOKEN + TOKEN // 2
    assert units(parse("0.000000000000000001"), TOKEN) == 1
    with pytest.raises(ValueError, match="more decimal places"):
        units(parse("1.0000000000000000001"), TOKEN)
    for bad in ("abc", "-1", "0", "nan", "inf", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert cli_registry.format_tokens(12 * TOKEN + TOKEN // 2) == "12.5"
    assert cli_registry.format_tokens(10**9 * TOKEN) == "1,000,000,000"
    assert cli_registry.format_relative(1000 + 3 * 3600 + 120, 1000) == "in 3h 2m"
    assert cli_registry.format_relative(1000, 1000 + 8 * 86400) == "8d 0h ago"
    assert Decimal("1e3") == parse("1e3")
