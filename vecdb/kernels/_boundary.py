"""The one boundary where vectors enter vecdb: dtype, shape and finiteness are checked here, once.

Everything below this layer (native kernels, indexes) assumes C-contiguous float32 with the right
dimension and finite values, so no silent casts happen deep inside.
"""

from __future__ import annotations

import numpy as np

from vecdb.errors import DimensionMismatch, InvalidArgument, NonFiniteValue

METRICS = ("l2", "ip", "cosine")
# Metric code used by the native layer: 0 = squared L2, 1 = negative inner product.
METRIC_CODE = {"l2": 0, "ip": 1, "cosine": 1}


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is ``l2``, ``ip`` or ``cosine``; raise InvalidArgument otherwise."""
    if metric not in METRIC_CODE:
        raise InvalidArgument(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def as_matrix(x, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """Convert ``x`` to a C-contiguous float32 [n, d] array, validating dimension and finiteness.

    A 1-D input is treated as one row. Integer and float64 inputs are converted explicitly.
    """
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged lists and the like
        raise InvalidArgument(f"{name}: cannot be read as a numeric array ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InvalidArgument(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise InvalidArgument(f"{name}: complex values are not supported")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise InvalidArgument(f"{name}: expected a 2-D array [n, dim], got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise DimensionMismatch(f"{name}: expected dimension {dim}, got {a.shape[1]}")
    if a.shape[1] == 0:
        raise InvalidArgument(f"{name}: dimension must be at least 1")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
        raise NonFiniteValue(f"{name}: row {bad} contains NaN or infinity")
    return a


def as_vector(x, dim: int | None = None, name: str = "query") -> np.ndarray:
    """Validate one vector; returns C-contiguous float32 [d]."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise InvalidArgument(f"{name}: expected a 1-D vector, got shape {a.shape}")
    return as_matrix(a, dim, name)[0]


def normalize_rows(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """L2-normalise rows (cosine metric). A zero row has no direction: InvalidArgument."""
    norms = np.linalg.norm(x, axis=1)
    if x.shape[0] and (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise InvalidArgument(f"{name}: row {bad} is all zeros; cosine similarity is undefined")
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def prepare(x, dim: int | None, metric: str, name: str = "vectors") -> np.ndarray:
    """Validate + (for cosine) normalise: the single entry point indexes and the engine use."""
    a = as_matrix(x, dim, name)
    if metric == "cosine":
        a = normalize_rows(a, name)
    return a


def as_rows(rows, n: int, name: str = "rows") -> np.ndarray:
    """Validate row indices into a base of ``n`` rows; returns C-contiguous int64."""
    r = np.asarray(rows)
    if r.ndim != 1 or not (np.issubdtype(r.dtype, np.integer) or r.size == 0):
        raise InvalidArgument(f"{name}: expected a 1-D integer array")
    r = np.ascontiguousarray(r, dtype=np.int64)
    if r.size and (r.min() < 0 or r.max() >= n):
        raise InvalidArgument(f"{name}: index out of range [0, {n})")
    return r


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    return int(k)
