"""The libp2p peer id of an Ed25519 public key, without importing libp2p.

A node's peer id is the base58btc identity multihash of the protobuf `PublicKey {Type:
Ed25519, Data: key}`: the same text as libp2p's `ID.from_pubkey` (tests check it). The CLI
shows every identity this way (`fai registry peers`, `fai node peers`, an experience's
source), and importing libp2p would add ~0.7 s to each of those commands.
"""

from __future__ import annotations

#: identity multihash (0x00, length 36) of the protobuf header: Type = Ed25519, Data = 32 bytes.
_ED25519_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"


def peer_id_of(peer_key: bytes) -> str:
    """The peer id ("12D3KooW...") of a 32-byte Ed25519 public key; ValueError otherwise."""
    import base58

    if len(peer_key) != 32:
        raise ValueError("peer_key must be a 32-byte Ed25519 public key")
    return base58.b58encode(_ED25519_PEER_ID_PREFIX + bytes(peer_key)).decode("ascii")


def peer_id_of_hex(key_hex: str | None) -> str | None:
    """`peer_id_of` for a hex key as the node's JSON carries it; None if it is not one."""
    try:
        key = bytes.fromhex(key_hex or "")
    except ValueError:
        return None
    return peer_id_of(key) if len(key) == 32 else None
