"""A node's Ed25519 identity and the signatures it makes.

Every signature FAI makes with a node key carries a context prefix. The same Ed25519 key
is also the node's libp2p identity, which signs gossipsub messages under libp2p's own
prefix; distinct prefixes mean a signature made for one purpose can never be replayed as
another.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32


class NodeKey:
    """An Ed25519 signing key. Kept opaque so the seed is never logged by accident."""

    __slots__ = ("_signing",)

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._signing = nacl.signing.SigningKey(seed)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Signature over context || message (64 bytes)."""
        return self._signing.sign(context + message).signature

    def __repr__(self) -> str:
        return f"NodeKey(public={self.public_key.hex()[:16]}...)"


def verify(public_key: bytes, context: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is `public_key`'s signature over context || message."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(context + message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
