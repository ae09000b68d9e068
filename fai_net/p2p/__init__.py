"""Peer-to-peer plumbing: the libp2p host and gossipsub router, the topic names, and
repair over libp2p streams.
"""
