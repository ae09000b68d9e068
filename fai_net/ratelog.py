"""Logging at a bounded rate, for events a hostile peer can trigger at will.

A refusal logged at INFO for every bad batch lets a flooding peer fill the disk and spend
the node's CPU on formatting. Each kind of event (a key from a fixed vocabulary, never
peer-controlled text) gets at most one line per `interval_s`; the next line it gets says
how many were suppressed in between, so nothing is hidden, only summarised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` under `key` unless `key` logged within the interval.

        Returns whether a line was written.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg = f"{msg} (+{skipped} like it in the last {self.interval_s:g} s)"
        self.logger.log(level, msg, *args)
        return True

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
