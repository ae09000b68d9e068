"""Gossip topic names: one topic per domain tag and wire version.

`/fai/exp/<version>/<domain>`: `exp` says what travels (experience batches), the version is
the wire format's (a v2 batch goes to a v2 topic, so old nodes never see what they cannot
parse), and the domain tag is the last segment so a receiver can check that a batch's
`domain` and version match the topic it came on. During a transition a node subscribes to
the topics of every version it reads (`READ_VERSIONS`) and publishes on one.
"""

from __future__ import annotations

from fai_core.experience import domain_problem

#: Wire versions a node reads, hence subscribes to; it publishes one of them.
READ_VERSIONS = (1, 2)
TOPIC_PREFIX = "/fai/exp/"


def topic_for(domain: str, version: int) -> str:
    """The topic of `domain`'s batches of wire `version`."""
    problem = domain_problem(domain)
    if problem:
        raise ValueError(f"bad domain tag {domain!r}: {problem}")
    if version not in READ_VERSIONS:
        raise ValueError(f"unknown wire version {version}")
    return f"{TOPIC_PREFIX}{version}/{domain}"


def parse_topic(topic: str) -> tuple[int, str] | None:
    """(wire version, domain) of an FAI topic, None for any other topic."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    version, _, domain = topic[len(TOPIC_PREFIX) :].partition("/")
    if version not in {str(v) for v in READ_VERSIONS} or domain_problem(domain):
        return None
    return int(version), domain


def domain_of(topic: str) -> str | None:
    """The domain of an FAI topic, None for any other topic."""
    parsed = parse_topic(topic)
    return None if parsed is None else parsed[1]
