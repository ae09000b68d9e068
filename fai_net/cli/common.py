"""What every `fai` command shares: how a failure is told, how --json is printed, and the
flags that name a node, a chain or an output format.

Why one module: the commands grew in three files, each with its own way to turn an error
into a message, and each declaring `--node`, `--data-dir` or `--json` by hand. Users see one
program, so a refusal must read the same (`fai: error: ...` on stderr, one line) and exit
with the same code whichever command made it. The convention, in one place:

| what went wrong | exit | usage line |
|---|---|---|
| the command refused, in its own words (`Refused`, `CliError(msg, 2)`) | 2 | no |
| no node answers on the control socket (`NodeNotRunning`) | 1 | no |
| the node refused a bad request / failed / lacks the action (`ControlError`) | 2 / 1 / 1 | no |
| the chain refused or is not there (`CliError(msg)`, a revert, no RPC server) | 1 | no |
| bad input: a ValueError or a missing setting (`SettingsError`) | 2 | yes |
| any other FaiError (say, no devnet is up) | 2 | no |
| the reader of stdout went away (`fai experiences export \\| head`) | 0 | no |
| Ctrl-C | 130 | no |

`guarded` applies the first rows to a command that talks to a node or a chain;
`run_command` (called by `fai_net.cli.entry.main` for every command) applies the rest, so
the usage line shown is the one of the command typed.

Only the standard library and `fai_core.errors` are imported here: the parser is built on
every `fai` invocation, and `fai --help` must stay instant (and must not load numpy).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from fai_core.errors import FaiError

Handler = Callable[[argparse.Namespace], int]
#: Explains a failure the typed errors do not cover (the chain's, for the registry
#: commands) as one line with exit code 1, or returns None to let it through.
Explainer = Callable[[Exception, argparse.Namespace], str | None]


#: The node's `--embedder` names (`fai_core.embedding.EMBEDDER_NAMES`), spelled out here for
#: `node run`, `devnet up` and `devnet demo`: importing them would load numpy for --help
#: (tests/core/test_embedding_backends.py checks that the lists agree).
EMBEDDERS = ("minilm", "minilm-torch", "hashing")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


class Refused(Exception):
    """A user-level refusal already worded for people: exit code 2, no usage line."""


class CliError(FaiError):
    """A refusal the command explains itself; `exit_code` 1 (chain/state) or 2 (input)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def error(message: str) -> None:
    """The one way a command reports a failure: one `fai: error:` line on stderr."""
    print(f"fai: error: {message}", file=sys.stderr)


def explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """(message, exit code) of a failure the command explains without a usage line, or None
    when it is input for `run_command` (or not a failure FAI knows)."""
    control = sys.modules.get("fai_net.api.control")  # not loaded: none of its errors (or trio)
    if control is not None:
        found = _explain_control(exc, args, control)
        if found is not None:
            return found
    if isinstance(exc, Refused):
        return str(exc), 2
    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    return None


def _explain_control(exc: BaseException, args: argparse.Namespace, control):
    """A node's absence or refusal (fai_net.api.control's errors) as (message, exit code)."""
    Code, ControlError, NodeNotRunning = control.Code, control.ControlError, control.NodeNotRunning
    if isinstance(exc, NodeNotRunning):
        if getattr(args, "node", None) not in (None, ""):
            hint = "is the devnet up? `fai devnet status` shows its nodes"
        else:
            where = f"--data-dir {exc.path.removesuffix('/control.sock')}"
            hint = f"start one with `fai node run {where} --domain ...`"
        return f"no node is running at {exc.path} ({hint})", 1
    if isinstance(exc, ControlError):
        if exc.code == Code.BAD_REQUEST:
            return exc.message, 2
        if exc.code == Code.UNKNOWN_ACTION:
            return f"the node does not support this command ({exc.message}); upgrade the node", 1
        return f"{exc.message} ({exc.code})", 1
    return None


def guarded(handler: Handler, also: Explainer | None = None) -> Handler:
    """Wrap a command that talks to a node or a chain: its typed failures become one line
    on stderr and an exit code (`explain`); `also` explains what else its peer can throw.

    Input mistakes (ValueError, SettingsError, other FaiErrors) pass through to
    `run_command`, which adds the command's usage line where it helps.
    """

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            # `fai experiences export | head`: the reader left; say nothing more.
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
            return 0
        except Exception as exc:
            said = explain(exc, args)
            if said is None and also is not None and not isinstance(exc, FaiError | ValueError):
                message = also(exc, args)
                said = None if message is None else (message, 1)
            if said is None:
                raise
            error(said[0])
            return said[1]

    return run


