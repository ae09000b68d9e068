"""The MCP server that gives any MCP-capable agent harness the `dso_network` tool.

It is a thin stdio bridge: the agent harness starts it as a subprocess, and each tool call
becomes one request on the node's control socket (fai_net.control). It holds no state of
its own, so it can start before the node and keeps working across node restarts; when the
node is down the agent gets an error result it can read, not a dead tool server.

Run it as ``python -m fai_net.mcp_server --socket <data_dir>/control.sock``.

mcp 2.x note: the SDK's FastMCP is called MCPServer there (mcp.server.mcpserver); the old
import path mcp.server.fastmcp raises ModuleNotFoundError on purpose.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Sequence
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from fai_net.control import (
    DEFAULT_RECEIVE_LIMIT,
    MAX_RECEIVE_LIMIT,
    ControlClient,
    ControlError,
    DsoAction,
    NodeNotRunning,
    validate_dso_args,
)

TOOL_NAME = "dso_network"

INSTRUCTIONS = (
    "This server connects you to the FAI experience network: a fleet of agents that share "
    "short, verified lessons (experiences) about what worked, grouped by domain. Use the "
    "dso_network tool to share what you learned after finishing a hard task and to pull in "
    "the fleet's experiences before starting work in a domain."
)


def _tool_args(action: str, domain: str | None, limit: int) -> dict[str, Any]:
    """The control arguments an MCP call stands for.

    MCP gives every parameter a value, so only the ones the agent meant are forwarded:
    `domain` when set, `limit` for receive or when it differs from the default. A stray
    argument then reaches validate_dso_args, which tells the agent it does not belong.
    """
    args: dict[str, Any] = {}
    if domain is not None:
        args["domain"] = domain
    if action == "receive" or limit != DEFAULT_RECEIVE_LIMIT:
        args["limit"] = limit
    return args


def _refuse_unknown_arguments(tool: Tool) -> Tool:
    """`tool`, changed so that an argument it does not declare is an error, not ignored.

    The SDK's generated argument model ignores extra fields, so a misspelt or invented
    argument (`{"action": "status", "bogus": 1}`) would silently do something other than
    the agent meant. A subclass of that model forbids extras, which also puts
    ``additionalProperties: false`` in the advertised inputSchema, and its validator names
    the strays and the accepted arguments, so the agent can fix the call from the error
    text alone. Raised as a validation error, it reaches the agent as an error result like
    any other bad argument (pydantic's wording around it, the call's arguments included).
    """
    base = tool.fn_metadata.arg_model
    accepted = tuple(field.alias or name for name, field in base.model_fields.items())

    class StrictArguments(base):
        model_config = ConfigDict(extra="forbid", title=base.__name__)

        @model_validator(mode="before")
        @classmethod
        def refuse_unknown(cls, data: Any) -> Any:
            if isinstance(data, dict):
                unknown = sorted(str(key) for key in data if key not in accepted)
                if unknown:
                    raise PydanticCustomError(
                        "unknown_argument",
                        "{tool} does not take {unknown}; it accepts {accepted}",
                        {
                            "tool": tool.name,
                            "unknown": ", ".join(unknown),
                            "accepted": ", ".join(accepted),
                        },
                    )
            return data

    metadata = tool.fn_metadata.model_copy(update={"arg_model": StrictArguments})
    schema = StrictArguments.model_json_schema(by_alias=True)
    return tool.model_copy(update={"fn_metadata": metadata, "parameters": schema})


def build_server(socket_path: str, *, timeout: float = 30.0) -> MCPServer:
    """An MCPServer whose dso_network tool forwards to the node at `socket_path`."""
    client = ControlClient(socket_path, timeout=timeout)

    async def dso_network(
        action: Annotated[
            DsoAction,
            Field(description="status | broadcast | receive | peers (see the tool description)"),
        ],
        domain: Annotated[
            str | None,
            Field(
                description="Domain tag, lowercase letters, digits and '-' (e.g. 'coding', "
                "'data-analysis'). Required for broadcast and receive; omit otherwise."
            ),
        ] = None,
        limit: Annotated[
            int,
            Field(
                description=f"receive only: at most this many experiences "
                f"(1..{MAX_RECEIVE_LIMIT}, default {DEFAULT_RECEIVE_LIMIT})."
            ),
        ] = DEFAULT_RECEIVE_LIMIT,
    ) -> dict[str, Any]:
        """Share experiences with, and learn from, the fleet of FAI agents.

        Actions:
        - status: check the node before relying on it. Returns {peers, library_size,
          last_sync, bytes_sent, bytes_received}. peers == 0 means nothing you broadcast
          will reach anyone yet.
        - broadcast (domain): right after you finish a task that was hard or took several
          attempts, publish the experiences your node distilled in that domain so other
          agents do not repeat your mistakes. Returns {experiences_sent, peers_reached,
          batch_id}. experiences_sent == 0 means there was nothing new to share.
        - receive (domain, limit): before you start a task or project in a domain, pull
          the fleet's experiences for it into your local library. Returns
          {experiences_received, library_delta}; library_delta counts experiences that are
          new or better than what you had.
        - peers: list the connected peers as {peers: [{node_id, latency_ms, reputation,
          last_seen}]}, e.g. to see why a broadcast reached few of them.

        An error result means the request was not carried out: read its text (a bad
        domain, or the local FAI node not running) and fix the call or tell the user.
        """
        args = _tool_args(action, domain, limit)
        try:
            args = validate_dso_args(action, args)
            call = functools.partial(client.call, action, **args)
            return await anyio.to_thread.run_sync(call)
        except NodeNotRunning as exc:
            raise ToolError(str(exc)) from exc
        except ControlError as exc:
            raise ToolError(f"{action} failed ({exc.code}): {exc.message}") from exc

    tool = Tool.from_function(
        dso_network,
        name=TOOL_NAME,
        # Python 3.11 keeps a docstring's indentation; agents should not see it.
        description=inspect.cleandoc(dso_network.__doc__ or ""),
        annotations=ToolAnnotations(
            title="FAI experience network",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
        structured_output=True,
    )
    return MCPServer(
        name="fai",
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        tools=[_refuse_unknown_arguments(tool)],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fai mcp",
        description="Serve the dso_network tool over MCP (stdio) for a running FAI node.",
    )
    parser.add_argument("--socket", required=True, metavar="PATH", help="the node's control socket")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the node on each call (default 30)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on stdin/stdout until the client closes the connection."""
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        build_parser().error("--timeout must be positive")
    try:
        server = build_server(args.socket, timeout=args.timeout)
    except ValueError as exc:  # a socket path too long for AF_UNIX
        build_parser().error(str(exc))
    server.run("stdio")


if __name__ == "__main__":
    main()
