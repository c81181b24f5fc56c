# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._spann: the native posting scan of the SPANN index (C core in native/_spann_impl.c).

``scan`` takes the posting lists one ``multi_get`` returned (a list of ``bytes``, ``None`` for a
missing list), checks every record's slot against the live flags, the version map and an
optional tenant bitmap, computes distances with the vd SIMD kernels and keeps a bounded top-k
with replica dedupe by slot, all without the GIL and with no Python object per record.
Validation of arguments is the caller's (``vecdb.index.spann``); this layer only checks what it
must to stay memory-safe (lengths, dims).
"""
import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, int32_t, uint8_t
from libc.stdlib cimport malloc, free
from vd_kernels cimport *

cnp.import_array()
vd_init()

cdef extern from "_spann_impl.h" nogil:
    int64_t sp_scan(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                    const int64_t *lens, int64_t nblocks, const uint8_t *live,
                    const uint8_t *ver, int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes,
                    int32_t k, int64_t *out_slot, float *out_dist, int64_t *stats)
    int64_t sp_scan_half(const float *q, int32_t dim, int32_t metric,
                         const uint8_t *const *blocks, const int64_t *lens, int64_t nblocks,
                         const uint8_t *live, const uint8_t *ver, int64_t nslots,
                         const uint8_t *bitmap, int64_t bm_bytes, int32_t k, int64_t *out_slot,
                         float *out_dist, int64_t *stats)
    void sp_force_scalar_widen(int on)
    int64_t sp_scan_fmt(const float *q, int32_t dim, int32_t metric, int fmt,
                        const float *sq_scale, const float *sq_offset,
                        const uint8_t *const *blocks, const int64_t *lens, int64_t nblocks,
                        const uint8_t *live, const uint8_t *ver, int64_t nslots,
                        const uint8_t *bitmap, int64_t bm_bytes, int32_t k, int64_t *out_slot,
                        float *out_dist, int64_t *stats)


def scan(const float[::1] q, list blocks, const uint8_t[::1] live, const uint8_t[::1] ver,
         bitmap, int k, int metric, int64_t[::1] out_slot, float[::1] out_dist,
         int64_t[::1] stats, int fmt=0, sq=None):
    """Top-k of the valid records in ``blocks`` for query ``q`` (see module doc).

    ``live``/``ver``: uint8 per slot (same length). ``bitmap``: packed little-endian uint8
    tenant bits or None. Writes ``out_slot``/``out_dist`` (length >= k, -1/inf padded) and
    ``stats`` = [bytes fetched, records scanned, records that passed the filter]; returns the
    number of results found. ``fmt``: the records' vector format, 0 = float32 (12 + 4*dim bytes
    per record), 1 = float16 (12 + 2*dim; ``True`` also means float16), 2 = SQ8 (12 + dim, one
    uint8 code per dimension; ``sq`` = (scale, offset), float32 [dim] each, value = offset +
    scale * code).
    """
    cdef Py_ssize_t nb = len(blocks), i
    cdef int64_t got, nbytes = 0
    cdef const uint8_t[::1] bm
    cdef const uint8_t *bmp = NULL
    cdef int64_t bm_bytes = 0
    cdef int64_t st[2]
    cdef const float[::1] sq_s
    cdef const float[::1] sq_o
    cdef const float *ps = NULL
    cdef const float *po = NULL
    cdef int32_t dim = <int32_t> q.shape[0]
    if live.shape[0] != ver.shape[0]:
        raise ValueError("live and ver must have the same length")
    if k < 0 or out_slot.shape[0] < k or out_dist.shape[0] < k or stats.shape[0] < 3:
        raise ValueError("output arrays are too short")
    if fmt not in (0, 1, 2):
        raise ValueError(f"fmt must be 0 (float32), 1 (float16) or 2 (sq8), got {fmt}")
    if fmt == 2:
        if sq is None or len(sq) != 2:
            raise ValueError("SQ8 records need sq = (scale, offset)")
        sq_s = sq[0]
        sq_o = sq[1]
        if sq_s.shape[0] != dim or sq_o.shape[0] != dim:
            raise ValueError("SQ8 scale and offset must have the query's dimension")
        if dim:
            ps = &sq_s[0]
            po = &sq_o[0]
    if bitmap is not None:
        bm = bitmap
        bmp = &bm[0] if bm.shape[0] else NULL
        bm_bytes = bm.shape[0]
        if bmp == NULL:  # an empty bitmap admits nothing
            out_slot[:k] = -1
            out_dist[:k] = np.inf
            stats[0] = stats[1] = stats[2] = 0
            return 0
    cdef const uint8_t **ptrs = <const uint8_t **> malloc(max(nb, 1) * sizeof(uint8_t *))
    cdef int64_t *lens = <int64_t *> malloc(max(nb, 1) * sizeof(int64_t))
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        raise MemoryError()
    try:
        for i in range(nb):
            b = blocks[i]
            if b is None:
                ptrs[i] = NULL
                lens[i] = 0
            elif type(b) is bytes:
                ptrs[i] = <const uint8_t *> PyBytes_AS_STRING(b)
                lens[i] = PyBytes_GET_SIZE(b)
            else:
                raise TypeError(f"posting block {i} is {type(b).__name__}, not bytes")
            nbytes += lens[i]
        with nogil:  # ``blocks`` keeps every buffer alive for the call
            got = sp_scan_fmt(&q[0], dim, metric, fmt, ps, po, ptrs, lens, nb, &live[0],
                              &ver[0], live.shape[0], bmp, bm_bytes, k, &out_slot[0],
                              &out_dist[0], st)
    finally:
        free(ptrs)
        free(lens)
    if got == -2:
        raise MemoryError()
    if got < 0:
        raise ValueError("a posting block is not a whole number of records (corrupt list?)")
    stats[0] = nbytes
    stats[1] = st[0]
    stats[2] = st[1]
    return got


cdef extern from "_spann_impl.h" nogil:
    void sp_rng_select(const int64_t *cand, const float *cdist, const float *H, int64_t n,
                       int32_t C, int32_t dim, int32_t metric, int32_t replicas, float eps1,
                       uint8_t *keep)


def rng_select(const int64_t[:, ::1] cand, const float[:, ::1] cdist, const float[:, :, ::1] H,
               int metric, int replicas, float one_plus_eps1, uint8_t[:, ::1] keep):
    """SPANN's RNG replica rule over a block (see ``_spann_parts.rng_select``); fills ``keep``."""
    cdef int64_t n = cand.shape[0]
    cdef int32_t C = <int32_t> cand.shape[1]
    if (cdist.shape[0] != n or cdist.shape[1] != C or H.shape[0] != n or H.shape[1] != C
            or keep.shape[0] != n or keep.shape[1] != C):
        raise ValueError("rng_select: shapes of cand, cdist, H and keep disagree")
    if n == 0 or C == 0:
        return
    with nogil:
        sp_rng_select(&cand[0, 0], &cdist[0, 0], &H[0, 0, 0], n, C, <int32_t> H.shape[2],
                      metric, replicas, one_plus_eps1, &keep[0, 0])


