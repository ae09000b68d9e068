"""Pattern-text rules as docs/wire-format.md states them, without Python's str.split().

The separator set is the Unicode White_Space list, the removed set an explicit list of
invisible format characters; both are spelled out here as code points, independently of
fai_core.experience, so a change to either list shows up as a failing test and a spec edit.
"""

from __future__ import annotations

import pytest

from fai_core.errors import Reject
from fai_core.experience import IGNORED, MAX_WORDS, WHITESPACE, normalize_text, text_problem

#: docs/wire-format.md, "Pattern texts": the Unicode White_Space property.
SPEC_WHITESPACE = {
    *range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
}  # fmt: skip
#: docs/wire-format.md, "Pattern texts": removed by producers, refused by receivers.
SPEC_IGNORED = {
    0xAD, 0x61C, 0x180E, 0x200B, 0x200E, 0x200F, *range(0x202A, 0x202F),
    *range(0x2060, 0x2065), *range(0x2066, 0x2070), 0xFEFF,
}  # fmt: skip


def test_lists_are_the_specified_code_points() -> None:
    assert {ord(c) for c in WHITESPACE} == SPEC_WHITESPACE
    assert {ord(c) for c in IGNORED} == SPEC_IGNORED
    assert len(SPEC_WHITESPACE) == 25


@pytest.mark.parametrize("cp", sorted(SPEC_WHITESPACE))
def test_every_white_space_separates_words(cp: int) -> None:
    assert normalize_text(f"a{chr(cp)}b") == "a b"
    assert normalize_text(f"{chr(cp)}a{chr(cp)}{chr(cp)}b{chr(cp)}") == "a b"
    if cp != 0x20:
        assert text_problem(f"a{chr(cp)}b") is not None


@pytest.mark.parametrize("cp", sorted(SPEC_IGNORED))
def test_every_ignored_character_is_removed_and_refused(cp: int) -> None:
    assert normalize_text(f"{chr(cp)}re{chr(cp)}try{chr(cp)} x") == "retry x"
    problem = text_problem(f"re{chr(cp)}try")
    assert problem is not None and problem[0] is Reject.BAD_TEXT


@pytest.mark.parametrize(
    "ch",
    ["\x1c", "\x1d", "\x1e", "\x1f"],  # Python's str.split() splits on these; the spec does not
)
def test_information_separators_are_controls_not_whitespace(ch: str) -> None:
    assert normalize_text(f"a{ch}b") == f"a{ch}b"
    assert text_problem(f"a{ch}b")[0] is Reject.BAD_TEXT


@pytest.mark.parametrize(
    "text",
    [
        "retry\u200dwith",  # ZWJ: emoji sequences and Indic scripts need it
        "می\u200cخواهم",  # ZWNJ: Persian orthography
        "\u2764\ufe0f cache",  # variation selector
        "x\u00b7y",  # middle dot: punctuation, not a separator
    ],
)
def test_meaningful_invisibles_stay(text: str) -> None:
    assert normalize_text(text) == text
    assert text_problem(text) is None


def test_ignored_removed_before_nfc() -> None:
    """ZWSP between e and a combining acute blocks composition; removing it first gives é."""
    assert normalize_text("cafe\u200b\u0301") == "caf\u00e9"
    assert normalize_text("\ufeffcaf\u00e9") == "caf\u00e9"


def test_word_count_is_spaces_plus_one() -> None:
    at_limit = " ".join(["w"] * MAX_WORDS)
    assert text_problem(at_limit) is None
    assert text_problem(at_limit + " w")[0] is Reject.TEXT_TOO_LONG
    # Words joined by characters that are not White_Space are one word, e.g. ZWJ or NBSP's
    # look-alike U+2060 (removed), or U+180E (no longer a space since Unicode 6.3).
    glued = "\u200d".join(["w"] * (MAX_WORDS + 5))
    assert text_problem(glued) is None
    assert normalize_text("\u2060".join(["w"] * 40)) == "w" * 40
    # Any White_Space run counts as one separator once normalized.
    spaced = "\u3000\t".join(["w"] * MAX_WORDS)
    assert text_problem(normalize_text(spaced)) is None
    assert text_problem(normalize_text(spaced + "\u2029w"))[0] is Reject.TEXT_TOO_LONG


def test_normalization_is_idempotent_on_mixed_input() -> None:
    raw = "\ufeff  Re\u200btry\u00a0with\u2003\u2003caf\u0065\u0301\u202e back\u00adoff \u3000"
    once = normalize_text(raw)
    assert once == "Retry with café backoff"
    assert normalize_text(once) == once
    assert text_problem(once) is None
