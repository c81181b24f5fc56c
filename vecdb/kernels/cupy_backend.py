"""GPU backend on CuPy: batched distances, streaming brute-force top-k, k-means assignment.

Imported lazily (only when ``backend="cupy"`` is asked for), so importing vecdb never needs cupy or
a GPU. The base is streamed to the device in chunks of ``chunk_rows`` rows, so data larger than
GPU memory works: each chunk yields a per-query top-k that is merged with the running top-k on the
device; only [nq, k] results come back to the host.
"""

from __future__ import annotations

import numpy as np

from vecdb.errors import BackendUnavailable

try:  # pragma: no cover - exercised on GPU machines only
    import cupy as cp

    _HAVE = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # ImportError, CUDA driver errors
    cp = None
    _HAVE = False


def available() -> bool:
    return _HAVE


def _require():
    if not _HAVE:
        raise BackendUnavailable("backend 'cupy' needs cupy and a CUDA GPU; install vecdb[gpu]")


def _dist_dev(Qd, Xd, metric_code: int, xn=None):
    """Distances on the device between Qd [nq, d] and Xd [n, d] (float32)."""
    ip = Qd @ Xd.T
    if metric_code == 1:
        return -ip
    qn = (Qd * Qd).sum(axis=1)
    if xn is None:
        xn = (Xd * Xd).sum(axis=1)
    d = qn[:, None] - 2.0 * ip + xn[None, :]
    return cp.maximum(d, 0.0)


def _topk_dev(D, k: int, offset: int = 0):
    """Per-row k smallest on the device, ascending; returns (idx + offset, dist)."""
    n = D.shape[1]
    kk = min(k, n)
    if kk < n:
        part = cp.argpartition(D, kk - 1, axis=1)[:, :kk]
    else:
        part = cp.broadcast_to(cp.arange(n), (D.shape[0], n))
    pd = cp.take_along_axis(D, part, axis=1)
    order = cp.argsort(pd, axis=1)
    return cp.take_along_axis(part, order, axis=1).astype(cp.int64) + offset, cp.take_along_axis(
        pd, order, axis=1
    )


def pairwise(Q: np.ndarray, X: np.ndarray, metric_code: int) -> np.ndarray:
    _require()
    return cp.asnumpy(_dist_dev(cp.asarray(Q), cp.asarray(X), metric_code)).astype(np.float32)


def distances(q: np.ndarray, X: np.ndarray, metric_code: int) -> np.ndarray:
    return pairwise(q[None, :], X, metric_code)[0]


def distances_gather(q, X, rows, metric_code: int) -> np.ndarray:
    return distances(q, X[rows], metric_code)


def topk(dist: np.ndarray, k: int):
    _require()
    D = cp.asarray(dist)
    D = cp.where(cp.isnan(D), cp.inf, D)
    idx, d = _topk_dev(D, k)
    idx, d = cp.asnumpy(idx), cp.asnumpy(d).astype(np.float32)
    return _pad(idx, d, k)


def _pad(idx: np.ndarray, d: np.ndarray, k: int):
    nq = idx.shape[0]
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    out_i[:, : idx.shape[1]] = idx
    out_d[:, : d.shape[1]] = d
    out_i[~np.isfinite(out_d)] = -1
    return out_i, out_d


def search(
    Q: np.ndarray,
    X: np.ndarray,
    k: int,
    metric_code: int,
    chunk_rows: int = 1 << 20,
    query_batch: int = 4096,
):
    """Exact top-k of every query over X, streaming X in chunks (X may exceed GPU memory)."""
    _require()
    nq, n = Q.shape[0], X.shape[0]
    res_i = np.full((nq, k), -1, dtype=np.int64)
    res_d = np.full((nq, k), np.inf, dtype=np.float32)
    stream_chunks = [(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    resident = len(stream_chunks) == 1
    Xd_res = cp.asarray(X) if resident and n else None
    for q0 in range(0, nq, query_batch):
        Qd = cp.asarray(Q[q0 : q0 + query_batch])
        best_i = cp.full((Qd.shape[0], 0), -1, dtype=cp.int64)
        best_d = cp.full((Qd.shape[0], 0), cp.inf, dtype=cp.float32)
        for s, e in stream_chunks:
            Xd = Xd_res if resident else cp.asarray(X[s:e])
            ci, cd = _topk_dev(_dist_dev(Qd, Xd, metric_code), k, offset=s)
            best_i = cp.concatenate([best_i, ci], axis=1)
            best_d = cp.concatenate([best_d, cd.astype(cp.float32)], axis=1)
            sel, best_d = _topk_dev(best_d, k)
            best_i = cp.take_along_axis(best_i, sel, axis=1)
        ri, rd = _pad(cp.asnumpy(best_i), cp.asnumpy(best_d).astype(np.float32), k)
        res_i[q0 : q0 + len(ri)] = ri
        res_d[q0 : q0 + len(rd)] = rd
    return res_i, res_d


def kmeans_assign(
    X: np.ndarray, centroids: np.ndarray, metric_code: int = 0, chunk_rows: int = 1 << 20
):
    """Nearest centroid of every row of X (the k-means assignment step), streamed in chunks."""
    _require()
    C = cp.asarray(centroids)
    cn = (C * C).sum(axis=1)
    labels = np.empty(X.shape[0], dtype=np.int64)
    dists = np.empty(X.shape[0], dtype=np.float32)
    for s in range(0, X.shape[0], chunk_rows):
        Xd = cp.asarray(X[s : s + chunk_rows])
        D = _dist_dev(Xd, C, metric_code, xn=cn)
        a = cp.argmin(D, axis=1)
        labels[s : s + len(a)] = cp.asnumpy(a)
        dists[s : s + len(a)] = cp.asnumpy(cp.take_along_axis(D, a[:, None], axis=1)[:, 0])
    return labels, dists
