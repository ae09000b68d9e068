"""Writer process for the SIGKILL test: a fork server that starts library writers on demand.

Importing LanceDB takes seconds, so this process imports it once and forks one writer per
kill. Protocol on stdin/stdout, one line each:

    in:  run <library path> <seed>   ->  out: PID <pid>
    the writer prints ACK <id hex>,<id hex>,... END after each write call has returned
    the server prints EXIT <pid> <wait status> once the writer is gone
    in:  quit (or EOF)

The writer adds batches forever, alternating local adds with merges that replay earlier
ids at a higher quality, and maintains every 3 commits with a small index threshold, so
kills land in appends, merge_inserts, compactions, index builds and state writes alike.
"""

from __future__ import annotations

import os
import sys
import warnings

import lancedb  # noqa: F401 - imported once here, inherited by every forked writer
import numpy as np

from fai_core.experience import Experience
from fai_core.library import ExperienceLibrary

DIM = 16
PEER = b"\x05" * 32


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write: lines from two processes never mix


def write_forever(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lib = ExperienceLibrary.open(path, DIM, index_threshold=256, maintain_every=3)
    batch_no = 0
    history: list[Experience] = []
    while True:
        batch_no += 1
        n = int(rng.integers(20, 80))
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        batch = [
            Experience(
                f"seed {seed} batch {batch_no} item {i}",
                vecs[i],
                float(rng.uniform(0.05, 0.5)),
                "ops" if i % 3 else "coding",
                bytes(32),
                batch_no,
            )
            for i in range(n)
        ]
        if batch_no % 2 == 0 and history:
            picks = rng.choice(len(history), size=min(10, len(history)), replace=False)
            for j in picks:
                old = history[int(j)]
                batch.append(
                    Experience(
                        old.text,
                        old.embedding,
                        min(0.99, old.quality + 0.3),
                        old.domain,
                        PEER,
                        old.created_ms + 1,
                    )
                )
            lib.merge(batch, received_from=PEER, batch_cid=b"\x01batch")
        else:
            lib.add_local(batch)
        history.extend(batch[:n])
        # A kill can cut this line short; only lines that reach END count as acks.
        _say("ACK " + ",".join(e.id.hex() for e in batch) + " END")


def serve() -> None:
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        _, path, seed = parts
        pid = os.fork()
        if pid == 0:
            try:
                warnings.simplefilter("ignore")  # lancedb warns that fork support is new
                write_forever(path, int(seed))
            finally:
                os._exit(1)
        _say(f"PID {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"EXIT {pid} {status}")


if __name__ == "__main__":
    serve()
