# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._hnsw: Cython wrapper over the HNSW core in native/_hnsw_impl.c.

``HNSWCore`` owns the C graph (vectors, links, levels, states). Inputs are validated by
``vecdb.index.hnsw`` (the Python boundary); every bulk call here releases the GIL, so several
Python threads can run ``add_batch``/``search_batch`` on one batch at once: they share an int64
work counter and each takes the next row atomically.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, int32_t, uint8_t
from libc.string cimport memcpy
from vd_kernels cimport *

cnp.import_array()
vd_init()

cdef extern from "_hnsw_impl.h" nogil:
    ctypedef struct hn_t:
        pass
    enum:
        HN_GRAPH
        HN_TWO_HOP
        HN_LOCAL
    hn_t *hn_new(int32_t dim, int32_t metric, int32_t M, int32_t efc, int32_t extend, int32_t keep)
    void hn_free(hn_t *h)
    int hn_reserve(hn_t *h, int64_t cap)
    int64_t hn_capacity(const hn_t *h)
    int hn_add_batch(hn_t *h, const float *X, const int64_t *slots, const int32_t *levels,
                     int64_t n, int64_t *next)
    int64_t hn_remove(hn_t *h, const int64_t *slots, int64_t n)
    int hn_search_batch(hn_t *h, const float *Q, int64_t nq, int32_t k, int32_t ef,
                        const uint8_t *bitmap, int64_t nbytes, int32_t mode,
                        const int64_t *members, int64_t nmembers, const int64_t *seeds,
                        int64_t nseeds, float local_min, int64_t *out_id, float *out_d,
                        int64_t *next, int64_t *stats)
    void hn_exact(hn_t *h, const float *Q, int64_t nq, int32_t k, const int64_t *rows,
                  int64_t nrows, int64_t *out_id, float *out_d)
    void hn_topk_block(const float *S, int64_t nq, int64_t nb, const int64_t *rows,
                       const float *xn, int32_t metric, int32_t k, float *hd, int64_t *hi)
    void hn_topk_finish(int64_t nq, int32_t k, const float *qn, int32_t metric, float *hd,
                        int64_t *hi)
    void hn_gather(hn_t *h, const int64_t *rows, int64_t n, float *out)
    int64_t hn_memory(const hn_t *h)
    int32_t hn_entry(const hn_t *h)
    int32_t hn_maxlevel(const hn_t *h)
    int32_t hn_level(const hn_t *h, int64_t s)
    int32_t hn_state(const hn_t *h, int64_t s)
    float *hn_vector(hn_t *h, int64_t s)
    int32_t *hn_links(hn_t *h, int64_t s, int32_t level)
    int hn_restore_node(hn_t *h, int64_t s, const float *v, int32_t level, int32_t state)
    void hn_set_entry(hn_t *h, int32_t entry, int32_t maxlevel)

GRAPH = HN_GRAPH
TWO_HOP = HN_TWO_HOP
LOCAL = HN_LOCAL


