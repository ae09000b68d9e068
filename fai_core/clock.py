"""The wall clock in integer milliseconds: FAI's one unit of time on the wire and on disk.

Batch timestamps, freshness windows, seq clocks and stored times all use it, so it lives
in one place; tests that need another time pass it in explicitly rather than patching this.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), from `time.time_ns` without float rounding."""
    return time.time_ns() // 1_000_000
