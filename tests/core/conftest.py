"""Fixtures shared by the DeltaSoup tests: the real-embedding scenario, without the model."""

from __future__ import annotations

import pytest

from fai_eval.scenario import Scenario, TableEmbedder


@pytest.fixture(scope="module")
def scenario():
    """Nine nodes over the shipped corpus embeddings (seed 3)."""
    return Scenario(9, seed=3)


@pytest.fixture(scope="module")
def embedder():
    """Looks texts up in the shipped embedding table: an explicit test stand-in."""
    return TableEmbedder()
