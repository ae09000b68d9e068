"""Fleet experience quality Q (paper Definition 8, eq. 22).

    Q = 1/N sum_i  1/|L_i| sum_{m in L_i} q_m * cos(e_m, t_i)

where t_i is the mean embedding of node i's recent tasks. Q rewards libraries whose good
experiences are relevant to what their node actually does; the self-improvement loop
uses it to decide when fresh rollouts are worth their cost (paper 7.4).

Choices the paper leaves open:

* An empty library contributes 0 and still counts in N (`empty="zero"`, the default): a
  node that knows nothing has no useful experience, and dropping it would let Q rise
  when a node loses its whole library. `empty="skip"` averages over non-empty libraries
  only; Q is 0.0 if none is left.
* A zero embedding or a zero task mean has cosine 0 (no direction, no relevance).
* Cosines are not clipped: an experience pointing away from the tasks lowers Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def fleet_quality(
    libraries: Sequence[tuple[np.ndarray, np.ndarray]],
    task_means: Sequence[np.ndarray],
    *,
    empty: Literal["zero", "skip"] = "zero",
) -> float:
    """Q over N nodes: `libraries[i]` = (embeddings (M_i, d), qualities (M_i,)), `task_means[i]`
    = (d,). All nodes must share d. Computed in float64 without a Python loop over
    experiences."""
    if len(libraries) != len(task_means):
        raise ValueError(f"{len(libraries)} libraries but {len(task_means)} task means")
    if not libraries:
        raise ValueError("fleet quality needs at least one node")
    if empty not in ("zero", "skip"):
        raise ValueError("empty must be 'zero' or 'skip'")
    tasks = np.asarray(np.stack([np.asarray(t, dtype=np.float64) for t in task_means]))
    if tasks.ndim != 2:
        raise ValueError("each task mean must be a (d,) vector")
    n, d = tasks.shape
    sizes = np.empty(n, dtype=np.int64)
    embeddings, qualities = [], []
    for i, (emb, q) in enumerate(libraries):
        e = np.asarray(emb, dtype=np.float64)
        qq = np.asarray(q, dtype=np.float64)
        if e.size == 0 and qq.size == 0:
            e = e.reshape(0, d)
        if e.ndim != 2 or e.shape[1] != d:
            raise ValueError(f"library {i}: embeddings must have shape (M, {d}), got {e.shape}")
        if qq.shape != (e.shape[0],):
            raise ValueError(f"library {i}: qualities must have shape ({e.shape[0]},)")
        sizes[i] = e.shape[0]
        embeddings.append(e)
        qualities.append(qq)
    e_all = np.concatenate(embeddings)
    q_all = np.concatenate(qualities)
    if not (np.isfinite(e_all).all() and np.isfinite(q_all).all() and np.isfinite(tasks).all()):
        raise ValueError("embeddings, qualities and task means must be finite")
    owner = np.repeat(np.arange(n), sizes)
    cos = np.einsum("md,md->m", _unit(e_all), _unit(tasks)[owner])
    totals = np.bincount(owner, weights=q_all * cos, minlength=n)
    per_node = np.divide(totals, sizes, out=np.zeros(n), where=sizes > 0)
    if empty == "skip":
        present = sizes > 0
        return float(per_node[present].mean()) if present.any() else 0.0
    return float(per_node.mean())


def node_quality(embeddings: np.ndarray, qualities: np.ndarray, task_mean: np.ndarray) -> float:
    """One node's term of Q: 1/|L| sum q_m cos(e_m, t); 0.0 for an empty library."""
    return fleet_quality([(embeddings, qualities)], [task_mean])
