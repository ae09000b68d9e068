"""Revert decoding (fai_net/registry/errors.py) without a chain: revert data is built with
eth_abi from the shipped ABIs, so every error the registry and its token can raise is
checked to come back as its typed exception, with its arguments and its message.

These are the fast tests `make mutate` runs for the module (docs/mutation.md); the
chain-backed tests (tests/registry/test_*.py with Anvil) check the same decoder on real
reverts.
"""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address, to_hex
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from fai_net.registry import errors
from fai_net.registry.artifacts import registry_artifact, token_artifact
from fai_net.registry.errors import ErrorDecoder

ABIS = (registry_artifact().abi, token_artifact().abi)
ABI_ERRORS = {item["name"]: item for abi in ABIS for item in abi if item.get("type") == "error"}
ADDRESS = "0x" + "ab" * 20


def sample(kind: str, n: int):
    """A distinct argument value of ABI type `kind` (the n-th argument)."""
    if kind == "address":
        return ADDRESS[:-2] + f"{n:02x}"
    if kind == "bytes32":
        return bytes([n + 1]) * 32
    if kind == "string":
        return f"text {n}"
    return 10 + n  # uint8 / uint64 / uint256


def revert_data(name: str, values: list, abi_error: dict | None = None) -> bytes:
    item = abi_error or ABI_ERRORS[name]
    types = [i["type"] for i in item["inputs"]]
    selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
    return selector + abi_encode(types, values)


@pytest.fixture(scope="module")
def decoder() -> ErrorDecoder:
    return ErrorDecoder(*ABIS)


@pytest.mark.parametrize("name", sorted(ABI_ERRORS))
def test_every_abi_error_decodes_to_its_class_with_its_arguments(decoder, name):
    item = ABI_ERRORS[name]
    values = [sample(i["type"], n) for n, i in enumerate(item["inputs"])]
    data = revert_data(name, values)

    err = decoder.from_revert_data(to_hex(data))
    assert type(err) is getattr(errors, name)
    assert err.name == name and err.raw == to_hex(data)
    expected = {
        i["name"]: to_checksum_address(v) if i["type"] == "address" else v
        for i, v in zip(item["inputs"], values, strict=True)
    }
    assert err.args_by_name == expected
    readable = {k: "0x" + v.hex() if isinstance(v, bytes) else v for k, v in expected.items()}
    assert str(err) == type(err).template.format(**readable)
    assert str(err)  # every registry error has a sentence


def test_messages_read_as_sentences_with_hex_keys(decoder):
    err = decoder.from_revert_data(revert_data("BelowMinimumBond", [5, 10]))
    assert isinstance(err, errors.StakeError)
    assert str(err) == "stake 5 is below the minimum bond 10"
    slashed = decoder.from_revert_data(
        revert_data("AlreadySlashed", [ADDRESS, bytes([7]) * 32, 42])
    )
    assert str(slashed) == (
        f"operator {to_checksum_address(ADDRESS)} was already slashed for seq 42 of peer key "
        f"0x{'07' * 32}"
    )
    assert slashed.args_by_name["peerKey"] == bytes([7]) * 32  # the value stays bytes


def test_bytes_str_and_unprefixed_hex_decode_alike(decoder):
    data = revert_data("InsufficientStake", [3, 2])
    as_bytes = decoder.from_revert_data(data)
    as_hex = decoder.from_revert_data(to_hex(data))
    bare = decoder.from_revert_data(data.hex())
    for err in (as_bytes, as_hex, bare):
        assert isinstance(err, errors.InsufficientStake)
        assert err.args_by_name == {"requested": 3, "available": 2}
        assert err.raw == to_hex(data)


def test_unknown_data_is_an_unknown_revert_that_shows_the_bytes(decoder):
    err = decoder.from_revert_data("0xdeadbeef01")
    assert type(err) is errors.UnknownRevert
    assert err.name == "UnknownRevert"
    assert err.args_by_name == {"data": "0xdeadbeef01"} and err.raw == "0xdeadbeef01"
    assert str(err) == "UnknownRevert(data=0xdeadbeef01)"


