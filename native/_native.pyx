# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._native: thin typed wrappers over the C distance layer (native/vd_simd.c).

Inputs are validated by vecdb.kernels (the one boundary); these functions assume C-contiguous
float32 arrays of matching dimension and release the GIL for the whole computation.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t
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


cdef inline const float* _f32(cnp.ndarray a, int ndim, str name) except NULL:
    """Pointer to a C-contiguous float32 array of ``ndim`` dims (cheap C-level checks only)."""
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
            or cnp.PyArray_NDIM(a) != ndim:
        raise TypeError(f"{name}: expected a C-contiguous float32 array with {ndim} dims")
    return <const float*>cnp.PyArray_DATA(a)


cdef inline cnp.ndarray _empty_f32(Py_ssize_t n):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)


def distances(cnp.ndarray q, cnp.ndarray base, int metric):
    """out[i] = dist(q, base[i]) for every row (float32 [n])."""
    cdef const float* qp = _f32(q, 1, "q")
    cdef const float* bp = _f32(base, 2, "base")
    cdef Py_ssize_t n = base.shape[0], d = base.shape[1]
    if q.shape[0] != d:
        raise ValueError("dimension mismatch")
    cdef cnp.ndarray out = _empty_f32(n)
    cdef float* op = <float*>cnp.PyArray_DATA(out)
    if n:
        with nogil:
            vd_dist_block(qp, bp, n, d, metric, op)
    return out


def distances_gather(cnp.ndarray q, cnp.ndarray base, cnp.ndarray rows, int metric):
    """out[i] = dist(q, base[rows[i]]); rows int64, assumed in range (checked by vecdb.kernels)."""
    cdef const float* qp = _f32(q, 1, "q")
    cdef const float* bp = _f32(base, 2, "base")
    if cnp.PyArray_TYPE(rows) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(rows):
        raise TypeError("rows: expected C-contiguous int64")
    cdef Py_ssize_t n = rows.shape[0], d = base.shape[1]
    if q.shape[0] != d:
        raise ValueError("dimension mismatch")
    cdef const int64_t* rp = <const int64_t*>cnp.PyArray_DATA(rows)
    cdef cnp.ndarray out = _empty_f32(n)
    cdef float* op = <float*>cnp.PyArray_DATA(out)
    if n:
        with nogil:
            vd_dist_gather(qp, bp, rp, n, d, metric, op)
    return out


def pairwise(cnp.ndarray Q, cnp.ndarray X, int metric):
    """out[i, j] = dist(Q[i], X[j]) (float32 [nq, n])."""
    cdef const float* qp = _f32(Q, 2, "Q")
    cdef const float* xp = _f32(X, 2, "X")
    cdef Py_ssize_t nq = Q.shape[0], n = X.shape[0], d = X.shape[1]
    if Q.shape[1] != d:
        raise ValueError("dimension mismatch")
    out = np.empty((nq, n), dtype=np.float32)
    cdef float* op = <float*>cnp.PyArray_DATA(out)
    if nq and n:
        with nogil:
            vd_pairwise(qp, nq, xp, n, d, metric, op)
    return out


def topk(cnp.ndarray dist, Py_ssize_t k):
    """Row-wise k smallest of a float32 [nq, n] array, ascending; pads with (-1, inf)."""
    cdef const float* dp = _f32(dist, 2, "dist")
    cdef Py_ssize_t nq = dist.shape[0], n = dist.shape[1], i
    idx = np.empty((nq, k), dtype=np.int64)
    out = np.empty((nq, k), dtype=np.float32)
    cdef int64_t* ip = <int64_t*>cnp.PyArray_DATA(idx)
    cdef float* op = <float*>cnp.PyArray_DATA(out)
    if k and nq:
        with nogil:
            for i in range(nq):
                vd_topk(dp + i * n, n, k, ip + i * k, op + i * k)
    return idx, out


def distances_gather_many(cnp.ndarray q, cnp.ndarray base, cnp.ndarray rows, int metric):
    """out[j, i] = dist(q, base[rows[j, i]]) for a [m, r] int64 matrix of row sets.

    The graph-walk pattern as an index runs it: many small gathers back to back inside C, so the
    per-gather cost is measured without Python call overhead (used by bench.kernels).
    """
    cdef const float* qp = _f32(q, 1, "q")
    cdef const float* bp = _f32(base, 2, "base")
    if cnp.PyArray_TYPE(rows) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(rows) \
            or cnp.PyArray_NDIM(rows) != 2:
        raise TypeError("rows: expected a C-contiguous int64 [m, r] array")
    cdef Py_ssize_t m = rows.shape[0], r = rows.shape[1], d = base.shape[1], j
    if q.shape[0] != d:
        raise ValueError("dimension mismatch")
    cdef const int64_t* rp = <const int64_t*>cnp.PyArray_DATA(rows)
    out = np.empty((m, r), dtype=np.float32)
    cdef float* op = <float*>cnp.PyArray_DATA(out)
    with nogil:
        for j in range(m):
            vd_dist_gather(qp, bp, rp + j * r, r, d, metric, op + j * r)
    return out


