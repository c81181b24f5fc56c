"""Reference backend in plain numpy (BLAS). Every other backend is tested against this one.

Squared L2 uses the norms trick ||q||^2 - 2 q.x + ||x||^2 (one GEMM), clamped at 0; inner product
is returned negated so that smaller is closer, as everywhere in vecdb.
"""

from __future__ import annotations

import numpy as np


def pairwise(Q: np.ndarray, X: np.ndarray, metric_code: int) -> np.ndarray:
    ip = Q @ X.T
    if metric_code == 1:
        return np.negative(ip, out=ip)
    qn = np.einsum("ij,ij->i", Q, Q)
    xn = np.einsum("ij,ij->i", X, X)
    d = qn[:, None] - 2.0 * ip + xn[None, :]
    np.maximum(d, 0.0, out=d)
    return d.astype(np.float32, copy=False)


def distances(q: np.ndarray, X: np.ndarray, metric_code: int) -> np.ndarray:
    return pairwise(q[None, :], X, metric_code)[0]


def distances_gather(q: np.ndarray, X: np.ndarray, rows: np.ndarray, metric_code: int):
    return distances(q, X[rows], metric_code)


def topk(dist: np.ndarray, k: int):
    """Row-wise k smallest (ascending, ties by index), padded with (-1, inf); NaN never ranks."""
    nq, n = dist.shape
    idx = np.full((nq, k), -1, dtype=np.int64)
    out = np.full((nq, k), np.inf, dtype=np.float32)
    d = np.where(np.isnan(dist), np.inf, dist)
    valid = ~np.isnan(dist)
    for i in range(nq):
        order = np.lexsort((np.arange(n), d[i]))
        order = order[valid[i, order]][:k]
        idx[i, : len(order)] = order
        out[i, : len(order)] = dist[i, order]
    return idx, out
