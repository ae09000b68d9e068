"""Compiled contract artifacts shipped with the package.

The node must not need a Solidity compiler at run time, so ABI and bytecode are committed as
JSON (written by `node devnet/compile.mjs`); a test recompiles and fails if they drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# A built wheel carries the artifacts inside the package (pyproject force-include); a
# checkout or editable install reads them where compile.mjs writes them.
_PACKAGED = Path(__file__).resolve().parent / "contract_artifacts"
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "contracts" / "artifacts"
ARTIFACTS_DIR = _PACKAGED if _PACKAGED.is_dir() else _SOURCE_TREE


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str
    deployed_bytecode: str
    solc_version: str
    source_hash: str


@cache
def load_artifact(name: str) -> Artifact:
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"contract artifact {path} is missing: run `node devnet/compile.mjs`"
        ) from None
    return Artifact(
        name=raw["contractName"],
        abi=raw["abi"],
        bytecode=raw["bytecode"],
        deployed_bytecode=raw["deployedBytecode"],
        solc_version=raw["solcVersion"],
        source_hash=raw["sourceHash"],
    )


def registry_artifact() -> Artifact:
    return load_artifact("DSORegistry")


def token_artifact() -> Artifact:
    return load_artifact("FaiTestToken")
