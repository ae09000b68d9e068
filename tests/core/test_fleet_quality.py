"""Fleet quality Q (Definition 8) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fai_core.fleet_quality import fleet_quality, node_quality


def test_matches_a_hand_computation():
    # node 0: e = (1, 0) q=0.8 cos=1; e = (0, 2) q=0.5 cos=0       -> (0.8 + 0) / 2 = 0.4
    # node 1: e = (1, 1) q=0.6 with t = (3, 0) cos=1/sqrt2         -> 0.6/sqrt2
    libraries = [
        (np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.8, 0.5])),
        (np.array([[1.0, 1.0]]), np.array([0.6])),
    ]
    tasks = [np.array([5.0, 0.0]), np.array([3.0, 0.0])]
    expected = (0.4 + 0.6 / np.sqrt(2)) / 2
    assert fleet_quality(libraries, tasks) == pytest.approx(expected)
    assert node_quality(*libraries[1], tasks[1]) == pytest.approx(0.6 / np.sqrt(2))


def test_empty_libraries_and_zero_vectors():
    full = (np.array([[0.0, 1.0]]), np.array([0.9]))
    empty = (np.zeros((0, 2)), np.zeros(0))
    tasks = [np.array([0.0, 1.0])] * 2
    assert fleet_quality([full, empty], tasks) == pytest.approx(0.45)
    assert fleet_quality([full, empty], tasks, empty="skip") == pytest.approx(0.9)
    assert fleet_quality([empty, empty], tasks, empty="skip") == 0.0
    assert fleet_quality([([], []), full], tasks) == pytest.approx(0.45)
    assert fleet_quality([full], [np.zeros(2)]) == 0.0
    assert fleet_quality([(np.zeros((1, 2)), np.array([0.9]))], [np.ones(2)]) == 0.0


def test_irrelevant_and_opposite_experiences():
    tasks = [np.array([1.0, 0.0])]
    assert fleet_quality([(np.array([[0.0, 1.0]]), np.array([0.99]))], tasks) == pytest.approx(0)
    assert fleet_quality([(np.array([[-1.0, 0.0]]), np.array([0.5]))], tasks) == -0.5


@pytest.mark.parametrize(
    ("libraries", "tasks", "why"),
    [
        ([], [], r"^fleet quality needs at least one node$"),
        ([(np.ones((2, 3)), np.ones(2))], [], r"^1 libraries but 0 task means$"),
        (
            [(np.ones((2, 3)), np.ones(3))],
            [np.ones(3)],
            r"^library 0: qualities must have shape \(2,\)$",
        ),
        (
            [(np.ones((2, 3)), np.ones(2))],
            [np.ones(4)],
            r"^library 0: embeddings must have shape \(M, 4\), got \(2, 3\)$",
        ),
        (
            [(np.ones((2, 3)), np.array([1.0, np.nan]))],
            [np.ones(3)],
            r"^embeddings, qualities and task means must be finite$",
        ),
    ],
)
def test_bad_shapes_are_refused(libraries, tasks, why):
    with pytest.raises(ValueError, match=why):
        fleet_quality(libraries, tasks)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.integers(0, 2**32 - 1))
def test_vectorised_result_equals_a_plain_loop(sizes, seed):
    rng = np.random.default_rng(seed)
    d = 8
    libraries = [(rng.normal(size=(m, d)), rng.uniform(0.01, 0.99, size=m)) for m in sizes]
    tasks = [rng.normal(size=d) for _ in sizes]
    terms = []
    for (e, q), t in zip(libraries, tasks, strict=True):
        cos = [float(v @ t / np.linalg.norm(v) / np.linalg.norm(t)) for v in e]
        terms.append(sum(qi * c for qi, c in zip(q, cos, strict=True)) / len(e) if len(e) else 0)
    assert fleet_quality(libraries, tasks) == pytest.approx(np.mean(terms), abs=1e-12)
    assert -1 <= fleet_quality(libraries, tasks) <= 1