cdef extern from "_spann_impl.h" nogil:
    int64_t sp_rng_select_heads(const int64_t *cand, const float *cdist, const float *H,
                                int64_t m, int64_t n, int32_t C, int32_t dim, int32_t metric,
                                int32_t replicas, float eps1, int64_t *out, uint8_t *keep)


def rng_select_heads(X, const float[:, ::1] H, const int64_t[:, ::1] cand,
                     const float[:, ::1] cdist, int replicas, double eps1, int metric,
                     uint8_t[:, ::1] keep=None):
    """SPANN's RNG replica rule reading head vectors by id from ``H``: no gathered copy.

    ``X`` [n, d] float32: the vectors (only its shape is checked, may be None: the rule needs the
    vector-to-head distances ``cdist``, not the vectors). ``H`` [m, d] float32 C-contiguous: row
    ``i`` is head ``i``. ``cand`` [n, C] int64 candidate head ids sorted by ``cdist`` [n, C]
    float32 ascending, -1 padded. ``metric``: 0 = squared L2, 1 = negated ip. Returns int64
    [n, replicas]: the chosen head ids in candidate order, -1 padded. ``keep`` (optional uint8
    [n, C]) also receives the choice as a 0/1 mask. Same decisions as
    ``_spann_parts.rng_select`` (tested): candidate j is kept when it is within ``(1+eps1)`` of
    the nearest (``2+2d`` for ip), fewer than ``replicas`` are kept, and no kept head is closer
    to it than the vector is. The GIL is released for the whole rule.
    """
    cdef int64_t n = cand.shape[0], m = H.shape[0], rc
    cdef int32_t C = <int32_t> cand.shape[1], dim = <int32_t> H.shape[1]
    cdef float f = <float> (1.0 + eps1)
    cdef uint8_t *kp = NULL
    if replicas < 1:
        raise ValueError(f"rng_select_heads: replicas must be >= 1, got {replicas}")
    if metric not in (0, 1):
        raise ValueError(f"rng_select_heads: metric must be 0 (l2) or 1 (ip), got {metric}")
    if not (eps1 >= 0):
        raise ValueError(f"rng_select_heads: eps1 must be >= 0, got {eps1}")
    if cdist.shape[0] != n or cdist.shape[1] != C:
        raise ValueError("rng_select_heads: cand and cdist shapes differ")
    if X is not None and (X.ndim != 2 or X.shape[0] != n or X.shape[1] != dim):
        raise ValueError("rng_select_heads: X must be [n, d] like cand rows and H columns")
    if keep is not None:
        if keep.shape[0] != n or keep.shape[1] != C:
            raise ValueError("rng_select_heads: keep must have cand's shape")
        if n and C:
            kp = &keep[0, 0]
    out = np.full((n, replicas), -1, dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    if n == 0 or C == 0:
        return out
    if m == 0:
        if np.any(np.asarray(cand) >= 0):
            raise ValueError("rng_select_heads: a candidate id is not a row of H")
        if kp != NULL:
            keep[:, :] = 0
        return out
    with nogil:
        rc = sp_rng_select_heads(&cand[0, 0], &cdist[0, 0], &H[0, 0], m, n, C, dim, metric,
                                 replicas, f, &o[0, 0], kp)
    if rc < 0:
        raise ValueError("rng_select_heads: a candidate id is not a row of H")
    return out


def _force_scalar_widen(bint on):
    """Tests: widen float16 postings with the portable scalar code even where F16C exists."""
    sp_force_scalar_widen(on)
