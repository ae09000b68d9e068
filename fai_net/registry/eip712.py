"""EIP-712 messages the registry verifies: batch headers and peer advertisements.

Kept free of web3 so the node can sign every batch header it publishes (and check the
headers of others) without a chain connection. The domain carries chain id and registry
address, so a signature is useless on another chain or against another deployment.
"""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak, to_canonical_address, to_checksum_address

DOMAIN_NAME = "FAI DSORegistry"
DOMAIN_VERSION = "1"
UINT64_MAX = 2**64 - 1

BATCH_HEADER_TYPES = {
    "BatchHeader": [
        {"name": "peerKey", "type": "bytes32"},
        {"name": "seq", "type": "uint64"},
        {"name": "cidDigest", "type": "bytes32"},
        {"name": "timestampMs", "type": "uint64"},
    ]
}

ADVERTISEMENT_TYPES = {
    "PeerAdvertisement": [
        {"name": "operator", "type": "address"},
        {"name": "peerKey", "type": "bytes32"},
        {"name": "multiaddrsHash", "type": "bytes32"},
        {"name": "keyProofHash", "type": "bytes32"},
        {"name": "expiry", "type": "uint64"},
        {"name": "nonce", "type": "uint64"},
    ]
}


def domain(chain_id: int, registry_address: str) -> dict:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(registry_address),
    }


def _bytes32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {value!r:.80}")
    return bytes(value)


def _uint64(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise ValueError(f"{what} must be an unsigned 64-bit integer, got {value!r}")
    return value


def _private_key(account_or_key) -> bytes:
    return getattr(account_or_key, "key", account_or_key)


def batch_header_message(peer_key: bytes, seq: int, cid_digest: bytes, timestamp_ms: int) -> dict:
    return {
        "peerKey": _bytes32(peer_key, "peer_key"),
        "seq": _uint64(seq, "seq"),
        "cidDigest": _bytes32(cid_digest, "cid_digest"),
        "timestampMs": _uint64(timestamp_ms, "timestamp_ms"),
    }


def sign_batch_header(
    account_or_key,
    chain_id: int,
    registry_address: str,
    peer_key: bytes,
    seq: int,
    cid_digest: bytes,
    timestamp_ms: int,
) -> bytes:
    """65-byte r||s||v signature the registry accepts as equivocation evidence."""
    signed = Account.sign_typed_data(
        _private_key(account_or_key),
        domain(chain_id, registry_address),
        BATCH_HEADER_TYPES,
        batch_header_message(peer_key, seq, cid_digest, timestamp_ms),
    )
    return bytes(signed.signature)


def _digest(message: SignableMessage) -> bytes:
    return keccak(b"\x19" + message.version + message.header + message.body)


def batch_header_digest(
    chain_id: int,
    registry_address: str,
    peer_key: bytes,
    seq: int,
    cid_digest: bytes,
    timestamp_ms: int,
) -> bytes:
    """The EIP-712 digest the contract computes (`hashBatchHeader`)."""
    return _digest(
        encode_typed_data(
            domain(chain_id, registry_address),
            BATCH_HEADER_TYPES,
            batch_header_message(peer_key, seq, cid_digest, timestamp_ms),
        )
    )


def equivocation_commitment(digest_a: bytes, digest_b: bytes, beneficiary: str) -> bytes:
    """Same as the contract's keccak256(abi.encode(digestA, digestB, beneficiary))."""
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "address"],
            [
                _bytes32(digest_a, "digest_a"),
                _bytes32(digest_b, "digest_b"),
                to_canonical_address(beneficiary),
            ],
        )
    )


def recover_batch_header_signer(
    signature: bytes,
    chain_id: int,
    registry_address: str,
    peer_key: bytes,
    seq: int,
    cid_digest: bytes,
    timestamp_ms: int,
) -> str:
    """Checksummed address that signed the header; compare it with the peer key's operator."""
    encoded = encode_typed_data(
        domain(chain_id, registry_address),
        BATCH_HEADER_TYPES,
        batch_header_message(peer_key, seq, cid_digest, timestamp_ms),
    )
    return Account.recover_message(encoded, signature=signature)


def multiaddrs_hash(multiaddrs: list[str]) -> bytes:
    """Same as the contract's keccak256(abi.encode(string[])): what the signature covers."""
    return keccak(abi_encode(["string[]"], [list(multiaddrs)]))


def advertisement_message(
    operator: str,
    peer_key: bytes,
    multiaddrs: list[str],
    expiry: int,
    nonce: int,
    key_proof: bytes,
) -> dict:
    return {
        "operator": to_checksum_address(operator),
        "peerKey": _bytes32(peer_key, "peer_key"),
        "multiaddrsHash": multiaddrs_hash(multiaddrs),
        "keyProofHash": keccak(bytes(key_proof)),
        "expiry": _uint64(expiry, "expiry"),
        "nonce": _uint64(nonce, "nonce"),
    }


def sign_advertisement(
    account_or_key,
    chain_id: int,
    registry_address: str,
    peer_key: bytes,
    multiaddrs: list[str],
    expiry: int,
    nonce: int,
    *,
    key_proof: bytes,
    operator: str | None = None,
) -> bytes:
    """Signature over an advertisement; anyone holding it can relay it once.

    Signed by the operator key, or by the operator's current signer (`setSigner`) with
    `operator` naming the operator it advertises for. `key_proof` is the node's binding
    proof (`possession.prove_binding`); the signature covers its hash.
    """
    key = _private_key(account_or_key)
    operator = operator or Account.from_key(key).address
    signed = Account.sign_typed_data(
        key,
        domain(chain_id, registry_address),
        ADVERTISEMENT_TYPES,
        advertisement_message(operator, peer_key, multiaddrs, expiry, nonce, key_proof),
    )
    return bytes(signed.signature)


def fraud_snapshot_hash(operators, weights) -> bytes:
    """Same as the contract's keccak256(abi.encode(address[] operators, uint256[] weights))."""
    ops = [to_checksum_address(o) for o in operators]
    return keccak(abi_encode(["address[]", "uint256[]"], [ops, list(weights)]))
