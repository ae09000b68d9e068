"""Off-chain proof that an operator's node holds the Ed25519 key it advertises.

The EVM has no Ed25519 precompile, so the registry only records the operator's claim. Before
trusting an advertisement, a peer asks the node to sign a challenge with its Ed25519 key.
The challenge binds operator, chain id and registry address so a proof for one operator or
deployment cannot be replayed for another; the caller adds a fresh nonce against replay
in time.

Two proofs exist:

* the *binding proof* travels in every advertisement (`postAdvertisement(..., keyProof, ...)`):
  an Ed25519 signature by the peer key over (tag, chain id, registry, operator, peer key).
  Clients verify it when they read advertisements (`RegistryClient.live_peers`) and ignore
  advertisements whose proof fails, so an operator that advertises somebody else's key
  (a squatter) is never attributed that key and blocks nobody: the chain reserves no keys.
  It names the operator, so copying an honest operator's proof into another operator's
  advertisement does not verify;
* the *challenge proof* (`prove_possession`) answers a verifier's fresh nonce, for a live
  check that the node on the other end of a connection holds the key right now.

Two rules close the relay attack (operator M advertises honest node H's peer key, then
forwards a verifier's challenge "prove K for M", or asks for a binding proof for M, to H):

* the node answers through `PossessionResponder`, which only ever signs for the operator it
  advertises under (configured once); a challenge naming any other operator is refused;
* the verifier checks that the operator named in the proof is the operator whose current
  advertisement carries the key (`RegistryClient.verify_peer_possession` does both halves).

The key is also the node's libp2p identity: `peer_id_of` gives the peer id peers know it by,
and `multiaddr_problem` checks that an address to advertise is one peers can dial and that
its /p2p/ part names this key, not another node.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_canonical_address, to_checksum_address
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fai_net.peer_ids import peer_id_of

CHALLENGE_TAG = b"FAI peer-key possession v1\x00"
BINDING_TAG = b"FAI peer-key binding v1\x00"
BINDING_PROOF_LENGTH = 64


class PossessionRefused(ValueError):
    """The challenge names an operator this node does not advertise under."""


def possession_challenge(
    chain_id: int, registry_address: str, operator: str, peer_key: bytes, nonce: bytes
) -> bytes:
    if not 16 <= len(nonce) <= 64:
        raise ValueError("nonce must be 16..64 random bytes chosen by the verifier")
    scoped = _scoped(CHALLENGE_TAG, chain_id, registry_address, operator, peer_key)
    return scoped + len(nonce).to_bytes(1, "big") + bytes(nonce)


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


def binding_message(chain_id: int, registry_address: str, operator: str, peer_key: bytes) -> bytes:
    """What the peer key signs to be attributed to `operator` on this chain and registry."""
    return _scoped(BINDING_TAG, chain_id, registry_address, operator, peer_key)


def _scoped(tag: bytes, chain_id: int, registry_address: str, operator: str, peer_key: bytes):
    """`tag`, then the chain, registry, operator and key a statement is bound to."""
    if len(peer_key) != 32:
        raise ValueError("peer_key must be a 32-byte Ed25519 public key")
    return b"".join(
        [
            tag,
            chain_id.to_bytes(32, "big"),
            to_canonical_address(registry_address),
            to_canonical_address(operator),
            bytes(peer_key),
        ]
    )


def _signing_key(node_key) -> SigningKey:
    """A nacl SigningKey from a SigningKey, a fai_core NodeKey or a NodeIdentity."""
    if isinstance(node_key, SigningKey):
        return node_key
    inner = getattr(node_key, "key", None)  # NodeIdentity -> NodeKey
    if inner is not None and hasattr(inner, "seed"):
        node_key = inner
    seed = getattr(node_key, "seed", None)
    if isinstance(seed, bytes) and len(seed) == 32:
        return SigningKey(seed)
    raise TypeError(f"not an Ed25519 node key: {type(node_key).__name__}")


def public_key_of(node_key) -> bytes:
    return bytes(_signing_key(node_key).verify_key)


def prove_binding(node_key, chain_id: int, registry_address: str, operator: str) -> bytes:
    """The 64-byte `keyProof` an advertisement of this node's key by `operator` carries.

    Low level, like `prove_possession`: only ever pass the node's own operator (a node that
    signs a binding for another operator lets that operator take its key's attribution).
    """
    key = _signing_key(node_key)
    message = binding_message(chain_id, registry_address, operator, bytes(key.verify_key))
    return key.sign(message).signature


def verify_binding(
    peer_key: bytes, proof: bytes, chain_id: int, registry_address: str, operator: str
) -> bool:
    """True only if `peer_key` signed the binding to `operator`; False on malformed input."""
    try:
        if len(proof) != BINDING_PROOF_LENGTH:
            return False
        message = binding_message(chain_id, registry_address, operator, peer_key)
        VerifyKey(bytes(peer_key)).verify(message, bytes(proof))
    except (BadSignatureError, ValueError, TypeError, OverflowError, AttributeError):
        return False
    return True


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

    def binding_proof(self) -> bytes:
        """The advertisement's `keyProof`, for the configured operator only."""
        return prove_binding(self.signing_key, self.chain_id, self.registry_address, self.operator)