def run_command(
    args: argparse.Namespace, command: argparse.ArgumentParser, top_level: bool = False
) -> int:
    """Run the chosen command's handler; FAI's input errors print one `fai: error:` line,
    then (for bad input) the usage line of `command`, the (sub)command typed."""
    from fai_net.settings import SettingsError

    try:
        return args.handler(args)
    except (ValueError, FaiError) as exc:
        code = getattr(exc, "exit_code", 2)  # CliError says 1 or 2
        error(str(exc))
        input_error = isinstance(exc, ValueError | SettingsError) or hasattr(exc, "exit_code")
        if code == 2 and input_error and not top_level:
            print(command.format_usage().rstrip(), file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130


def group_help(parser: argparse.ArgumentParser, stderr: bool = False) -> Handler:
    """The handler of a command group typed without a subcommand: its help (on stdout, or
    stderr), exit code 2."""

    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr if stderr else None)
        return 2

    return show


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """--json output: one indented JSON document on stdout."""
    print(json.dumps(value, indent=2))


def emit(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    """`data` as JSON with --json, else the lines for people."""
    if args.json:
        print_json(data)
    else:
        print("\n".join(lines))


# --------------------------------------------------------------------------------------------
# argument types and shared flags
# --------------------------------------------------------------------------------------------


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (seconds, a distance)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in low..high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


SOCKET_HELP = "the node's control socket (env FAI_SOCKET)"
DATA_DIR_HELP = "the node's data directory: uses DIR/control.sock (env FAI_DATA_DIR)"
NODE_HELP = "node N of the running devnet (0 or node0): its data directory and socket"
KEY_FILE_HELP = "file holding your Ethereum private key as hex (FAI_KEY_FILE)"

# `parser` below is an ArgumentParser or an argument group (the flag then shows under the
# group's title in --help). metavar=None shows the flag's name, as argparse does by default.


def add_socket_flag(parser, metavar: str | None = "PATH") -> None:
    """`--socket`: a running node's control socket."""
    parser.add_argument("--socket", metavar=metavar, help=SOCKET_HELP)


def add_data_dir_flag(parser, help: str = DATA_DIR_HELP, metavar: str | None = "DIR") -> None:
    """`--data-dir`: a node's data directory (its key, library and control socket)."""
    parser.add_argument("--data-dir", metavar=metavar, help=help)


def add_node_flag(parser, help: str = NODE_HELP, required: bool = False) -> None:
    """`--node N`: a devnet node by number or name (see `fai_net.settings`)."""
    parser.add_argument("--node", required=required, metavar="N", help=help)


def add_timeout_flag(parser, default: float = 60.0, type=positive_float, metavar="S") -> None:
    """`--timeout`: seconds to wait for each call to the node."""
    parser.add_argument(
        "--timeout", type=type, default=default, metavar=metavar, help="seconds per call"
    )


def add_json_flag(parser, help: str = "machine-readable JSON output") -> None:
    """`--json`: print one JSON document (`print_json`, `emit`) instead of text."""
    parser.add_argument("--json", action="store_true", help=help)


def add_rpc_flag(parser, help: str = "Ethereum JSON-RPC URL (FAI_RPC)", metavar="URL") -> None:
    """`--rpc`: the JSON-RPC URL of the registry's chain."""
    parser.add_argument("--rpc", metavar=metavar, help=help)


def add_registry_flag(
    parser, help: str = "DSO registry address (FAI_REGISTRY)", metavar="ADDR"
) -> None:
    """`--registry`: the DSO registry's address."""
    parser.add_argument("--registry", metavar=metavar, help=help)


def add_key_file_flag(parser, help: str = KEY_FILE_HELP) -> None:
    """`--key-file FILE`: an Ethereum private key as hex (`registry.read_private_key`)."""
    parser.add_argument("--key-file", metavar="FILE", help=help)


def add_which_node_flags(parser) -> None:
    """The flags of every command that talks to a running node through its control socket,
    under a "which node" heading: --socket, --data-dir, --node, --timeout."""
    where = parser.add_argument_group("which node")
    add_socket_flag(where)
    add_data_dir_flag(where)
    add_node_flag(where)
    add_timeout_flag(where)


def add_chain_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every registry command takes (settings, output, the loopback guard)."""
    group = parser.add_argument_group("chain and settings (flag > FAI_* env > fai.toml > devnet)")
    add_rpc_flag(group)
    add_registry_flag(group)
    add_key_file_flag(group)
    add_node_flag(group, help="act as devnet node N's operator (its key file and data dir)")
    group.add_argument("--config", metavar="FILE", help="TOML settings file (default ./fai.toml)")
    group.add_argument(
        "--devnet-state", metavar="FILE", help="devnet state file (default devnet/state/...)"
    )
    group.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an RPC URL that is not on 127.0.0.1 (off: this project runs on loopback)",
    )
    add_json_flag(parser, help="print machine-readable JSON")