cdef extern from "_native_heads_impl.h" nogil:
    void vdh_merge(const float *S, size_t m, size_t w, const int64_t *rows, const float *hsq,
                   const int64_t *ids, int code, size_t k, size_t cap, uint64_t *buf,
                   int64_t *cnt, float *thr)
    void vdh_finish(size_t n, size_t k, size_t cap, uint64_t *buf, const int64_t *cnt,
                    float *out_d, int64_t *out_i)


cdef inline int64_t* _i64(cnp.ndarray a, int ndim, str name) except NULL:
    """Pointer to a C-contiguous int64 array of ``ndim`` dims (cheap C-level checks only)."""
    if cnp.PyArray_TYPE(a) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
            or cnp.PyArray_NDIM(a) != ndim:
        raise TypeError(f"{name}: expected a C-contiguous int64 array with {ndim} dims")
    return <int64_t*>cnp.PyArray_DATA(a)


cdef inline uint64_t* _u64(cnp.ndarray a, str name) except NULL:
    if cnp.PyArray_TYPE(a) != cnp.NPY_UINT64 or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
            or cnp.PyArray_NDIM(a) != 2:
        raise TypeError(f"{name}: expected a C-contiguous uint64 array with 2 dims")
    return <uint64_t*>cnp.PyArray_DATA(a)


def heads_merge(cnp.ndarray S, cnp.ndarray rows, cnp.ndarray hsq, cnp.ndarray ids, int code,
                Py_ssize_t k, cnp.ndarray buf, cnp.ndarray cnt, cnp.ndarray thr):
    """Merge one head group's scores into per-vector top-``k`` candidate buffers (the map
    stage's ``HeadGroups``): ``S[j, h]`` = x.head_h for vector ``rows[j]``, distance up to the
    row constant ``hsq[h] - 2 S[j, h]`` (l2, ``code`` 0) or ``-S[j, h]`` (ip), head id
    ``ids[h]`` (0 <= id < 2^32). ``buf`` uint64 [n, cap >= k + 16], ``cnt`` int64 [n] (zeros)
    and ``thr`` float32 [n] (+inf) are the buffers (native/_native_heads_impl.c);
    ``heads_finish`` reads the result out."""
    cdef const float* sp = _f32(S, 2, "S")
    cdef const float* hp = _f32(hsq, 1, "hsq")
    cdef float* tp = <float*>_f32(thr, 1, "thr")
    cdef const int64_t* rp = _i64(rows, 1, "rows")
    cdef const int64_t* idp = _i64(ids, 1, "ids")
    cdef uint64_t* bp = _u64(buf, "buf")
    cdef int64_t* cp = _i64(cnt, 1, "cnt")
    cdef Py_ssize_t m = S.shape[0], w = S.shape[1], n = buf.shape[0], cap = buf.shape[1], j
    if rows.shape[0] != m or hsq.shape[0] != w or ids.shape[0] != w or cnt.shape[0] != n \
            or thr.shape[0] != n:
        raise ValueError("heads_merge: shape mismatch")
    if k < 1 or cap < k + 16:
        raise ValueError("heads_merge: need 1 <= k and cap >= k + 16")
    for j in range(m):
        if rp[j] < 0 or rp[j] >= n or cp[rp[j]] < 0 or cp[rp[j]] > cap:
            raise ValueError("heads_merge: row or count out of range")
    for j in range(w):
        if idp[j] < 0 or idp[j] > 0xFFFFFFFF:
            raise ValueError("heads_merge: head id out of range")
    if m and w:
        with nogil:
            vdh_merge(sp, m, w, rp, hp, idp, code, k, cap, bp, cp, tp)


def heads_finish(cnp.ndarray buf, cnp.ndarray cnt, Py_ssize_t k):
    """The ``k`` best of each row's buffer (``heads_merge``), ascending by (distance, id),
    padded with (-1, inf): (ids int64 [n, k], distances float32 [n, k])."""
    cdef uint64_t* bp = _u64(buf, "buf")
    cdef const int64_t* cp = _i64(cnt, 1, "cnt")
    cdef Py_ssize_t n = buf.shape[0], cap = buf.shape[1], j
    if cnt.shape[0] != n:
        raise ValueError("heads_finish: shape mismatch")
    if k < 1 or cap < k + 16:
        raise ValueError("heads_finish: need 1 <= k and cap >= k + 16")
    for j in range(n):
        if cp[j] < 0 or cp[j] > cap:
            raise ValueError("heads_finish: count out of range")
    out_i = np.empty((n, k), dtype=np.int64)
    out_d = np.empty((n, k), dtype=np.float32)
    cdef int64_t* oi = <int64_t*>cnp.PyArray_DATA(out_i)
    cdef float* od = <float*>cnp.PyArray_DATA(out_d)
    with nogil:
        vdh_finish(n, k, cap, bp, cp, od, oi)
    return out_i, out_d
