"""`fai_net.cli.common`: the one way every `fai` command tells a failure (message, exit code,
stream, usage line or not), the --json helpers and the shared flags."""

from __future__ import annotations

import argparse
import json

import pytest

from fai_core.errors import FaiError
from fai_net.api.control import Code, ControlError, NodeNotRunning
from fai_net.cli import common
from fai_net.cli.common import CliError, Refused, guarded, run_command
from fai_net.settings import SettingsError


def _raise(exc: BaseException):
    def handler(_args: argparse.Namespace) -> int:
        raise exc

    return handler


def _guarded_run(exc: BaseException, capsys, **args) -> tuple[int, str, str]:
    code = guarded(_raise(exc))(argparse.Namespace(**args))
    out, err = capsys.readouterr()
    return code, out, err


# -- guarded: a command's own refusals, one line on stderr, no usage --------------------------


def test_no_node_at_a_data_dir_says_how_to_start_one(capsys):
    exc = NodeNotRunning("/tmp/n/control.sock", "no such file")
    assert _guarded_run(exc, capsys) == (
        1,
        "",
        "fai: error: no node is running at /tmp/n/control.sock (start one with "
        "`fai node run --data-dir /tmp/n --domain ...`)\n",
    )


def test_no_devnet_node_points_at_the_devnet(capsys):
    exc = NodeNotRunning("/tmp/n/control.sock", "no such file")
    code, out, err = _guarded_run(exc, capsys, node="2")
    assert (code, out) == (1, "")
    assert err == (
        "fai: error: no node is running at /tmp/n/control.sock (is the devnet up? "
        "`fai devnet status` shows its nodes)\n"
    )


@pytest.mark.parametrize(
    ("code", "message", "exit_code", "shown"),
    [
        (Code.BAD_REQUEST, "domain 'x' is not subscribed", 2, "domain 'x' is not subscribed"),
        (
            Code.UNKNOWN_ACTION,
            "unknown action 'recall'",
            1,
            "the node does not support this command (unknown action 'recall'); upgrade the node",
        ),
        (Code.INTERNAL, "it broke", 1, f"it broke ({Code.INTERNAL})"),
    ],
)
def test_a_node_refusal_by_its_code(capsys, code, message, exit_code, shown):
    assert _guarded_run(ControlError(code, message), capsys) == (
        exit_code,
        "",
        f"fai: error: {shown}\n",
    )


def test_a_refusal_exits_2_without_usage(capsys):
    assert _guarded_run(Refused("--text needs --domain"), capsys) == (
        2,
        "",
        "fai: error: --text needs --domain\n",
    )


def test_the_node_commands_refusal_keeps_its_name_for_the_hook():
    from fai_net.cli.node import _Refused

    assert issubclass(_Refused, Refused) and _Refused.__name__ == "_Refused"


@pytest.mark.parametrize(("exit_code"), [1, 2])
def test_a_cli_error_says_its_own_exit_code(capsys, exit_code):
    assert _guarded_run(CliError("key file k does not exist", exit_code), capsys) == (
        exit_code,
        "",
        "fai: error: key file k does not exist\n",
    )


def test_cli_error_defaults_to_exit_1():
    assert CliError("the chain refused").exit_code == 1


def test_also_explains_other_failures_with_exit_1(capsys):
    def also(exc, _args):
        return f"no chain: {exc}" if isinstance(exc, ConnectionError) else None

    handler = guarded(_raise(ConnectionError("refused")), also=also)
    assert handler(argparse.Namespace()) == 1
    assert capsys.readouterr().err == "fai: error: no chain: refused\n"
    with pytest.raises(KeyError, match=r"^'x'$"):  # not explained: it goes on as it is
        guarded(_raise(KeyError("x")), also=also)(argparse.Namespace())


@pytest.mark.parametrize("exc", [ValueError("bad"), SettingsError("no rpc"), FaiError("x")])
def test_input_errors_pass_through_guarded_to_run_command(exc):
    seen = []

    def also(failure, _args):
        seen.append(failure)
        return "never"

    with pytest.raises(type(exc)):
        guarded(_raise(exc), also=also)(argparse.Namespace())
    assert seen == []


def test_a_reader_that_went_away_is_exit_0_and_silent(capsys, monkeypatch):
    redirected = []

    class Stdout:
        def fileno(self) -> int:
            return 99

    monkeypatch.setattr(common.sys, "stdout", Stdout())
    monkeypatch.setattr(common.os, "dup2", lambda src, dst: redirected.append(dst))
    assert guarded(_raise(BrokenPipeError()))(argparse.Namespace()) == 0
    monkeypatch.undo()
    assert redirected == [99]
    assert capsys.readouterr() == ("", "")


def test_guarded_keeps_the_handlers_name_and_result():
    def _status(_args):
        """Doc."""
        return 0

    wrapped = guarded(_status)
    assert wrapped(argparse.Namespace()) == 0
    assert (wrapped.__name__, wrapped.__doc__) == ("_status", "Doc.")


# -- run_command: input errors add the usage line of the command typed ------------------------


def _command() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="fai thing", usage="fai thing [-h] [--x X]")


def _run(exc: BaseException, capsys, top_level: bool = False) -> tuple[int, str, str]:
    args = argparse.Namespace(handler=_raise(exc))
    code = run_command(args, _command(), top_level=top_level)
    out, err = capsys.readouterr()
    return code, out, err


USAGE = "usage: fai thing [-h] [--x X]\n"


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("--ttl must be 60..86400 seconds"),
        SettingsError("no registry: give --registry"),
        CliError("key file k does not exist", 2),
    ],
)
def test_bad_input_prints_the_message_then_the_usage(capsys, exc):
    assert _run(exc, capsys) == (2, "", f"fai: error: {exc}\n{USAGE}")


