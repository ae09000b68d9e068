"""The node's domain subscriptions: one gossip topic per domain and wire version read
(fai_net/p2p/topics.py), kept across restarts.

Subscribing installs the receive validator on the topic and starts a drain task: the
validator has already decided on and stored each message; the drain only empties
py-libp2p's 32-slot subscription channel, which would otherwise drop messages when full.
The set is saved to `subscriptions.json`, so domains subscribed at run time come back at the
next start, after the configured ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import trio

from fai_core.experience import domain_problem
from fai_core.reputation import atomic_write_json
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState
from fai_net.p2p.topics import READ_VERSIONS, topic_for

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")


class Subscriptions:
    def __init__(self, res: NodeResources, state: NodeState, validator: Callable) -> None:
        self.res, self.state, self.validator = res, state, validator
        #: One drain per topic: every version's topic of each subscribed domain.
        self._scopes: dict[str, list[trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to the configured and saved domains; the drains run in here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for domain in dict.fromkeys([*self.res.config.domains, *self.saved_domains()]):
                await self.subscribe(domain)
            task_status.started()
            await trio.sleep_forever()

    async def subscribe(self, domain: str) -> bool:
        if domain in self._scopes:
            return False
        res = self.res
        res.gate.domains.add(domain)
        scopes = self._scopes[domain] = []
        self.state.domains = sorted(self._scopes)
        for version in READ_VERSIONS:  # every version we read, whichever we publish
            topic = topic_for(domain, version)
            res.pubsub.set_topic_validator(topic, self.validator, False)
            subscription = await res.pubsub.subscribe(topic)
            scopes.append(trio.CancelScope())
            self._nursery.start_soon(_drain, subscription, scopes[-1])
        # Repair cursors are kept per domain set, so the new set starts from the beginning
        # of every peer's inventory and fetches the domain's history.
        self.state.repair_wakeup.set()
        self._save_domains()
        if res.config.ready_file.exists():
            res.write_ready_file(self.state.domains)
        return True

    async def unsubscribe(self, domain: str) -> bool:
        scopes = self._scopes.pop(domain, None)
        if scopes is None:
            return False
        for scope in scopes:
            scope.cancel()
        res = self.res
        res.gate.domains.discard(domain)
        for version in READ_VERSIONS:
            topic = topic_for(domain, version)
            await res.pubsub.unsubscribe(topic)
            res.pubsub.remove_topic_validator(topic)
        self.state.domains = sorted(self._scopes)
        self._save_domains()
        res.write_ready_file(self.state.domains)
        return True

    @property
    def domains_file(self) -> Path:
        return self.res.config.data_dir / "subscriptions.json"

    def saved_domains(self) -> list[str]:
        """Domains subscribed at run time by an earlier run (the flags' come first).

        A file that does not parse, or holds bad tags, is ignored with a warning: the
        node still starts with its configured domains."""
        try:
            saved = json.loads(self.domains_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.domains_file, exc)
            return []
        domains = saved.get("domains") if isinstance(saved, dict) else None
        if not isinstance(domains, list):
            return []
        return [d for d in domains if isinstance(d, str) and not domain_problem(d)]

    def _save_domains(self) -> None:
        atomic_write_json(self.domains_file, {"domains": self.state.domains})


async def _drain(subscription, scope: trio.CancelScope) -> None:
    with scope:
        while True:
            await subscription.get()
