"""Off-chain proof that an operator's node holds the Ed25519 key it advertises.

The EVM has no Ed25519 precompile, so the registry only records the operator's claim. Before
trusting an advertisement, a peer asks the node to sign a challenge with its Ed25519 key.
The challenge binds operator, chain id and registry address so a proof for one operator or
deployment cannot be replayed for another; the caller adds a fresh nonce against replay
in time.
"""

from __future__ import annotations

from eth_utils import to_canonical_address
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

CHALLENGE_TAG = b"FAI peer-key possession v1\x00"


def possession_challenge(
    chain_id: int, registry_address: str, operator: str, peer_key: bytes, nonce: bytes
) -> bytes:
    if len(peer_key) != 32:
        raise ValueError("peer_key must be a 32-byte Ed25519 public key")
    if not 16 <= len(nonce) <= 64:
        raise ValueError("nonce must be 16..64 random bytes chosen by the verifier")
    return b"".join(
        [
            CHALLENGE_TAG,
            chain_id.to_bytes(32, "big"),
            to_canonical_address(registry_address),
            to_canonical_address(operator),
            bytes(peer_key),
            len(nonce).to_bytes(1, "big"),
            bytes(nonce),
        ]
    )


def prove_possession(
    signing_key: SigningKey, chain_id: int, registry_address: str, operator: str, nonce: bytes
) -> bytes:
    """64-byte Ed25519 signature the node returns to a verifier's challenge."""
    peer_key = bytes(signing_key.verify_key)
    challenge = possession_challenge(chain_id, registry_address, operator, peer_key, nonce)
    return signing_key.sign(challenge).signature


def verify_possession(
    peer_key: bytes,
    signature: bytes,
    chain_id: int,
    registry_address: str,
    operator: str,
    nonce: bytes,
) -> bool:
    """True only if `peer_key` signed this exact challenge."""
    challenge = possession_challenge(chain_id, registry_address, operator, peer_key, nonce)
    try:
        VerifyKey(bytes(peer_key)).verify(challenge, bytes(signature))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
