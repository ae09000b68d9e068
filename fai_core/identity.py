"""A node's Ed25519 identity and the signatures it makes.

Verification follows the rule docs/wire-format.md pins ("Signatures"): RFC 8032 Ed25519
with libsodium's strictness, i.e. S canonical (S < L), A and R canonical encodings
(y < p) of points that are not of small order, and the cofactorless equation
[S]B = R + [k]A checked against R's encoding. Every node must accept exactly the same
signatures, because a relay is charged for forwarding a batch whose signature fails: the
encoding rules are checked here explicitly, so the verdict does not depend on how the
installed libsodium was built; libsodium then checks that A decodes and the equation.

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
        """A fresh key from the OS's secure random source, for a new node identity."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed, for persisting the key; asked for explicitly, never
        shown by repr."""
        return bytes(self._signing)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key: the node's identity as peers, batches and
        experiences name it (`source`, `sender`)."""
        return bytes(self._signing.verify_key)

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Signature over context || message (64 bytes)."""
        return self._signing.sign(context + message).signature

    def __repr__(self) -> str:
        return f"NodeKey(public={self.public_key.hex()[:16]}...)"


#: The field prime p and the prime order L of the base point.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
#: y of the eight points of order dividing 8 (x's sign bit picks between two, or x = 0):
#: 1 (the identity), p - 1 (order 2), 0 (order 4) and the two of the order-8 points.
SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _P - 1,
        int.from_bytes(
            bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            "little",
        ),
    }
)


def strict_encoding_ok(public_key: bytes, signature: bytes) -> bool:
    """The pinned rule's checks on encodings alone: S < L; A and R have y < p and are not
    among the small-order points (whatever their sign bit, which also refuses x = 0 with
    the sign bit set)."""
    if int.from_bytes(signature[32:], "little") >= _L:
        return False
    for point in (public_key, signature[:32]):
        y = int.from_bytes(point, "little") & ((1 << 255) - 1)
        if y >= _P or y in SMALL_ORDER_Y:
            return False
    return True


def verify(public_key: bytes, context: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is `public_key`'s signature over context || message under the
    pinned strict rule (module docstring)."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    if not strict_encoding_ok(public_key, signature):
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(context + message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
