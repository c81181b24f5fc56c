"""vecdb.kernels: the one distance / top-k API used by every index and backend.

    distances(query, base, metric)              one-to-many          -> float32 [n]
    distances_gather(query, base, rows, metric) graph-walk gather    -> float32 [len(rows)]
    pairwise(queries, base, metric)             many-to-many         -> float32 [nq, n]
    topk(dist, k)                               k smallest per row   -> (int64 idx, float32 dist)
    search(queries, base, k, metric)            exact top-k          -> (int64 idx, float32 dist)

Distances follow one convention everywhere: squared L2 for ``l2``; the negated inner product for
``ip`` and ``cosine`` (cosine = ip on L2-normalised vectors), so smaller is always closer.

Backends: ``native`` (Cython + C SIMD, the default), ``numpy`` (reference), ``cupy`` (GPU, lazily
imported, only when asked for). Inputs are validated once here (``_boundary``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from vecdb.errors import BackendUnavailable, InvalidArgument
from vecdb.kernels import numpy_backend
from vecdb.kernels._boundary import (
    METRIC_CODE,
    METRICS,
    as_matrix,
    as_rows,
    as_vector,
    check_k,
    check_metric,
    normalize_rows,
    prepare,
)

try:
    from vecdb import _native
except ImportError:  # pragma: no cover - only when the extension was not built
    _native = None

BACKENDS = ("native", "numpy", "cupy")

__all__ = [
    "METRICS",
    "BACKENDS",
    "distances",
    "distances_gather",
    "pairwise",
    "topk",
    "search",
    "kmeans_assign",
    "info",
    "set_simd_level",
    "as_matrix",
    "as_vector",
    "as_rows",
    "prepare",
    "normalize_rows",
    "check_metric",
    "check_k",
    "metric_code",
]


def metric_code(metric: str) -> int:
    """Native metric code: 0 = squared L2, 1 = negated inner product (ip and cosine)."""
    return METRIC_CODE[check_metric(metric)]


def _backend(name: str | None) -> tuple[str, ModuleType]:
    if name is None:
        name = "native" if _native is not None else "numpy"
    if name == "native":
        if _native is None:
            raise BackendUnavailable("the native extension vecdb._native is not built")
        return name, _native
    if name == "numpy":
        return name, numpy_backend
    if name == "cupy":
        mod = importlib.import_module("vecdb.kernels.cupy_backend")
        if not mod.available():
            raise BackendUnavailable(
                "backend 'cupy' needs cupy and a CUDA GPU; pip install vecdb[gpu]"
            )
        return name, mod
    raise InvalidArgument(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def _inputs(queries, base, metric: str, qname: str, one: bool):
    code = metric_code(metric)
    X = as_matrix(base, None, "base")
    Q = as_vector(queries, X.shape[1], qname) if one else as_matrix(queries, X.shape[1], qname)
    if metric == "cosine":
        X = normalize_rows(X, "base")
        Q = normalize_rows(Q[None, :], qname)[0] if one else normalize_rows(Q, qname)
    return Q, X, code


def distances(query, base, metric: str = "l2", backend: str | None = None) -> np.ndarray:
    """Distances from one query to every row of ``base`` (float32 [n])."""
    q, X, code = _inputs(query, base, metric, "query", one=True)
    return _backend(backend)[1].distances(q, X, code)


def distances_gather(
    query, base, rows, metric: str = "l2", backend: str | None = None
) -> np.ndarray:
    """Distances from one query to ``base[rows]`` without copying the rows (float32 [len(rows)])."""
    q, X, code = _inputs(query, base, metric, "query", one=True)
    r = as_rows(rows, X.shape[0])
    return _backend(backend)[1].distances_gather(q, X, r, code)


def pairwise(queries, base, metric: str = "l2", backend: str | None = None) -> np.ndarray:
    """All distances between ``queries`` [nq, d] and ``base`` [n, d] (float32 [nq, n])."""
    Q, X, code = _inputs(queries, base, metric, "queries", one=False)
    return _backend(backend)[1].pairwise(Q, X, code)


def topk(dist, k: int, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k smallest per row, ascending (ties by index), padded with (-1, inf); NaN never ranks.

    ``dist`` may be 1-D (one row) or 2-D; the output has the same number of dimensions.
    """
    k = check_k(k)
    d = np.asarray(dist)
    if d.ndim not in (1, 2) or not (
        np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)
    ):
        raise InvalidArgument("dist must be a 1-D or 2-D numeric array")
    one = d.ndim == 1
    d2 = np.ascontiguousarray(d.reshape(1, -1) if one else d, dtype=np.float32)
    idx, out = _backend(backend)[1].topk(d2, k)
    return (idx[0], out[0]) if one else (idx, out)


