"""The sender histories on disk: one .npz file, replaced atomically.

Why a module of its own: the format (what each array holds, how a damaged or foreign file
is refused) is a contract with the files older nodes wrote, and reads apart from the
statistics. A file holds, per domain, one table of sender summaries (`d{i}_*` arrays), and
per domain the node's own rows (`o{i}_*`, filed under `OWN_KEY`). Format 1 (before domain
margins) still loads, with no margins measured and nobody refused. Any array of the wrong
shape, count or a value that is not finite raises ValueError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fai_core.deltasoup_reference import SenderSummary
from fai_core.reputation import atomic_write

#: 2 added the domain margins, the refused flags and the node's own rows.
FORMAT = 2
#: The key a node's own rows are filed under.
OWN_KEY = bytes(32)


def save_tables(path, dim: int, rounds: int, domains, own) -> None:
    """Write the domain tables (`domains`: domain -> sender -> summary) and the node's own
    rows (`own`: domain -> summary) to `path` atomically."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "dim": np.array(dim),
        "rounds": np.array(rounds),
    }
    for i, dom in enumerate(sorted(domains)):
        arrays[f"d{i}_name"] = np.array(dom)
        arrays.update(_table_arrays(f"d{i}_", domains[dom]))
    for i, dom in enumerate(sorted(own)):
        arrays[f"o{i}_name"] = np.array(dom)
        arrays.update(_table_arrays(f"o{i}_", {OWN_KEY: own[dom]}))
    atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def load_tables(path: Path, dim: int):
    """(rounds, domain tables, own rows) of a history file; ValueError if it is not one."""
    domains: dict[str, dict[bytes, SenderSummary]] = {}
    own: dict[str, SenderSummary] = {}
    with np.load(path, allow_pickle=False) as data:
        if int(data["format"]) not in (1, FORMAT) or int(data["dim"]) != dim:
            raise ValueError(f"{path}: not a sender history (format {FORMAT}, dim {dim})")
        rounds = int(data["rounds"])
        i = 0
        while f"d{i}_name" in data:
            domains[str(data[f"d{i}_name"])] = _load_domain(data, f"d{i}_", dim, path)
            i += 1
        i = 0
        while f"o{i}_name" in data:
            table = _load_domain(data, f"o{i}_", dim, path)
            if set(table) != {OWN_KEY}:
                raise ValueError(f"{path}: o{i}_ is not one node's own rows")
            own[str(data[f"o{i}_name"])] = table[OWN_KEY]
            i += 1
    return rounds, domains, own


def _table_arrays(prefix: str, table: dict[bytes, SenderSummary]) -> dict[str, np.ndarray]:
    """One table of summaries (a domain's senders, or a node's own rows) as named arrays."""
    keys = sorted(table)
    rows = [table[k] for k in keys]
    return {
        prefix + "senders": np.array([list(k) for k in keys], dtype=np.uint8),
        prefix + "rows": np.array([r.rows for r in rows], dtype=np.int64),
        prefix + "last": np.array([r.last_round for r in rows], dtype=np.int64),
        prefix + "vec_sum": np.stack([r.vec_sum for r in rows]),
        prefix + "q_sum": np.array([r.q_sum for r in rows]),
        prefix + "recent_n": np.array([len(r.recent_q) for r in rows]),
        prefix + "recent_vecs": np.concatenate([r.recent_vecs for r in rows]),
        prefix + "recent_q": np.concatenate([r.recent_q for r in rows]),
        prefix + "refused": np.array([r.refused for r in rows], dtype=bool),
        prefix + "margin_rows": np.array([r.margin_rows for r in rows]),
        prefix + "margin_sum": np.array([r.margin_sum for r in rows]),
        prefix + "recent_margin_n": np.array([len(r.recent_margin) for r in rows]),
        prefix + "recent_margin": np.concatenate([r.recent_margin for r in rows]),
    }


def _load_domain(data, prefix: str, dim: int, path: Path) -> dict[bytes, SenderSummary]:
    senders = data[prefix + "senders"]
    rows, last = data[prefix + "rows"], data[prefix + "last"]
    vec_sum, q_sum = data[prefix + "vec_sum"], data[prefix + "q_sum"]
    recent_n = data[prefix + "recent_n"]
    recent_vecs, recent_q = data[prefix + "recent_vecs"], data[prefix + "recent_q"]
    n = len(senders)
    shapes_ok = (
        senders.shape == (n, 32)
        and vec_sum.shape == (n, dim)
        and all(len(a) == n for a in (rows, last, q_sum, recent_n))
        and recent_vecs.shape == (int(recent_n.sum()), dim)
        and len(recent_q) == int(recent_n.sum())
    )
    if not shapes_ok or (rows < 1).any() or (recent_n < 1).any() or (recent_n > rows).any():
        raise ValueError(f"{path}: {prefix} has inconsistent shapes or counts")
    finite = all(np.isfinite(a).all() for a in (vec_sum, q_sum, recent_vecs, recent_q))
    if not finite:
        raise ValueError(f"{path}: {prefix} holds a value that is not finite")
    bounds = np.concatenate([[0], np.cumsum(recent_n)])
    margin = _load_margins(data, prefix, rows, path)
    out = {}
    for j in range(n):
        part = slice(bounds[j], bounds[j + 1])
        out[bytes(senders[j])] = SenderSummary(
            int(rows[j]), vec_sum[j].astype(np.float64), float(q_sum[j]),
            recent_vecs[part].astype(np.float32), recent_q[part].astype(np.float64), int(last[j]),
            *margin[j],
        )  # fmt: skip
    return out


def _load_margins(data, prefix: str, rows: np.ndarray, path: Path) -> list[tuple]:
    """Per sender (margin_rows, margin_sum, recent_margin, refused) of a domain; none
    measured (and nobody refused) in a format-1 file."""
    n = len(rows)
    if prefix + "margin_rows" not in data:
        return [(0, 0.0, np.zeros(0), False)] * n
    m_rows, m_sum = data[prefix + "margin_rows"], data[prefix + "margin_sum"]
    m_n, m_recent = data[prefix + "recent_margin_n"], data[prefix + "recent_margin"]
    refused = data[prefix + "refused"]
    ok = (
        len(m_rows) == n and len(m_sum) == n and len(m_n) == n and len(refused) == n
        and len(m_recent) == int(m_n.sum()) and (m_rows >= 0).all() and (m_rows <= rows).all()
        and (m_n <= m_rows).all() and (m_n >= 0).all()
    )  # fmt: skip
    if not ok:
        raise ValueError(f"{path}: {prefix} has inconsistent margins")
    if not (np.isfinite(m_sum).all() and np.isfinite(m_recent).all()):
        raise ValueError(f"{path}: {prefix} holds a value that is not finite")
    bounds = np.concatenate([[0], np.cumsum(m_n)])
    return [
        (
            int(m_rows[j]),
            float(m_sum[j]),
            m_recent[bounds[j] : bounds[j + 1]].astype(np.float64),
            bool(refused[j]),
        )
        for j in range(n)
    ]
