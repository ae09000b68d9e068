"""The node's one Ed25519 key: its libp2p peer id and its batch-signing key are the same key.

Using one key means a batch's `sender` field *is* the peer id of the node that published
it, so a receiver can hold the peer that sends garbage to account without a second lookup,
and the registry binds exactly one key per node. The 32-byte seed lives in
`<data_dir>/node.key` (mode 0600); losing it means a new identity, so it is written once,
atomically, and never rewritten.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from fai_core.errors import FaiError
from fai_core.identity import NodeKey

KEY_FILE = "node.key"
SEED_LEN = 32


class IdentityError(FaiError):
    """The key file exists but cannot be used (wrong size, wrong permissions)."""


@dataclass(frozen=True)
class NodeIdentity:
    key: NodeKey
    key_pair: KeyPair

    @property
    def peer_id(self) -> ID:
        return ID.from_pubkey(self.key_pair.public_key)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        if len(seed) != SEED_LEN:
            raise IdentityError(f"an identity seed is {SEED_LEN} bytes, got {len(seed)}")
        identity = cls(NodeKey(seed), create_new_key_pair(seed))
        if identity.key_pair.public_key.to_bytes() != identity.key.public_key:
            raise IdentityError("libp2p and fai derive different public keys from one seed")
        return identity


def load_or_create(data_dir: str | os.PathLike[str]) -> NodeIdentity:
    """The identity stored in `data_dir`, created on first use."""
    path = Path(data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        seed = secrets.token_bytes(SEED_LEN)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created the key meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        raise IdentityError(f"{path} is readable by others; chmod 600 it")
    seed = path.read_bytes()
    return NodeIdentity.from_seed(seed)


def public_key_of(peer_id: ID) -> bytes | None:
    """The Ed25519 key inside a peer id (identity multihash), or None for other key types."""
    try:
        key = peer_id.extract_public_key()
    except Exception:  # any undecodable id is simply not an Ed25519 peer
        return None
    if key is None or key.get_type().name != "Ed25519":
        return None
    raw = key.to_bytes()
    return raw if len(raw) == 32 else None