def search(
    queries, base, k: int, metric: str = "l2", backend: str | None = None, block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over ``base``: the flat-index scan, blocked to bound memory."""
    k = check_k(k)
    Q, X, code = _inputs(queries, base, metric, "queries", one=False)
    name, mod = _backend(backend)
    if name == "cupy":
        return mod.search(Q, X, k, code)
    return _blocked_search(mod, Q, X, k, code, block)


def _blocked_search(mod, Q, X, k, code, block):
    nq, n = Q.shape[0], X.shape[0]
    best_i = np.full((nq, k), -1, dtype=np.int64)
    best_d = np.full((nq, k), np.inf, dtype=np.float32)
    qb = max(1, min(nq, (1 << 24) // max(1, min(n, block))))
    for q0 in range(0, nq, qb):
        q1 = min(nq, q0 + qb)
        for s in range(0, n, block):
            D = mod.pairwise(Q[q0:q1], X[s : s + block], code)
            ci, cd = mod.topk(np.ascontiguousarray(D), k)
            ci = np.where(ci >= 0, ci + s, -1)
            mi = np.concatenate([best_i[q0:q1], ci], axis=1)
            md = np.concatenate([best_d[q0:q1], cd], axis=1)
            sel, sd = mod.topk(np.ascontiguousarray(np.where(mi >= 0, md, np.inf)), k)
            best_i[q0:q1] = np.where(sel >= 0, np.take_along_axis(mi, np.maximum(sel, 0), 1), -1)
            best_d[q0:q1] = sd
    best_i[~np.isfinite(best_d)] = -1
    return best_i, best_d


def kmeans_assign(X, centroids, metric: str = "l2", backend: str | None = None):
    """Nearest centroid for each row of X (the k-means assignment step used by SPANN/Curator)."""
    Xc, C, code = _inputs(X, centroids, metric, "vectors", one=False)
    name, mod = _backend(backend)
    if name == "cupy":
        return mod.kmeans_assign(Xc, C, code)
    labels = np.empty(Xc.shape[0], dtype=np.int64)
    dists = np.empty(Xc.shape[0], dtype=np.float32)
    step = max(1, (1 << 22) // max(1, C.shape[0]))
    for s in range(0, Xc.shape[0], step):
        D = mod.pairwise(Xc[s : s + step], C, code)
        a = np.argmin(D, axis=1)
        labels[s : s + len(a)] = a
        dists[s : s + len(a)] = D[np.arange(len(a)), a]
    return labels, dists


def info() -> dict:
    """The SIMD level in use, the levels compiled in / supported, and whether cupy is usable."""
    out = {"backend": "native" if _native is not None else "numpy"}
    if _native is not None:
        out.update(
            simd=_native.level(),
            compiled=_native.compiled_levels(),
            supported=_native.supported_levels(),
        )
    try:
        from vecdb.kernels import cupy_backend

        out["cupy"] = cupy_backend.available()
    except Exception:  # pragma: no cover
        out["cupy"] = False
    return out


def set_simd_level(level: str) -> None:
    """Force the SIMD level of the kernel API (tests; the env var VECDB_SIMD does it at import)."""
    if _native is None:
        raise BackendUnavailable("native extension not built")
    _native.set_level(level)
