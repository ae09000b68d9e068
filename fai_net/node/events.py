"""The node's optional event log: one JSON line per batch event (accepted, publishing,
merged), for benchmarks and audits. Off unless `event_log` is configured; a part that
records an event needs no check of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path


class EventLog:
    def __init__(self, path: Path | None) -> None:
        self._file = None
        if path is not None:
            self._file = open(path, "a", buffering=1)  # noqa: SIM115

    def __call__(self, kind: str, **fields) -> None:
        if self._file is not None:
            fields.update(t=time.time(), ev=kind)
            self._file.write(json.dumps(fields) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
