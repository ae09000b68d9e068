"""Checks shared by the library tests."""

from __future__ import annotations

import numpy as np


def assert_baseline_matches_rows(lib) -> None:
    """The incrementally kept baseline equals the mean of the stored rows, computed afresh.

    The library keeps a float64 sum, so the reference is a float64 mean: a float32 mean of
    the same rows is off by ~1e-8, far above the tolerance.
    """
    rows = [e.embedding for e in lib.experiences()]
    assert lib.count() == len(rows)
    if not rows:
        assert lib.baseline() is None
        return
    exact = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
    np.testing.assert_allclose(lib.baseline(), exact, atol=1e-9)
