"""The experience: the one artifact FAI nodes share.

An experience is a short natural-language pattern (what worked, under which conditions),
its sentence embedding, a quality in (0, 1), and a domain tag. Raw telemetry never becomes
part of one. The rules here are the same rules the wire decoder applies to untrusted
batches, so a locally built experience always survives a round trip through the wire.

Identity: an experience's id is the CIDv1 of the DAG-CBOR map {domain, text}. Two nodes
that distil the same pattern in the same domain produce the same id, which is what lets a
library merge them as one (keeping the higher quality) instead of storing duplicates.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from fai_core import dagcbor
from fai_core.errors import InvalidExperience, Reject

MAX_WORDS = 32
#: 32 words of ordinary prose fit in ~250 bytes; this only stops pathological "words".
MAX_TEXT_BYTES = 1024
MAX_DIMENSION = 4096
MAX_ITERATION = 255
PUBLIC_KEY_LEN = 32

#: Domain tags; also the shape of telemetry task labels, which become domains.
DOMAIN_RE = re.compile(r"[a-z0-9-]{1,32}")
#: C0 and C1 control characters: never part of a pattern text or an identifier.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: Word separators: exactly the Unicode White_Space property (stable since Unicode 6.3), as
#: an explicit list so the rule does not depend on a language's notion of whitespace.
#: Python's str.split() also splits on U+001C..U+001F and JavaScript's \s also matches
#: U+FEFF and not U+0085; docs/wire-format.md, "Pattern texts", gives this list.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
#: Invisible characters that a producer removes and a receiver refuses: they show nothing
#: (or only reorder what is shown), so two texts differing only in them look the same and
#: would otherwise be two experiences. ZWNJ/ZWJ (U+200C/D), variation selectors and tag
#: characters are not here: scripts and emoji need them.
IGNORED = frozenset(
    "\xad\u061c\u180e\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069"
    "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)
_IGNORED_TABLE = dict.fromkeys(map(ord, IGNORED))
_WHITESPACE_RE = re.compile("[" + "".join(map(re.escape, sorted(WHITESPACE))) + "]+")


def normalize_text(text: str) -> str:
    """The canonical form producers store and receivers require, in this order: remove the
    IGNORED characters, Unicode NFC, replace each run of WHITESPACE by one U+0020, drop it
    at both ends. Removing before NFC matters: an ignored character between a letter and a
    combining mark blocks their composition, and removing it afterwards would leave a text
    that is not NFC."""
    stripped = unicodedata.normalize("NFC", text.translate(_IGNORED_TABLE))
    return " ".join(word for word in _WHITESPACE_RE.split(stripped) if word)


def text_problem(text: object) -> tuple[Reject, str] | None:
    """Why `text` is not a valid pattern text, or None if it is.

    Words are the U+0020-separated parts of a valid (normalized) text, so the word count is
    the number of spaces plus one."""
    if not isinstance(text, str):
        return Reject.BAD_TEXT, "text must be a string"
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        return Reject.TEXT_TOO_LONG, f"text exceeds {MAX_TEXT_BYTES} UTF-8 bytes"
    if CONTROL_RE.search(text):
        return Reject.BAD_TEXT, "text contains control characters"
    if any(ch in IGNORED for ch in text):
        return Reject.BAD_TEXT, "text contains invisible format characters (e.g. U+FEFF)"
    words = text.split(" ")
    if text == "" or any(word == "" for word in words) or text != normalize_text(text):
        return Reject.BAD_TEXT, "text is empty or not normalized (NFC, single spaces)"
    if len(words) > MAX_WORDS:
        return Reject.TEXT_TOO_LONG, f"text has {len(words)} words, at most {MAX_WORDS}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Reject.BAD_TEXT, "text contains lone surrogates"
    return None


def domain_problem(domain: object) -> str | None:
    """Why `domain` is not a valid domain tag (lowercase [a-z0-9-]{1,32}), or None."""
    if not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain):
        return f"domain must match [a-z0-9-]{{1,32}}, got {domain!r}"
    return None


def experience_id(domain: str, text: str) -> bytes:
    """Binary CIDv1 of the DAG-CBOR map {domain, text}."""
    return dagcbor.cid_of(dagcbor.encode({"domain": domain, "text": text}))


@dataclass(frozen=True, slots=True, eq=False)
class Experience:
    """One validated experience. Construction validates; invalid values raise InvalidExperience.

    `embedding` is stored as a read-only float32 copy so that no caller can mutate an
    experience after its id and checks were computed.
    """

    text: str
    embedding: np.ndarray
    quality: float
    domain: str
    source: bytes
    created_ms: int
    iteration: int = 0
    id: bytes = field(init=False)

    def __post_init__(self) -> None:
        problem = text_problem(self.text)
        if problem:
            raise InvalidExperience("text", problem[1])
        problem_domain = domain_problem(self.domain)
        if problem_domain:
            raise InvalidExperience("domain", problem_domain)
        q = self.quality
        if isinstance(q, bool) or not isinstance(q, int | float | np.floating):
            raise InvalidExperience("quality", "must be a number")
        if not (math.isfinite(q) and 0.0 < q < 1.0):
            raise InvalidExperience("quality", f"must lie in the open interval (0, 1), got {q}")
        object.__setattr__(self, "quality", float(q))
        try:
            vec = np.array(self.embedding, dtype=np.float32, copy=True)
        except (ValueError, TypeError) as exc:
            raise InvalidExperience("embedding", f"not a numeric vector: {exc}") from None
        if vec.ndim != 1 or not 1 <= vec.shape[0] <= MAX_DIMENSION:
            raise InvalidExperience(
                "embedding", f"must be a vector of 1..{MAX_DIMENSION} values, shape {vec.shape}"
            )
        if not np.isfinite(vec).all():
            raise InvalidExperience("embedding", "contains NaN or Inf")
        vec.setflags(write=False)
        object.__setattr__(self, "embedding", vec)
        if not isinstance(self.source, bytes) or len(self.source) != PUBLIC_KEY_LEN:
            raise InvalidExperience("source", "must be a 32-byte Ed25519 public key")
        for name, value, top in (
            ("created_ms", self.created_ms, (1 << 64) - 1),
            ("iteration", self.iteration, MAX_ITERATION),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise InvalidExperience(name, f"must be an integer in [0, {top}], got {value!r}")
        object.__setattr__(self, "id", experience_id(self.domain, self.text))

    @classmethod
    def create(
        cls,
        text: str,
        embedding: np.ndarray,
        quality: float,
        domain: str,
        source: bytes,
        created_ms: int,
        iteration: int = 0,
    ) -> Experience:
        """Build from producer input, normalizing the text first (whitespace, NFC)."""
        return cls(normalize_text(text), embedding, quality, domain, source, created_ms, iteration)

    @property
    def dimension(self) -> int:
        """Coordinates of the embedding, checked against a library's or batch's dimension
        before the experience is stored or encoded."""
        return int(self.embedding.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Experience):
            return NotImplemented
        return (
            self.id == other.id
            and self.quality == other.quality
            and self.source == other.source
            and self.created_ms == other.created_ms
            and self.iteration == other.iteration
            and np.array_equal(self.embedding, other.embedding)
        )

    def __hash__(self) -> int:
        return hash((self.id, self.source, self.created_ms))
