"""Off-chain proof that an operator's node holds the Ed25519 key it advertises.

The EVM has no Ed25519 precompile, so the registry only records the operator's claim. Before
trusting an advertisement, a peer asks the node to sign a challenge with its Ed25519 key.
The challenge binds operator, chain id and registry address so a proof for one operator or
deployment cannot be replayed for another; the caller adds a fresh nonce against replay
in time.

Two rules close the relay attack (operator M advertises honest node H's peer key, then
forwards a verifier's challenge "prove K for M" to H):

* the node answers through `PossessionResponder`, which only ever signs for the operator it
  advertises under (configured once); a challenge naming any other operator is refused;
* the verifier checks that the operator named in the proof is the on-chain owner of the key
  (`RegistryClient.verify_peer_possession` does both halves).
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_canonical_address, to_checksum_address
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

CHALLENGE_TAG = b"FAI peer-key possession v1\x00"


class PossessionRefused(ValueError):
    """The challenge names an operator this node does not advertise under."""


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
    """64-byte Ed25519 signature over the challenge for `operator`.

    Low level: a node must only ever pass its own operator here. Network-facing code should
    answer through `PossessionResponder`, which enforces that.
    """
    peer_key = bytes(signing_key.verify_key)
    challenge = possession_challenge(chain_id, registry_address, operator, peer_key, nonce)
    return signing_key.sign(challenge).signature


@dataclass(frozen=True)
class PossessionResponder:
    """A node's answer to possession challenges, bound to the operator it advertises under."""

    signing_key: SigningKey
    chain_id: int
    registry_address: str
    operator: str

    def __post_init__(self):
        object.__setattr__(self, "operator", to_checksum_address(self.operator))
        object.__setattr__(self, "registry_address", to_checksum_address(self.registry_address))

    @property
    def peer_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def respond(self, nonce: bytes, operator: str | None = None) -> tuple[str, bytes]:
        """(operator, signature) for the verifier's nonce.

        `operator` is the operator the verifier believes this node runs for; anything but the
        configured one is refused, so the node can never be used to vouch for someone else.
        """
        if operator is not None and to_checksum_address(operator) != self.operator:
            raise PossessionRefused(
                f"this node advertises under {self.operator}, not {operator}: refusing to sign"
            )
        signature = prove_possession(
            self.signing_key, self.chain_id, self.registry_address, self.operator, nonce
        )
        return self.operator, signature


def verify_possession(
    peer_key: bytes,
    signature: bytes,
    chain_id: int,
    registry_address: str,
    operator: str,
    nonce: bytes,
) -> bool:
    """True only if `peer_key` signed this exact challenge; False on any malformed input.

    This is the off-chain half only: the verifier must also check that `operator` is the
    on-chain owner of `peer_key` (`RegistryClient.verify_peer_possession`).
    """
    try:
        challenge = possession_challenge(chain_id, registry_address, operator, peer_key, nonce)
        VerifyKey(bytes(peer_key)).verify(challenge, bytes(signature))
    except (BadSignatureError, ValueError, TypeError, OverflowError, AttributeError):
        return False
    return True