def test_other_fai_errors_exit_2_without_usage(capsys):
    exc = FaiError("no devnet is up; start one with `fai devnet up`")
    assert _run(exc, capsys) == (2, "", f"fai: error: {exc}\n")


def test_a_cli_error_of_exit_1_shows_no_usage(capsys):
    assert _run(CliError("no chain"), capsys) == (1, "", "fai: error: no chain\n")


def test_the_top_level_command_shows_no_usage(capsys):
    assert _run(ValueError("bad"), capsys, top_level=True) == (2, "", "fai: error: bad\n")


def test_ctrl_c_is_exit_130(capsys):
    assert _run(KeyboardInterrupt(), capsys) == (130, "", "")


def test_run_command_returns_the_handlers_code():
    args = argparse.Namespace(handler=lambda _args: 7)
    assert run_command(args, _command()) == 7


def test_an_unknown_failure_is_not_hidden():
    with pytest.raises(KeyError, match=r"^'x'$"):
        run_command(argparse.Namespace(handler=_raise(KeyError("x"))), _command())


# -- output ----------------------------------------------------------------------------------


def test_print_json_and_emit(capsys):
    data = {"b": 1, "a": [1, 2]}
    common.print_json(data)
    assert capsys.readouterr().out == json.dumps(data, indent=2) + "\n"
    common.emit(argparse.Namespace(json=True), data, ["unused"])
    assert json.loads(capsys.readouterr().out) == data
    common.emit(argparse.Namespace(json=False), data, ["one", "two"])
    assert capsys.readouterr().out == "one\ntwo\n"


@pytest.mark.parametrize("stderr", [False, True])
def test_group_help_prints_help_and_exits_2(capsys, stderr):
    parser = argparse.ArgumentParser(prog="fai group", description="A group.")
    assert common.group_help(parser, stderr=stderr)(argparse.Namespace()) == 2
    out, err = capsys.readouterr()
    assert "A group." in (err if stderr else out) and not (out if stderr else err)


# -- shared flags ----------------------------------------------------------------------------


def test_which_node_flags():
    parser = argparse.ArgumentParser(prog="fai x")
    common.add_which_node_flags(parser)
    common.add_json_flag(parser)
    args = parser.parse_args([])
    assert (args.socket, args.data_dir, args.node, args.timeout, args.json) == (
        None,
        None,
        None,
        60.0,
        False,
    )
    args = parser.parse_args(
        ["--socket", "/s", "--data-dir", "/d", "--node", "2", "--timeout", "3", "--json"]
    )
    assert (args.socket, args.data_dir, args.node, args.timeout, args.json) == (
        "/s",
        "/d",
        "2",
        3.0,
        True,
    )
    text = parser.format_help()
    assert "which node:" in text
    assert "--socket PATH" in text and "--data-dir DIR" in text and "--node N" in text
    assert "--timeout S" in text and "machine-readable JSON output" in text


def test_timeout_must_be_positive(capsys):
    parser = argparse.ArgumentParser(prog="fai x")
    common.add_which_node_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--timeout", "0"])
    assert "argument --timeout: must be positive, got 0" in capsys.readouterr().err


def test_chain_flags():
    parser = argparse.ArgumentParser(prog="fai x")
    common.add_chain_flags(parser)
    args = parser.parse_args(
        ["--rpc", "http://127.0.0.1:8545", "--registry", "0xab", "--key-file", "k", "--node", "1"]
    )
    assert (args.rpc, args.registry, args.key_file, args.node) == (
        "http://127.0.0.1:8545",
        "0xab",
        "k",
        "1",
    )
    assert (args.config, args.devnet_state, args.allow_remote, args.json) == (
        None,
        None,
        False,
        False,
    )
    text = parser.format_help()
    assert "chain and settings (flag > FAI_* env > fai.toml > devnet):" in text
    assert "--rpc URL" in text and "--registry ADDR" in text and "--key-file FILE" in text


def test_flags_keep_the_metavar_and_help_they_are_given():
    parser = argparse.ArgumentParser(prog="fai x")
    common.add_socket_flag(parser, metavar=None)
    common.add_data_dir_flag(parser, help="where it lives", metavar=None)
    common.add_node_flag(parser, help="the node: 4 or node4", required=True)
    common.add_timeout_flag(parser, default=30.0, type=float, metavar=None)
    text = parser.format_help()
    assert "--socket SOCKET" in text and "--data-dir DATA_DIR" in text
    assert "where it lives" in text and "the node: 4 or node4" in text
    assert "--timeout TIMEOUT" in text
    assert parser.parse_args(["--node", "4"]).timeout == 30.0
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --node is required


def test_int_in():
    parse = common.int_in(1, 5)
    assert parse("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be in 1\.\.5, got 6"):
        parse("6")
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer: 'x'"):
        parse("x")


def _leaves(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


def test_every_node_and_registry_command_takes_the_shared_flags():
    from fai_net.cli.entry import build_parser

    node_flags = {"--socket", "--data-dir", "--node", "--timeout", "--json"}
    chain_flags = {"--rpc", "--registry", "--key-file", "--node", "--json"}
    seen = 0
    for path, parser in _leaves(build_parser()):
        flags = {s for a in parser._actions for s in a.option_strings}
        if path[0] == "experiences" or (path[:1] == ("node",) and path != ("node", "run")):
            assert node_flags <= flags, path
            seen += 1
        if path[0] in ("registry", "stake", "advertise", "unbond", "withdraw", "slash"):
            assert chain_flags <= flags, path
            seen += 1
    assert seen == 6 + 6 + 3 + 4 + 2


def test_common_loads_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; import fai_net.cli.common; "
        "print(sorted(m for m in ('numpy', 'trio', 'web3', 'fai_net.api.control') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
