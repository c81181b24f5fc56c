# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._native: thin typed wrappers over the C distance layer (native/vd_simd.c).

Inputs are validated by vecdb.kernels (the one boundary); these functions assume C-contiguous
float32 arrays of matching dimension and release the GIL for the whole computation.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t
from vd_kernels cimport *

cnp.import_array()
vd_init()

LEVELS = tuple(vd_level_name(i).decode() for i in range(VD_NLEVELS))


def level() -> str:
    """Name of the SIMD level in use by this module."""
    return vd_level_name(vd_level()).decode()


def compiled_levels() -> list:
    return [LEVELS[i] for i in range(VD_NLEVELS) if vd_compiled(i)]


def supported_levels() -> list:
    return [LEVELS[i] for i in range(VD_NLEVELS) if vd_supported(i)]


def set_level(str name) -> None:
    """Force a SIMD level (tests use this to exercise every path the CPU has)."""
    if name not in LEVELS or vd_set_level(LEVELS.index(name)) != 0:
        raise ValueError(f"SIMD level {name!r} is not available on this CPU/build")


def distances(const float[::1] q, const float[:, ::1] base, int metric):
    cdef Py_ssize_t n = base.shape[0], d = base.shape[1]
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    if n:
        with nogil:
            vd_dist_block(&q[0], &base[0, 0], n, d, metric, &o[0])
    return out


def distances_gather(const float[::1] q, const float[:, ::1] base, const int64_t[::1] rows,
                     int metric):
    cdef Py_ssize_t n = rows.shape[0], d = base.shape[1]
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    if n:
        with nogil:
            vd_dist_gather(&q[0], &base[0, 0], &rows[0], n, d, metric, &o[0])
    return out


def pairwise(const float[:, ::1] Q, const float[:, ::1] X, int metric):
    cdef Py_ssize_t nq = Q.shape[0], n = X.shape[0], d = X.shape[1]
    out = np.empty((nq, n), dtype=np.float32)
    cdef float[:, ::1] o = out
    if nq and n:
        with nogil:
            vd_pairwise(&Q[0, 0], nq, &X[0, 0], n, d, metric, &o[0, 0])
    return out


def topk(const float[:, ::1] dist, Py_ssize_t k):
    """Row-wise k smallest, ascending; pads with (-1, inf)."""
    cdef Py_ssize_t nq = dist.shape[0], n = dist.shape[1], i
    idx = np.empty((nq, k), dtype=np.int64)
    out = np.empty((nq, k), dtype=np.float32)
    cdef int64_t[:, ::1] iv = idx
    cdef float[:, ::1] ov = out
    if k and nq:
        with nogil:
            for i in range(nq):
                vd_topk(&dist[i, 0] if n else NULL, n, k, &iv[i, 0], &ov[i, 0])
    return idx, out
