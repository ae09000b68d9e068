"""The control socket's actions: one method per action, the table built once.

`serve_control` (fai_net/api/control.py) calls `ControlActions.handle(action, args)` for
every request; the table from action name to method is made in `__init__`, not per request.
Each action checks its arguments and answers `bad_request` (`ControlError`) for bad ones;
the four `dso_network` actions of the paper (status, broadcast, receive, peers) share the
argument checks of `validate_dso_args`.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

from fai_core import dagcbor
from fai_core.errors import FaiError
from fai_core.experience import domain_problem
from fai_core.wire import envelope_version
from fai_net.api.control import ControlError, UnknownAction, validate_dso_args
from fai_net.api.recall import RecallQuery
from fai_net.node.broadcast import Broadcaster
from fai_net.node.peer_keys import peer_id_text
from fai_net.node.repair_sync import RepairSync
from fai_net.node.resources import NodeResources
from fai_net.node.rounds import MergeRounds
from fai_net.node.state import NodeState
from fai_net.node.status import NodeStatus
from fai_net.node.subscriptions import Subscriptions
from fai_net.p2p.topics import topic_for

Action = Callable[[dict], Awaitable[dict]]


class ControlActions:
    def __init__(
        self,
        res: NodeResources,
        state: NodeState,
        *,
        status: NodeStatus,
        broadcaster: Broadcaster,
        subscriptions: Subscriptions,
        repair: RepairSync,
        rounds: MergeRounds,
    ) -> None:
        self.res, self.state, self.node_status = res, state, status
        self.broadcaster, self.subscriptions = broadcaster, subscriptions
        self.repair, self.rounds = repair, rounds
        self.table: dict[str, Action] = {
            "status": self.status,
            "broadcast": self.broadcast,
            "receive": self.receive,
            "peers": self.peers,
            "add": self.add,
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "search": self.search,
            "recall": self.recall,
            "feedback": self.feedback,
            "info": self.info,
            "stop": self.stop,
            "batches": self.batches,
            "export": self.export,
            "publish_raw": self.publish_raw,
        }

    async def handle(self, action: str, args: dict) -> dict:
        handler = self.table.get(action)
        if handler is None:
            raise UnknownAction(action)
        return await handler(args)

    # -- the paper's dso_network actions ----------------------------------------------------

    async def status(self, args: dict) -> dict:
        validate_dso_args("status", args)
        return await self.node_status.status()

    async def peers(self, args: dict) -> dict:
        validate_dso_args("peers", args)
        return {"peers": self.node_status.peer_table()}

    async def broadcast(self, args: dict) -> dict:
        args = validate_dso_args("broadcast", args)
        if args["domain"] not in self.state.domains:
            raise ControlError("bad_request", f"not subscribed to {args['domain']}")
        return await self.broadcaster.broadcast(args["domain"])

    async def receive(self, args: dict) -> dict:
        args = validate_dso_args("receive", args)
        return await self.pull(args["domain"], args["limit"])

    async def pull(self, domain: str, limit: int) -> dict:
        """Pull the domain from every peer now, merge, and show the newest `limit` merged."""
        library, limiter = self.res.library, self.state.lib_limiter
        before = await trio.to_thread.run_sync(library.count, domain, limiter=limiter)
        await self.repair.sync_all([domain])
        report = await self.rounds.run_round()
        after = await trio.to_thread.run_sync(library.count, domain, limiter=limiter)
        # The newest entries of the library, local or merged, whenever they arrived: an
        # in-memory list of this run's merges would answer [] after a restart.
        newest = await trio.to_thread.run_sync(library.newest, domain, limit)
        return {
            "experiences_received": report.by_domain.get(domain, 0),
            "library_delta": after - before,
            "experiences": [_received_json(e) for e in newest],
        }

    # -- the node's own actions ---------------------------------------------------------------

    async def add(self, args: dict) -> dict:
        items = args.get("experiences")
        if not isinstance(items, list) or not items or len(items) > 1000:
            raise ControlError("bad_request", "experiences: a list of 1..1000 items")
        try:
            return await self.broadcaster.add_experiences(items)
        except ControlError:
            raise
        except (KeyError, TypeError, ValueError, FaiError) as exc:
            raise ControlError("bad_request", f"bad experience: {exc}") from None

    async def subscribe(self, args: dict) -> dict:
        try:
            return {"subscribed": await self.subscriptions.subscribe(str(args.get("domain")))}
        except ValueError as exc:
            raise ControlError("bad_request", str(exc)) from None

    async def unsubscribe(self, args: dict) -> dict:
        return {"unsubscribed": await self.subscriptions.unsubscribe(str(args.get("domain")))}

    async def search(self, args: dict) -> dict:
        query, k, domain = args.get("query"), args.get("k", 10), args.get("domain")
        if not isinstance(query, str) or not isinstance(k, int) or not 1 <= k <= 100:
            raise ControlError("bad_request", "search needs query: str and k in 1..100")
        if domain is not None and domain_problem(domain):
            raise ControlError("bad_request", domain_problem(domain))
        hits = await trio.to_thread.run_sync(
            lambda: self.res.library.search(query, args.get("domain"), k),
            limiter=self.state.lib_limiter,
        )
        return {"hits": [_hit_json(h) for h in hits]}

    async def recall(self, args: dict) -> dict:
        query = RecallQuery.from_args(args, self.state.domains)
        domains = list(self.state.domains)
        return await trio.to_thread.run_sync(self.res.recaller.recall, query, domains)

    async def feedback(self, args: dict) -> dict:
        return await trio.to_thread.run_sync(self.res.recaller.feedback, args)

    async def info(self, args: dict) -> dict:
        res = self.res
        return {"node_id": str(res.peer_id), "addrs": res.addrs, "domains": self.state.domains}

    async def export(self, args: dict) -> dict:
        domain = args.get("domain")
        offset, limit = args.get("offset", 0), args.get("limit", 500)
        if domain is not None and domain_problem(domain):
            raise ControlError("bad_request", domain_problem(domain))
        for name, value, top in (("offset", offset, 1 << 62), ("limit", limit, 1000)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ControlError("bad_request", f"{name} must be an integer in 0..{top}")

        def page() -> list[dict]:
            rows = itertools.islice(self.res.library.entries(domain), offset, offset + limit)
            return [_entry_json(e) for e in rows]

        items = await trio.to_thread.run_sync(page, limiter=self.state.lib_limiter)
        return {"items": items, "next": offset + len(items) if len(items) == limit else None}

    async def publish_raw(self, args: dict) -> dict:
        # Devnet demonstrations only (--allow-raw-publish): publishes bytes unchecked,
        # e.g. a conflicting batch to show equivocation being caught and slashed.
        if not self.res.config.allow_raw_publish:
            raise ControlError("forbidden", "start the node with --allow-raw-publish")
        try:
            data = bytes.fromhex(str(args.get("envelope_hex")))
            domain = str(args.get("domain"))
            topic = topic_for(domain, envelope_version(data) or self.res.config.wire_version)
        except ValueError as exc:
            raise ControlError("bad_request", str(exc)) from None
        await self.broadcaster.publish(topic, data)
        return {"published": len(data)}

    async def batches(self, args: dict) -> dict:
        domain = args.get("domain")
        cids = self.res.store.cids(None if domain is None else str(domain))
        return {"count": len(cids), "cids": sorted(dagcbor.cid_text(c) for c in cids)}

    async def stop(self, args: dict) -> dict:
        self.state.stopped.set()
        return {"stopping": True}


def _entry_json(entry) -> dict:
    e = entry.experience
    return {
        "id": e.id.hex(),
        "text": e.text,
        "domain": e.domain,
        "quality": e.quality,
        "iteration": e.iteration,
        "origin": entry.origin,
        "source": e.source.hex(),
        "received_from": entry.received_from.hex() if entry.received_from else None,
        "created_ms": e.created_ms,
    }


def _hit_json(hit) -> dict:
    e = hit.entry
    return {
        "text": e.experience.text,
        "domain": e.experience.domain,
        "quality": round(e.experience.quality, 4),
        "distance": round(hit.distance, 4),
        "origin": e.origin,
        "source": e.experience.source.hex(),
    }


def _received_json(entry) -> dict:
    e = entry.experience
    return {
        "id": e.id.hex(),
        "text": e.text,
        "domain": e.domain,
        "quality": round(e.quality, 4),
        "source": e.source.hex(),
        "source_node": peer_id_text(e.source),
        "origin": entry.origin,
        "created_ms": int(e.created_ms),
    }
