"""The MCP server that gives any MCP-capable agent harness the FAI network.

Tools:

- ``recall(task, domain?, k?, max_distance?)``: the experiences most relevant to a task,
  ranked by relevance and trust, with ids to report on;
- ``add(text, domain, quality?)``: record a lesson; the node publishes it to its peers;
- ``feedback(id, outcome)``: report whether a recalled experience helped;
- ``dso_network(action, ...)``: the paper's four actions (status, broadcast, receive,
  peers; section 7.2).

For hosts that put context into a session before the model runs, the prompt
``fai_context(task, domain?, k?)`` and the resource template
``fai://context/{task}{?domain}`` return the top experiences for a task as text.

It is a thin stdio bridge: the agent harness starts it as a subprocess, and each call
becomes one request on the node's control socket (fai_net.api.control). It holds no state of
its own, so it can start before the node and keeps working across node restarts; when the
node is down the agent gets an error result it can read, not a dead tool server. The node
checks every value (one set of rules and messages for the CLI, the Python client and
MCP); the server refuses arguments a tool does not declare and values of the wrong type.

Run it as ``fai mcp --data-dir DIR`` (or ``--socket PATH``; else ``FAI_SOCKET``,
``FAI_DATA_DIR`` or a fai.toml, like every ``fai`` command), or as
``python -m fai_net.api.mcp_server`` with the same flags.

mcp 2.x note: the SDK's FastMCP is called MCPServer there (mcp.server.mcpserver); the old
import path mcp.server.fastmcp raises ModuleNotFoundError on purpose.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations
from mcp_types.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from fai_net.api.client import OUTCOMES, FaiClient, resolve_socket_path
from fai_net.api.control import (
    DEFAULT_RECEIVE_LIMIT,
    MAX_RECEIVE_LIMIT,
    Code,
    ControlClient,
    ControlError,
    DsoAction,
    NodeNotRunning,
    validate_dso_args,
)
from fai_net.api.recall import MAX_K, MAX_TASK_CHARS  # the node's limits, which the schemas show

TOOL_NAME = "dso_network"
#: The tools this server lists, in order.
TOOL_NAMES = (TOOL_NAME, "recall", "add", "feedback")
PROMPT_NAME = "fai_context"
CONTEXT_TEMPLATE = "fai://context/{task}{?domain}"
#: What the prompt and the resource say when no experience is relevant to the task.
NO_LESSONS = "No lessons from other agents are known for this task yet (FAI recall found none)."

INSTRUCTIONS = (
    "This server connects you to the FAI experience network: a fleet of agents that share "
    "short, verified lessons (experiences) about what worked, grouped by domain. Call "
    "recall with a short description of your task before you start (and when you hit a new "
    "kind of problem); after using a recalled lesson, report with feedback whether it "
    "helped; when you solve something that took several attempts, record the general "
    "lesson with add. The dso_network tool checks the node (status, peers) and publishes "
    "or pulls a domain's experiences now (broadcast, receive)."
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
    """An MCPServer whose tools, prompt and resource template answer from the node at
    `socket_path`."""
    client = ControlClient(socket_path, timeout=timeout)
    fai = FaiClient(socket_path, timeout=timeout)
    tools = [
        _dso_network_tool(client),
        _recall_tool(fai),
        _add_tool(fai),
        _feedback_tool(fai),
    ]
    server = MCPServer(
        name="fai",
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        tools=[_refuse_unknown_arguments(tool) for tool in tools],
    )
    server.add_prompt(_strict_prompt(_context_prompt(fai)))
    _register_context_resource(server, fai)
    return server


async def _forward(what: str, call: Callable[[], Any]) -> Any:
    """Run one client call in a worker thread; the node's refusals become tool errors."""
    try:
        return await anyio.to_thread.run_sync(call)
    except NodeNotRunning as exc:
        raise ToolError(str(exc)) from exc
    except ControlError as exc:
        raise ToolError(f"{what} failed ({exc.code}): {exc.message}") from exc