def test_an_empty_decoder_knows_nothing(decoder):
    data = revert_data("ZeroAmount", [])
    assert type(ErrorDecoder().from_revert_data(data)) is errors.UnknownRevert
    assert type(decoder.from_revert_data(data)) is errors.ZeroAmount


def test_malformed_arguments_still_name_the_error(decoder):
    data = revert_data("FraudCaseClosed", [bytes(32)])[:20]  # arguments cut short
    err = decoder.from_revert_data(data)
    assert type(err) is errors.FraudCaseClosed
    assert err.args_by_name == {} and err.raw == to_hex(data)
    assert str(err) == "this fraud case was already executed"


def test_malformed_arguments_of_a_templated_error_still_name_it(decoder):
    """Truncated arguments (a template that cannot be filled) still name the error; this
    raised KeyError from ContractRevert.__init__ until mutation testing found it."""
    data = revert_data("BelowMinimumBond", [5, 10])[:20]
    err = decoder.from_revert_data(data)
    assert type(err) is errors.BelowMinimumBond
    assert str(err).startswith("BelowMinimumBond(")


def test_unnamed_arguments_and_unknown_names_fall_back_to_a_generic_revert():
    custom = {
        "type": "error",
        "name": "Custom",
        "inputs": [{"name": "", "type": "uint256"}, {"name": "who", "type": "address"}],
    }
    function = {"type": "function", "name": "Custom", "inputs": [], "outputs": []}
    decoder = ErrorDecoder([function, custom])
    data = revert_data("Custom", [5, ADDRESS], custom)

    err = decoder.from_revert_data(data)
    assert type(err) is errors.ContractRevert
    assert err.name == "Custom"
    assert err.args_by_name == {"arg0": 5, "who": to_checksum_address(ADDRESS)}
    assert str(err) == f"Custom(arg0=5, who={to_checksum_address(ADDRESS)})"


def test_a_function_entry_is_not_an_error():
    function = {"type": "function", "name": "ZeroAmount", "inputs": [], "outputs": []}
    data = revert_data("ZeroAmount", [])
    assert type(ErrorDecoder([function]).from_revert_data(data)) is errors.UnknownRevert


def test_revert_objects_render_bytes_as_hex_and_default_to_no_data():
    err = errors.ContractRevert("Thing", {"key": bytearray(b"\x01\xff"), "n": 3})
    assert str(err) == "Thing(key=0x01ff, n=3)"
    assert err.name == "Thing" and err.raw == ""
    assert err.args_by_name == {"key": bytearray(b"\x01\xff"), "n": 3}
    plain = errors.ZeroAmount("ZeroAmount")
    assert str(plain) == "amount must be greater than zero" and plain.raw == ""
    assert errors.ContractRevert("Bare").args_by_name == {}


def test_translate_web3_exceptions(decoder):
    panic = decoder.translate(ContractPanicError("Panic error 0x11: overflow", data="0x4e48"))
    assert type(panic) is errors.ContractPanic
    assert (panic.name, panic.args_by_name, panic.raw) == (
        "Panic",
        {"reason": "Panic error 0x11: overflow"},
        "0x4e48",
    )

    data = to_hex(revert_data("NotRegistered", [ADDRESS]))
    custom = decoder.translate(ContractCustomError("custom", data=data))
    assert type(custom) is errors.NotRegistered and custom.raw == data

    logic = decoder.translate(ContractLogicError("execution reverted: no", data="0x"))
    assert type(logic) is errors.ContractRevert
    assert (logic.name, logic.args_by_name, logic.raw) == (
        "Revert",
        {"reason": "execution reverted: no"},
        "0x",
    )
    assert str(logic) == "Revert(reason=execution reverted: no)"

    # A custom error whose data is not a hex string cannot be decoded: a plain revert.
    odd = decoder.translate(ContractCustomError("odd", data={"message": "x"}))
    assert type(odd) is errors.ContractRevert and odd.name == "Revert"
    assert odd.args_by_name == {"reason": "odd"}

    assert decoder.translate(ValueError("not a revert")) is None
