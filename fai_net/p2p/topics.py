"""Gossip topic names: one topic per domain tag, versioned with the wire format.

`/fai/exp/1/<domain>`: `exp` says what travels (experience batches), `1` is the wire
version (a v2 batch goes to a new topic, so old nodes never see what they cannot parse),
and the domain tag is the last segment so a receiver can check that a batch's `domain`
field matches the topic it came on.
"""

from __future__ import annotations

from fai_core.experience import domain_problem

TOPIC_PREFIX = "/fai/exp/1/"


def topic_for(domain: str) -> str:
    problem = domain_problem(domain)
    if problem:
        raise ValueError(f"bad domain tag {domain!r}: {problem}")
    return TOPIC_PREFIX + domain


def domain_of(topic: str) -> str | None:
    """The domain of an FAI topic, None for any other topic."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    domain = topic[len(TOPIC_PREFIX) :]
    return None if domain_problem(domain) else domain
