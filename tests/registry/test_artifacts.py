"""The ABI and bytecode shipped in contracts/artifacts match a fresh compile of the sources."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from fai_net.devnet.anvil import DEVNET_DIR, REPO_DIR, SETUP_HINT
from fai_net.registry.artifacts import ARTIFACTS_DIR, load_artifact


@pytest.fixture(scope="module")
def fresh() -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the contracts compile with npm solc", pytrace=False)
    if not (DEVNET_DIR / "node_modules" / "solc").is_dir():
        pytest.fail(f"devnet tooling missing: {SETUP_HINT}", pytrace=False)
    out = subprocess.run(
        [node, str(DEVNET_DIR / "compile.mjs"), "--stdout"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", ["DSORegistry", "FaiTestToken"])
def test_shipped_artifact_matches_fresh_compile(fresh: dict, name: str):
    shipped = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())
    hint = "stale artifact: run `node devnet/compile.mjs` and commit contracts/artifacts"
    for field in ("abi", "bytecode", "deployedBytecode", "solcVersion", "sourceHash", "settings"):
        assert shipped[field] == fresh[name][field], f"{name}.{field}: {hint}"


def test_no_unshipped_contracts(fresh: dict):
    shipped = {p.stem for p in ARTIFACTS_DIR.glob("*.json")}
    assert shipped == set(fresh)


def test_loader_reads_pinned_compiler():
    art = load_artifact("DSORegistry")
    assert art.solc_version.startswith("0.8.37+")
    # CBOR metadata at the end of the runtime code names the compiler: solc 0.8.37 = 0x000825.
    assert art.deployed_bytecode.endswith("64736f6c63430008250033")
    assert art.deployed_bytecode[2:] in art.bytecode