cdef class HNSWCore:
    """The mutable HNSW graph (see _hnsw_impl.h for layout, states and locking)."""

    cdef hn_t *h
    cdef readonly int dim, metric, M

    def __cinit__(self, int dim, int metric, int M, int ef_construction, bint extend=False,
                  bint keep=False):
        self.h = hn_new(dim, metric, M, ef_construction, extend, keep)
        if self.h == NULL:
            raise MemoryError("hnsw: out of memory")
        self.dim, self.metric, self.M = dim, metric, M

    def __dealloc__(self):
        if self.h != NULL:
            hn_free(self.h)
            self.h = NULL

    @property
    def capacity(self) -> int:
        return hn_capacity(self.h)

    def reserve(self, int64_t cap) -> None:
        cdef int rc
        with nogil:
            rc = hn_reserve(self.h, cap)
        if rc:
            raise MemoryError("hnsw: out of memory growing the graph")

    def add_batch(self, const float[:, ::1] X, const int64_t[::1] slots,
                  const int32_t[::1] levels, int64_t[::1] counter) -> None:
        """Insert X[i] at slots[i]; callable from several threads sharing ``counter``."""
        cdef int rc
        cdef int64_t n = X.shape[0]
        if n == 0:
            return
        with nogil:
            rc = hn_add_batch(self.h, &X[0, 0], &slots[0], &levels[0], n, &counter[0])
        if rc:
            raise MemoryError("hnsw: out of memory during insert")

    def remove(self, const int64_t[::1] slots) -> int:
        cdef int64_t r
        if slots.shape[0] == 0:
            return 0
        with nogil:
            r = hn_remove(self.h, &slots[0], slots.shape[0])
        return r

    def search_batch(self, const float[:, ::1] Q, int k, int ef, const uint8_t[::1] bitmap,
                     int mode, const int64_t[::1] members, int64_t[:, ::1] out_id,
                     float[:, ::1] out_d, int64_t[::1] counter, int64_t[::1] stats,
                     const int64_t[::1] seeds=None, float local_min=0) -> None:
        """k-NN of the rows of Q taken from ``counter``; bitmap/members/seeds may be None.
        ``stats`` holds 3 counters (distances, exact fallbacks, seeded walks)."""
        cdef const uint8_t *bm = NULL
        cdef int64_t nb = 0
        cdef const int64_t *mem = NULL
        cdef int64_t nmem = 0
        cdef const int64_t *sd = NULL
        cdef int64_t nsd = 0
        cdef int rc
        cdef int64_t nq = Q.shape[0]
        if nq == 0:
            return
        if stats.shape[0] < 3:
            raise ValueError("stats needs 3 counters")
        if bitmap is not None and bitmap.shape[0] > 0:
            bm = &bitmap[0]
            nb = bitmap.shape[0]
        if members is not None and members.shape[0] > 0:
            mem = &members[0]
            nmem = members.shape[0]
        if seeds is not None and seeds.shape[0] > 0:
            sd = &seeds[0]
            nsd = seeds.shape[0]
        with nogil:
            rc = hn_search_batch(self.h, &Q[0, 0], nq, k, ef, bm, nb, mode, mem, nmem, sd, nsd,
                                 local_min, &out_id[0, 0], &out_d[0, 0], &counter[0], &stats[0])
        if rc:
            raise MemoryError("hnsw: out of memory during search")

    def exact(self, const float[:, ::1] Q, int k, const int64_t[::1] rows):
        """Exact k-NN of Q over ``rows`` (live slots only), padded with (-1, inf)."""
        nq = Q.shape[0]
        out_id = np.full((nq, k), -1, dtype=np.int64)
        out_d = np.full((nq, k), np.inf, dtype=np.float32)
        cdef int64_t[:, ::1] oi = out_id
        cdef float[:, ::1] od = out_d
        if nq == 0 or rows.shape[0] == 0:
            return out_id, out_d
        with nogil:
            hn_exact(self.h, &Q[0, 0], Q.shape[0], k, &rows[0], rows.shape[0], &oi[0, 0],
                     &od[0, 0])
        return out_id, out_d

    def topk_block(self, const float[:, ::1] S, const int64_t[::1] rows, const float[::1] xn,
                   float[:, ::1] hd, int64_t[:, ::1] hi) -> None:
        """Merge a GEMM block of inner products S [nq, len(rows)] into the heaps hd/hi [nq, k]
        (start them at (+inf, -1)); ``xn``: squared norms of the rows (l2 only)."""
        cdef int64_t nq = S.shape[0], nb = S.shape[1]
        if S.shape[1] != rows.shape[0] or hd.shape[0] != nq or hi.shape[0] != nq \
                or hd.shape[1] != hi.shape[1] or hd.shape[1] > 1024:
            raise ValueError("topk_block: shape mismatch")
        if self.metric == 0 and xn.shape[0] != nb:
            raise ValueError("topk_block: xn must hold one norm per row for l2")
        if nq == 0 or nb == 0 or hd.shape[1] == 0:
            return
        with nogil:
            hn_topk_block(&S[0, 0], nq, nb, &rows[0], &xn[0] if xn.shape[0] else NULL,
                          self.metric, <int32_t>hd.shape[1], &hd[0, 0], &hi[0, 0])

    def topk_finish(self, const float[::1] qn, float[:, ::1] hd, int64_t[:, ::1] hi) -> None:
        """Sort the heaps ascending, add |q|^2 (l2), pad empty entries with (-1, inf)."""
        cdef int64_t nq = hd.shape[0]
        if nq == 0 or hd.shape[1] == 0:
            return
        if self.metric == 0 and qn.shape[0] != nq:
            raise ValueError("topk_finish: qn must hold one norm per query for l2")
        with nogil:
            hn_topk_finish(nq, <int32_t>hd.shape[1], &qn[0] if qn.shape[0] else NULL,
                           self.metric, &hd[0, 0], &hi[0, 0])

    def gather(self, const int64_t[::1] rows):
        """Copies of the vectors of ``rows`` (all < capacity), taken under the read lock."""
        out = np.empty((rows.shape[0], self.dim), dtype=np.float32)
        cdef float[:, ::1] o = out
        if rows.shape[0]:
            with nogil:
                hn_gather(self.h, &rows[0], rows.shape[0], &o[0, 0])
        return out

    def memory_bytes(self) -> int:
        return hn_memory(self.h)

    @property
    def entry(self) -> int:
        return hn_entry(self.h)

    @property
    def maxlevel(self) -> int:
        return hn_maxlevel(self.h)

    def vectors(self, const int64_t[::1] slots):
        """Copies of the stored vectors of ``slots`` (caller checks they exist)."""
        out = np.empty((slots.shape[0], self.dim), dtype=np.float32)
        cdef float[:, ::1] o = out
        cdef Py_ssize_t i
        for i in range(slots.shape[0]):
            memcpy(&o[i, 0], hn_vector(self.h, slots[i]), self.dim * 4)
        return out

    # -- persistence ----------------------------------------------------------------------
    def export(self, int64_t high, int64_t lo=0, str which=None):
        """Arrays describing slots [lo, high): levels, states, vectors, level-0 links
        [high - lo, 2M+1], and the upper links of those nodes with level > 0 concatenated in
        slot order (level * (M+1) int32 each). ``which`` ("levels", "states", "vectors",
        "links0" or "links_up"): only that array, so a streaming writer builds one member's
        chunk at a time."""
        if lo < 0 or high < lo:
            raise ValueError(f"export: bad slot range [{lo}, {high})")
        if which is not None and which not in ("levels", "states", "vectors", "links0",
                                               "links_up"):
            raise ValueError(f"export: unknown array {which!r}")
        cdef int64_t n = high - lo, i, s
        cdef int32_t L, l
        cdef int M0 = 2 * self.M
        cdef bint want_v = which is None or which == "vectors"
        cdef bint want_l0 = which is None or which == "links0"
        cdef bint want_up = which is None or which == "links_up"
        levels = np.empty(n, dtype=np.int32)
        states = np.empty(n, dtype=np.uint8)
        cdef int32_t[::1] lv = levels
        cdef uint8_t[::1] st = states
        cdef int64_t nup = 0
        for i in range(n):
            s = lo + i
            lv[i] = hn_level(self.h, s)
            st[i] = <uint8_t>hn_state(self.h, s)
            if lv[i] > 0 and st[i] != 0:
                nup += lv[i]
        if which == "levels":
            return levels
        if which == "states":
            return states
        vecs = np.zeros((n if want_v else 0, self.dim), dtype=np.float32)
        l0 = np.zeros((n if want_l0 else 0, M0 + 1), dtype=np.int32)
        upper = np.zeros(nup * (self.M + 1) if want_up else 0, dtype=np.int32)
        cdef float[:, ::1] vv = vecs
        cdef int32_t[:, ::1] ll = l0
        cdef int32_t[::1] uu = upper
        cdef int64_t pos = 0
        for i in range(n):
            if st[i] == 0:
                continue
            s = lo + i
            if want_v:
                memcpy(&vv[i, 0], hn_vector(self.h, s), self.dim * 4)
            if want_l0:
                memcpy(&ll[i, 0], hn_links(self.h, s, 0), (M0 + 1) * 4)
            if want_up:
                L = lv[i]
                for l in range(1, L + 1):
                    memcpy(&uu[pos], hn_links(self.h, s, l), (self.M + 1) * 4)
                    pos += self.M + 1
        if which == "vectors":
            return vecs
        if which == "links0":
            return l0
        if which == "links_up":
            return upper
        return levels, states, vecs, l0, upper

    def restore(self, const int32_t[::1] levels, const uint8_t[::1] states,
                const float[:, ::1] vecs, const int32_t[:, ::1] l0, const int32_t[::1] upper,
                int entry, int maxlevel, int64_t lo=0) -> None:
        """Inverse of ``export``: restores slots [lo, lo + len(levels)) from that range's arrays
        (capacity must already cover them), then sets the entry point and max level (a
        streaming reader passes the final ones with every chunk)."""
        cdef int64_t i, n = levels.shape[0]
        cdef int64_t pos = 0, need = 0
        cdef int32_t l
        cdef int M0 = 2 * self.M
        if lo < 0 or lo + n > hn_capacity(self.h):
            raise ValueError(f"restore: slots [{lo}, {lo + n}) exceed the capacity")
        if states.shape[0] != n:
            raise ValueError("restore: levels and states differ in length")
        for i in range(n):
            if states[i] != 0:
                if levels[i] < 0:
                    raise ValueError(f"restore: slot {lo + i} has level {levels[i]}")
                need += levels[i]
        if n and (vecs.shape[0] != n or vecs.shape[1] != self.dim or l0.shape[0] != n
                  or l0.shape[1] != M0 + 1):
            raise ValueError("restore: vectors/links0 shapes do not match the graph")
        if upper.shape[0] < need * (self.M + 1):
            raise ValueError("restore: links_up is shorter than the levels need")
        for i in range(n):
            if states[i] == 0:
                continue
            if hn_restore_node(self.h, lo + i, &vecs[i, 0], levels[i], states[i]):
                raise MemoryError("hnsw: out of memory restoring the graph")
            memcpy(hn_links(self.h, lo + i, 0), &l0[i, 0], (M0 + 1) * 4)
            for l in range(1, levels[i] + 1):
                memcpy(hn_links(self.h, lo + i, l), &upper[pos], (self.M + 1) * 4)
                pos += self.M + 1
        hn_set_entry(self.h, entry, maxlevel)
