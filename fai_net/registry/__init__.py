"""On-chain DSO registry: bonded operators, signed peer advertisements, slashing."""

from fai_net.registry.client import (
    FraudCase,
    FraudSnapshot,
    LivePeer,
    OperatorInfo,
    RegistryClient,
    SignedAdvertisement,
    SignedBatchHeader,
)
from fai_net.registry.deploy import RegistryParams, deploy_registry, deploy_token
from fai_net.registry.eip712 import (
    multiaddrs_hash,
    recover_batch_header_signer,
    sign_advertisement,
    sign_batch_header,
)
from fai_net.registry.errors import ContractRevert, RegistryError
from fai_net.registry.possession import (
    PossessionRefused,
    PossessionResponder,
    prove_possession,
    verify_possession,
)

__all__ = [
    "ContractRevert",
    "FraudCase",
    "FraudSnapshot",
    "LivePeer",
    "OperatorInfo",
    "PossessionRefused",
    "PossessionResponder",
    "RegistryClient",
    "RegistryError",
    "RegistryParams",
    "SignedAdvertisement",
    "SignedBatchHeader",
    "deploy_registry",
    "deploy_token",
    "multiaddrs_hash",
    "prove_possession",
    "recover_batch_header_signer",
    "sign_advertisement",
    "sign_batch_header",
    "verify_possession",
]