def _recall_tool(fai: FaiClient) -> Tool:
    """The recall tool: the experiences most relevant to a task, from `fai`."""

    async def recall(
        task: Annotated[
            str,
            Field(
                strict=True,
                description="What you are about to do, or the problem in front of you, in a "
                "sentence or two (e.g. 'the integration tests time out against the test "
                f"database in CI'). At most {MAX_TASK_CHARS} characters.",
                json_schema_extra={"minLength": 1, "maxLength": MAX_TASK_CHARS},
            ),
        ],
        domain: Annotated[
            str | None,
            Field(
                strict=True,
                description="Only this domain (one the node follows, e.g. 'coding'); omit "
                "to search every domain.",
            ),
        ] = None,
        k: Annotated[
            int,
            Field(
                strict=True,
                description=f"At most this many experiences (1..{MAX_K}, default 5).",
                json_schema_extra={"minimum": 1, "maximum": MAX_K},
            ),
        ] = 5,
        max_distance: Annotated[
            float | None,
            Field(
                strict=True,
                description="Relevance cutoff as a cosine distance, 0 < d <= 2 (default "
                "0.65). Raise it (e.g. 0.8) only if you need looser matches.",
                json_schema_extra={"exclusiveMinimum": 0, "maximum": 2},
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Ask which lessons other agents learnt that are relevant to your task.

        Call it before you start a task, and again when you hit a new kind of problem
        (an error, a failing test, a tool that misbehaves), with a short description of
        it. Returns {experiences, prompt, max_distance, withheld}. experiences is best
        first (at most k), each with:
        - id: pass it to feedback after you used (or tried) the lesson;
        - text: the lesson, one sentence;
        - relevance: similarity to your task, 0..1 (only close matches are returned);
        - utility: how much it helped this node's agents before (0.5: never reported;
          higher helped, lower hurt);
        - score: relevance x trust, the ranking; source_node: the peer that published it
          (origin 'local' if this node added it); sources: how many nodes published it;
        - domain, quality, calibrated_quality, source_standing, distance, age_s.
        prompt is the same lessons as a short text block; withheld counts close matches
        not offered because every peer that sent them was refused since. An empty list
        means nothing relevant is known: carry on without. Lessons can be wrong or not
        fit your case: check them against what you see before relying on one.
        """
        call = functools.partial(fai.recall, task, domain, k, max_distance)
        return await _forward("recall", call)

    return _tool(recall, title="Recall lessons for a task", read_only=True, idempotent=True)


def _add_tool(fai: FaiClient) -> Tool:
    """The add tool: records a lesson on the node behind `fai`."""

    async def add(
        text: Annotated[
            str,
            Field(
                strict=True,
                description="The lesson: one general, actionable sentence of at most 32 "
                "words, single spaces, e.g. 'run the failing test alone with -x before "
                "editing code'. No secrets, credentials, personal data or local paths.",
            ),
        ],
        domain: Annotated[
            str,
            Field(
                strict=True,
                description="Domain tag the node follows, lowercase letters, digits and "
                "'-' (e.g. 'coding', 'data-analysis').",
            ),
        ],
        quality: Annotated[
            float | None,
            Field(
                strict=True,
                description="How sure you are that the lesson is right and useful, "
                "0 < q < 1 (default 0.5).",
                json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 1},
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Record a lesson you learnt, so that you and other agents can recall it later.

        Call it after you solved something that took a wrong turn or several attempts,
        with the general rule that would have saved them (not a log of what you did).
        The node stores it and publishes it to the peers that follow the domain. Returns
        {added, inserted, ids}: inserted is 0 when the node already had this exact lesson
        (adding it again is harmless); ids holds the lesson's id. An error result names
        the rule the text broke (too long, not one line) or a domain the node does not
        follow.
        """
        call = functools.partial(fai.add, text, domain, quality)
        return await _forward("add", call)

    return _tool(add, title="Record a lesson", idempotent=True, open_world=True)


def _feedback_tool(fai: FaiClient) -> Tool:
    """The feedback tool: reports whether a recalled lesson helped, through `fai`."""

    async def feedback(
        id: Annotated[
            str,
            Field(strict=True, description="The experience id, as recall returned it."),
        ],
        outcome: Annotated[
            # Types only: the node checks the values, in the words the CLI uses too.
            Annotated[str, Field(strict=True, json_schema_extra={"enum": list(OUTCOMES)})]
            | Annotated[float, Field(strict=True, json_schema_extra={"minimum": -1, "maximum": 1})],
            Field(
                description="'helped', 'no_effect' or 'hurt', or a number in [-1, 1] "
                "(1 = helped, -1 = hurt)."
            ),
        ],
    ) -> dict[str, Any]:
        """Report whether a lesson from recall helped, after you used or tried it.

        Honest reports make later recalls better for every agent on this node: lessons
        that helped rise, lessons that hurt sink, and a source whose lessons keep hurting
        is muted (its new lessons are no longer accepted). Report 'no_effect' if it did
        not matter. Returns {id, reward, utility, reports, source, source_standing,
        source_muted}: utility is the lesson's new standing (0.5 neutral).
        """
        call = functools.partial(fai.feedback, id, outcome)
        return await _forward("feedback", call)

    return _tool(feedback, title="Report whether a lesson helped")


def _dso_network_tool(client: ControlClient) -> Tool:
    """The dso_network tool (the paper's four actions), sent on `client`."""

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

    return _tool(dso_network, name=TOOL_NAME, title="FAI experience network", open_world=True)


async def _context_text(fai: FaiClient, task: str, domain: str | None, k: int) -> str:
    """The top experiences for `task` as text for a model, or NO_LESSONS."""
    try:
        found = await anyio.to_thread.run_sync(functools.partial(fai.recall, task, domain, k))
    except NodeNotRunning as exc:
        raise _Unavailable(str(exc)) from exc
    except ControlError as exc:
        message = f"recall failed ({exc.code}): {exc.message}"
        if exc.code == Code.BAD_REQUEST:
            raise _Refused(message) from exc
        raise _Unavailable(message) from exc
    return _context_block(found)


def _context_prompt(fai: FaiClient) -> Prompt:
    """The fai_context prompt: the top experiences for a task from `fai`, as text."""

    async def fai_context(
        task: Annotated[str, Field(description="The task or problem, in a sentence or two.")],
        domain: Annotated[
            str | None, Field(description="Only this domain (e.g. 'coding'); default: all.")
        ] = None,
        k: Annotated[
            str | None, Field(description=f"At most this many lessons, 1..{MAX_K} (default 5).")
        ] = None,
    ) -> str:
        """Lessons other agents learnt that are relevant to a task, as text to put into
        the model's context at the start of a session: the recall tool's result as prose,
        with the ids to report on with the feedback tool."""
        count = 5
        try:
            if k is not None:
                try:
                    count = int(k)
                except ValueError:
                    raise _Refused(f"k must be an integer in 1..{MAX_K}, got {k!r}") from None
            return await _context_text(fai, task, domain, count)
        except _Refused as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from exc
        except _Unavailable as exc:
            raise MCPError(INTERNAL_ERROR, str(exc)) from exc

    return Prompt.from_function(
        fai_context,
        name=PROMPT_NAME,
        title="FAI lessons for a task",
        description=inspect.cleandoc(fai_context.__doc__ or ""),
    )


def _register_context_resource(server: MCPServer, fai: FaiClient) -> None:
    """Add the fai://context/{task}{?domain} resource template to `server`, read from `fai`:
    the same text as the fai_context prompt, for hosts that read resources."""

    @server.resource(
        CONTEXT_TEMPLATE,
        name="fai_context",
        title="FAI lessons for a task",
        description="The top lessons for the task in the URI (percent-encoded), as text; "
        "?domain= limits them to one domain. The same text as the fai_context prompt.",
        mime_type="text/plain",
        # The task is prose, not a path: '/' or '..' in it are not an attack on anything.
        security=ResourceSecurity(reject_path_traversal=False, reject_absolute_paths=False),
    )
    async def context_resource(task: str, domain: str | None = None) -> str:
        try:
            return await _context_text(fai, task, domain, 5)
        except (_Refused, _Unavailable) as exc:
            raise ResourceError(str(exc)) from exc


class _Refused(Exception):
    """The node refused the arguments of a prompt or resource read."""


class _Unavailable(Exception):
    """The node is not running, or failed, during a prompt or resource read."""


def _tool(
    fn: Callable[..., Any],
    *,
    title: str,
    name: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
) -> Tool:
    return Tool.from_function(
        fn,
        name=name or fn.__name__,
        # Python 3.11 keeps a docstring's indentation; agents should not see it.
        description=inspect.cleandoc(fn.__doc__ or ""),
        annotations=ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=False,
            idempotent_hint=idempotent,
            open_world_hint=open_world,
        ),
        structured_output=True,
    )


def _context_block(found: dict[str, Any]) -> str:
    """recall's prompt block, plus the ids in the same order for the feedback tool."""
    items = found.get("experiences") or []
    if not items or not found.get("prompt"):
        return NO_LESSONS
    ids = "\n".join(f"{n}. {item['id']}" for n, item in enumerate(items, start=1))
    return (
        f"{found['prompt']}\n\nAfter using one of them, report whether it helped with the "
        f"feedback tool of the fai MCP server; their ids, in the same order:\n{ids}"
    )


def _strict_prompt(prompt: Prompt) -> Prompt:
    """`prompt`, changed so that an argument it does not declare is an error naming it.

    The SDK would pass the stray argument on and answer "Error rendering prompt"; this
    says which argument and what the prompt accepts, like _refuse_unknown_arguments.
    """
    accepted = [arg.name for arg in prompt.arguments or []]
    inner = prompt.fn

    async def checked(**arguments: Any) -> Any:
        unknown = sorted(str(key) for key in arguments if key not in accepted)
        if unknown:
            raise MCPError(
                INVALID_PARAMS,
                f"{prompt.name} does not take {', '.join(unknown)}; "
                f"it accepts {', '.join(accepted)}",
            )
        return await inner(**arguments)

    return prompt.model_copy(update={"fn": checked})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fai mcp",
        description="Serve FAI over MCP (stdio) for a running node: the recall, add, "
        "feedback and dso_network tools, the fai_context prompt and resource template.",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help="the node's control socket (env FAI_SOCKET)"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the node's data directory: uses DIR/control.sock (env FAI_DATA_DIR)",
    )
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
    from fai_core.errors import FaiError

    try:
        # Flag, then FAI_SOCKET / FAI_DATA_DIR, then fai.toml, like every `fai` command.
        socket_path = resolve_socket_path(args.socket, args.data_dir)
        server = build_server(socket_path, timeout=args.timeout)
    except (ValueError, FaiError) as exc:  # nothing names a node; a path too long for AF_UNIX
        build_parser().error(str(exc))
    server.run("stdio")


if __name__ == "__main__":
    main()
