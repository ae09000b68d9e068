"""From an Ed25519 public key (a batch's sender, an advertisement's node) to the libp2p
peer id that `peers` lists and discovery dials. Separate because recall, discovery,
membership and the control replies all need it, and none of them owns it."""

from __future__ import annotations

from libp2p.peer.id import ID


def ed25519_public(key: bytes):
    from libp2p.crypto.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_bytes(key)


def peer_id_of(key: bytes) -> ID:
    """Raises for a key that is not a valid Ed25519 point."""
    return ID.from_pubkey(ed25519_public(key))


def peer_id_text(key: bytes) -> str | None:
    """The libp2p peer id of an experience's source key (what `peers` lists)."""
    try:
        return str(peer_id_of(key))
    except Exception:  # a key that is not a valid Ed25519 point has no peer id
        return None
