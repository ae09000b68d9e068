"""The pattern corpus: size, validity, variety, and no user data."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import combinations

import pytest

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_core.experience import domain_problem, text_problem

MIN_ENTRIES = 1200
MIN_PER_DOMAIN = 150
MIN_WORDS = 8
MAX_JACCARD = 0.5
#: At most this share of a domain's sentences may open with the same 3 words as another one.
MAX_SHARED_OPENING_SHARE = 0.03

_PUNCT_RE = re.compile(r"[^\w\s]")
_LONG_DIGITS_RE = re.compile(r"\d{7,}")


def _tokens(text: str) -> list[str]:
    return _PUNCT_RE.sub(" ", text.lower()).split()


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    return load_pattern_corpus()


@pytest.fixture(scope="module")
def by_domain(corpus: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for domain, text in corpus:
        grouped[domain].append(text)
    return dict(grouped)


def test_size_and_domains(corpus: list[tuple[str, str]], by_domain: dict[str, list[str]]) -> None:
    assert len(corpus) >= MIN_ENTRIES
    assert set(by_domain) == set(CORPUS_DOMAINS)
    for domain in CORPUS_DOMAINS:
        assert domain_problem(domain) is None
        assert len(by_domain[domain]) >= MIN_PER_DOMAIN, domain


def test_every_text_is_a_valid_pattern(corpus: list[tuple[str, str]]) -> None:
    for domain, text in corpus:
        assert text_problem(text) is None, (domain, text)
        assert len(text.split(" ")) >= MIN_WORDS, text
        assert text.isascii(), text


def test_texts_are_unique(corpus: list[tuple[str, str]]) -> None:
    counts = Counter(text for _, text in corpus)
    assert [text for text, n in counts.items() if n > 1] == []


def test_no_near_duplicates_within_a_domain(by_domain: dict[str, list[str]]) -> None:
    too_similar = []
    for texts in by_domain.values():
        token_sets = [frozenset(_tokens(text)) for text in texts]
        for (i, a), (j, b) in combinations(enumerate(token_sets), 2):
            if len(a & b) / len(a | b) >= MAX_JACCARD:
                too_similar.append((texts[i], texts[j]))
    assert too_similar == []


def test_openings_are_not_templated(by_domain: dict[str, list[str]]) -> None:
    for domain, texts in by_domain.items():
        openings = Counter(tuple(_tokens(text)[:3]) for text in texts)
        shared = [text for text in texts if openings[tuple(_tokens(text)[:3])] > 1]
        assert len(shared) <= MAX_SHARED_OPENING_SHARE * len(texts), (domain, shared)


def test_no_user_data(corpus: list[tuple[str, str]]) -> None:
    for _, text in corpus:
        assert "@" not in text, text
        assert "http" not in text.lower(), text
        # Digits-only tokens longer than 6 (ids, phone or card numbers); stricter: any such run.
        assert _LONG_DIGITS_RE.search(text) is None, text