def verify_possession(
    peer_key: bytes,
    signature: bytes,
    chain_id: int,
    registry_address: str,
    operator: str,
    nonce: bytes,
) -> bool:
    """True only if `peer_key` signed this exact challenge; False on any malformed input.

    This is the off-chain half only: the verifier must also check that `operator` currently
    advertises `peer_key` (`RegistryClient.verify_peer_possession`).
    """
    try:
        challenge = possession_challenge(chain_id, registry_address, operator, peer_key, nonce)
        VerifyKey(bytes(peer_key)).verify(challenge, bytes(signature))
    except (BadSignatureError, ValueError, TypeError, OverflowError, AttributeError):
        return False
    return True


# -- the peer id a key stands for, and addresses that name it ---------------------------

#: The host protocols an advertised address may start with (then /tcp/PORT).
_HOST_PROTOCOLS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})


def multiaddr_problem(text: str, peer_key: bytes, *, need_peer_id: bool = True) -> str | None:
    """What makes `text` unusable as an advertised address of the node `peer_key`, or None.

    Peers dial advertisements over TCP and check the dialled node's identity against the
    address: so it must parse, be /ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT with a host and port
    others can dial, and end in /p2p/ with this node's own peer id. A bare address (no
    /p2p/) passes when `need_peer_id` is False: nodes append the advertised key's peer id
    before dialling (`fai_net.node.node`), so one already on-chain is still usable.
    """
    import multiaddr

    try:
        parts = [(p.name, v) for p, v in multiaddr.Multiaddr(text).items()]
    except Exception as exc:  # py-multiaddr raises several unrelated types
        return f"not a multiaddr ({_parse_error(exc)})"
    names = [name for name, _ in parts]
    if len(names) < 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
        return "no dialable transport: it must start /ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT"
    host, port = parts[0][1], parts[1][1]
    if host in ("0.0.0.0", "::") or int(port) == 0:
        return f"{'port 0' if int(port) == 0 else host} cannot be dialled by other peers"
    if len(names) == 2:
        return "it has no /p2p/<peer id>" if need_peer_id else None
    if names[2:] != ["p2p"]:
        return "only /p2p/<peer id> may follow /tcp/PORT"
    if parts[2][1] != peer_id_of(peer_key):
        return f"its /p2p/{parts[2][1]} is not this node's peer id {peer_id_of(peer_key)}"
    return None


def _parse_error(exc: Exception) -> str:
    """py-multiaddr's reason without the address it repeats ("unknown protocol: x")."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    if text.startswith("Invalid MultiAddr '") and "': " in text:
        text = text.split("': ", 1)[1]
    text = text.rsplit(" (string: ", 1)[0][:160]
    # It quotes the input, which may come from the chain: no control characters pass.
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
