# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._curator: Cython wrapper over the Curator core in native/_curator_impl.c.

``CuratorCore`` owns the C structure (tree, Bloom filters, per-tenant shortlists, leaf members,
per-slot tenant lists). Inputs are validated by ``vecdb.index.curator`` (the Python boundary);
every bulk operation here runs without the GIL. Vectors are not stored here: searches get the
index's vector matrix (float32 [capacity, dim], rows = slots) per call, so vectors live once.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, int32_t
from vd_kernels cimport *

cnp.import_array()
vd_init()

cdef extern from *:
    """
    typedef struct cur_t cur_t;
    cur_t *cur_new(int32_t dim, int32_t metric, int32_t tmetric, int32_t nnodes, const float *cent,
                   const int32_t *parent, const int32_t *cptr, const int32_t *child,
                   int32_t bloom_bits, int32_t bloom_k, int32_t max_sl);
    void cur_free(cur_t *c);
    int cur_grant(cur_t *c, int64_t slot, int32_t tenant);
    int cur_revoke(cur_t *c, int64_t slot, int32_t tenant);
    int32_t cur_route(const cur_t *c, const float *v);
    int cur_place(cur_t *c, int64_t slot, int32_t leaf);
    int cur_unplace(cur_t *c, int64_t slot);
    int cur_restore_list(cur_t *c, int32_t node, int32_t tenant, const int64_t *ids, int32_t n);
    int cur_search(const cur_t *c, const float *base, const float *Q, int64_t nq, int32_t tenant,
                   int32_t k, double gamma1, double gamma2, int64_t *out_id, float *out_d,
                   int64_t *stats);
    void cur_rebuild_bloom(cur_t *c);
    int cur_bloom_has(const cur_t *c, int32_t node, int32_t tenant);
    int64_t cur_memory(const cur_t *c);
    int32_t cur_nsl(const cur_t *c);
    int64_t cur_nlive(const cur_t *c);
    int64_t cur_scap(const cur_t *c);
    int32_t cur_slot_leaf(const cur_t *c, int64_t s);
    int32_t cur_list_info(const cur_t *c, int32_t i, int32_t *node, int32_t *tenant,
                          const int64_t **ids);
    int32_t cur_slot_tenants(const cur_t *c, int64_t s, const int32_t **t);
    int32_t cur_leaf_members(const cur_t *c, int32_t leaf, const int64_t **ids);
    typedef struct cur_gate cur_gate;
    cur_gate *cur_gate_new(void);
    void cur_gate_free(cur_gate *g);
    int cur_gate_read(cur_gate *g);
    void cur_gate_read_done(cur_gate *g);
    void cur_gate_write(cur_gate *g);
    int cur_gate_write_done(cur_gate *g);
    int cur_gate_is_writer(cur_gate *g);
    """
    ctypedef struct cur_t:
        pass
    cur_t *cur_new(int32_t dim, int32_t metric, int32_t tmetric, int32_t nnodes, const float *cent,
                   const int32_t *parent, const int32_t *cptr, const int32_t *child,
                   int32_t bloom_bits, int32_t bloom_k, int32_t max_sl) nogil
    void cur_free(cur_t *c) nogil
    int cur_grant(cur_t *c, int64_t slot, int32_t tenant) nogil
    int cur_revoke(cur_t *c, int64_t slot, int32_t tenant) nogil
    int32_t cur_route(const cur_t *c, const float *v) nogil
    int cur_place(cur_t *c, int64_t slot, int32_t leaf) nogil
    int cur_unplace(cur_t *c, int64_t slot) nogil
    int cur_restore_list(cur_t *c, int32_t node, int32_t tenant, const int64_t *ids,
                         int32_t n) nogil
    int cur_search(const cur_t *c, const float *base, const float *Q, int64_t nq, int32_t tenant,
                   int32_t k, double gamma1, double gamma2, int64_t *out_id, float *out_d,
                   int64_t *stats) nogil
    void cur_rebuild_bloom(cur_t *c) nogil
    int cur_bloom_has(const cur_t *c, int32_t node, int32_t tenant) nogil
    int64_t cur_memory(const cur_t *c) nogil
    int32_t cur_nsl(const cur_t *c) nogil
    int64_t cur_nlive(const cur_t *c) nogil
    int64_t cur_scap(const cur_t *c) nogil
    int32_t cur_slot_leaf(const cur_t *c, int64_t s) nogil
    int32_t cur_list_info(const cur_t *c, int32_t i, int32_t *node, int32_t *tenant,
                          const int64_t **ids) nogil
    int32_t cur_slot_tenants(const cur_t *c, int64_t s, const int32_t **t) nogil
    int32_t cur_leaf_members(const cur_t *c, int32_t leaf, const int64_t **ids) nogil
    ctypedef struct cur_gate:
        pass
    cur_gate *cur_gate_new() nogil
    void cur_gate_free(cur_gate *g) nogil
    int cur_gate_read(cur_gate *g) nogil
    void cur_gate_read_done(cur_gate *g) nogil
    void cur_gate_write(cur_gate *g) nogil
    int cur_gate_write_done(cur_gate *g) nogil
    int cur_gate_is_writer(cur_gate *g) nogil


cdef class CuratorCore:
    """The mutable Curator structure over one fixed tree (see _curator_impl.c for invariants)."""

    cdef cur_t *c
    cdef readonly int dim, metric, nnodes

    def __cinit__(self, int dim, int metric, int tree_metric, float[:, ::1] centroids,
                  int32_t[::1] parent, int32_t[::1] child_ptr, int32_t[::1] children, int bloom_bits, int bloom_k,
                  int max_sl):
        cdef int nn = centroids.shape[0]
        if nn < 1 or centroids.shape[1] != dim or parent.shape[0] != nn \
                or child_ptr.shape[0] != nn + 1 or children.shape[0] < 1:
            raise ValueError("CuratorCore: inconsistent tree arrays")
        self.dim, self.metric, self.nnodes = dim, metric, nn
        self.c = cur_new(dim, metric, tree_metric, nn, &centroids[0, 0], &parent[0], &child_ptr[0],
                         &children[0], bloom_bits, bloom_k, max_sl)
        if self.c == NULL:
            raise MemoryError("CuratorCore: allocation failed")

    def __dealloc__(self):
        if self.c != NULL:
            cur_free(self.c)
            self.c = NULL

    # -- slots ------------------------------------------------------------------------------
    def route(self, const float[:, ::1] X):
        """Leaf (nearest centroid at every level) of each row of X: int32 [n]."""
        cdef Py_ssize_t n = X.shape[0], i
        out = np.empty(n, dtype=np.int32)
        cdef int32_t[::1] o = out
        with nogil:
            for i in range(n):
                o[i] = cur_route(self.c, &X[i, 0])
        return out

    def place(self, const int64_t[::1] slots, const int32_t[::1] leaves):
        """Make slots live in the given leaves (no tenants yet)."""
        cdef Py_ssize_t i, n = slots.shape[0]
        cdef int rc = 0
        with nogil:
            for i in range(n):
                rc = cur_place(self.c, slots[i], leaves[i])
                if rc:
                    break
        if rc == -1:
            raise ValueError(f"slot {slots[i]} is already live")
        if rc:
            raise MemoryError("CuratorCore.place")

    def unplace(self, const int64_t[::1] slots):
        """Delete live slots (revokes all their tenants); returns how many were live."""
        cdef Py_ssize_t i, n = slots.shape[0]
        cdef int rc
        cdef int64_t done = 0
        cdef bint oom = False
        with nogil:
            for i in range(n):
                rc = cur_unplace(self.c, slots[i])
                if rc == 0:
                    done += 1
                elif rc == -2:
                    oom = True
                    break
        if oom:
            raise MemoryError("CuratorCore.unplace")
        return done

    # -- access lists -----------------------------------------------------------------------
    def grant_many(self, const int64_t[::1] slots, const int32_t[::1] tenants):
        """Grant pairs (slots[i], tenants[i]); returns how many were new. Slots must be live."""
        cdef Py_ssize_t i, n = slots.shape[0]
        cdef int rc = 0
        cdef int64_t done = 0
        with nogil:
            for i in range(n):
                rc = cur_grant(self.c, slots[i], tenants[i])
                if rc < 0:
                    break
                done += rc
        if rc == -1:
            raise ValueError(f"slot {slots[i]} is not live")
        if rc < 0:
            raise MemoryError("CuratorCore.grant")
        return done

    def revoke_many(self, const int64_t[::1] slots, const int32_t[::1] tenants):
        """Revoke pairs; returns how many were granted before. Slots must be live."""
        cdef Py_ssize_t i, n = slots.shape[0]
        cdef int rc = 0
        cdef int64_t done = 0
        with nogil:
            for i in range(n):
                rc = cur_revoke(self.c, slots[i], tenants[i])
                if rc < 0:
                    break
                done += rc
        if rc == -1:
            raise ValueError(f"slot {slots[i]} is not live")
        if rc < 0:
            raise MemoryError("CuratorCore.revoke")
        return done

    def restore_list(self, int node, int tenant, const int64_t[::1] ids):
        if ids.shape[0] == 0:
            return
        if cur_restore_list(self.c, node, tenant, &ids[0], ids.shape[0]):
            raise MemoryError("CuratorCore.restore_list")

    def rebuild_bloom(self):
        with nogil:
            cur_rebuild_bloom(self.c)

    # -- search -----------------------------------------------------------------------------
    def search(self, cnp.ndarray base, cnp.ndarray Q, int tenant, int k, double gamma1,
               double gamma2):
        """(ids int64 [nq,k], dist float32 [nq,k], stats int64 [2] = scanned, visited).

        ``base`` (float32 [capacity, dim], rows = slots) and ``Q`` (float32 [nq, dim]) must be
        C-contiguous; checked here with cheap C-level tests (no memoryview set-up: this wrapper
        sits on the per-query path)."""
        if cnp.PyArray_TYPE(base) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(base) \
                or cnp.PyArray_NDIM(base) != 2 or base.shape[1] != self.dim:
            raise TypeError("base: expected a C-contiguous float32 [n, dim] array")
        if cnp.PyArray_TYPE(Q) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(Q) \
                or cnp.PyArray_NDIM(Q) != 2 or Q.shape[1] != self.dim:
            raise TypeError("Q: expected a C-contiguous float32 [nq, dim] array")
        if k < 1:
            raise ValueError("k must be >= 1")
        cdef Py_ssize_t nq = Q.shape[0]
        cdef cnp.npy_intp dims[2]
        dims[0] = nq
        dims[1] = k
        cdef cnp.ndarray ids = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT64, 0)
        cdef cnp.ndarray dist = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        cdef int64_t stats[2]
        stats[0] = 0
        stats[1] = 0
        cdef const float *bp = <const float*>cnp.PyArray_DATA(base)
        cdef const float *qp = <const float*>cnp.PyArray_DATA(Q)
        cdef int64_t *ip = <int64_t*>cnp.PyArray_DATA(ids)
        cdef float *dp = <float*>cnp.PyArray_DATA(dist)
        cdef int rc = 0
        if nq:
            with nogil:
                rc = cur_search(self.c, bp, qp, nq, tenant, k, gamma1, gamma2, ip, dp, stats)
        if rc:
            raise MemoryError("CuratorCore.search")
        return ids, dist, (stats[0], stats[1])

    # -- introspection / persistence --------------------------------------------------------
    def memory_bytes(self) -> int:
        return cur_memory(self.c)

    def __len__(self):
        return cur_nlive(self.c)

    def bloom_has(self, int node, int tenant) -> bool:
        return bool(cur_bloom_has(self.c, node, tenant))

    def slot_leaf(self, int64_t slot) -> int:
        return cur_slot_leaf(self.c, slot)

    def live_slots(self):
        """Sorted live slots (int64)."""
        cdef int64_t cap = cur_scap(self.c), s
        out = np.empty(cap, dtype=np.int8)
        cdef signed char[::1] o = out
        for s in range(cap):
            o[s] = cur_slot_leaf(self.c, s) >= 0
        return np.flatnonzero(out).astype(np.int64)

    def slot_tenants(self, int64_t slot):
        """Sorted tenants (int32) of a live slot; empty for a dead one."""
        cdef const int32_t *t
        cdef int32_t n = cur_slot_tenants(self.c, slot, &t), i
        out = np.empty(max(n, 0), dtype=np.int32)
        for i in range(n):
            out[i] = t[i]
        out.sort()
        return out

    def acl_csr(self, const int64_t[::1] slots):
        """(indptr int64, tenants int32) of the given live slots, each list sorted."""
        lists = [self.slot_tenants(slots[i]) for i in range(slots.shape[0])]
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        idx = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int32)
        return indptr, idx.astype(np.int32)

    def leaf_members(self, int leaf):
        cdef const int64_t *ids
        cdef int32_t n = cur_leaf_members(self.c, leaf, &ids), i
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            out[i] = ids[i]
        return out

    def lists(self):
        """All shortlists as (node int32, tenant int32, indptr int64, ids int64)."""
        cdef int32_t i, node, tenant, n, j
        cdef const int64_t *ids
        nodes, tenants, sizes, chunks = [], [], [], []
        for i in range(cur_nsl(self.c)):
            n = cur_list_info(self.c, i, &node, &tenant, &ids)
            if n < 0:
                continue
            a = np.empty(n, dtype=np.int64)
            for j in range(n):
                a[j] = ids[j]
            nodes.append(node)
            tenants.append(tenant)
            sizes.append(n)
            chunks.append(a)
        indptr = np.zeros(len(sizes) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(sizes)
        return (np.array(nodes, dtype=np.int32), np.array(tenants, dtype=np.int32), indptr,
                np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64))

    def pairs(self):
        """Every granted (slot, tenant) pair of the live slots: (slots int64, tenants int32)."""
        cdef int64_t cap = cur_scap(self.c), s, total = 0, w = 0
        cdef const int32_t *t
        cdef int32_t n, j
        for s in range(cap):
            n = cur_slot_tenants(self.c, s, &t)
            if n > 0:
                total += n
        slots = np.empty(total, dtype=np.int64)
        tenants = np.empty(total, dtype=np.int32)
        cdef int64_t[::1] sv = slots
        cdef int32_t[::1] tv = tenants
        for s in range(cap):
            n = cur_slot_tenants(self.c, s, &t)
            for j in range(n):
                sv[w] = s
                tv[w] = t[j]
                w += 1
        return slots, tenants

    def leaf_size(self, int node) -> int:
        """Live slots routed to ``node`` (0 for an internal node)."""
        cdef const int64_t *ids
        if node < 0 or node >= self.nnodes:
            raise IndexError(node)
        return cur_leaf_members(self.c, node, &ids)

    def leaf_sizes(self):
        """Live slots per node (0 for internal nodes): int64 [nnodes]."""
        cdef const int64_t *ids
        cdef int32_t i
        out = np.zeros(self.nnodes, dtype=np.int64)
        cdef int64_t[::1] o = out
        for i in range(self.nnodes):
            o[i] = cur_leaf_members(self.c, i, &ids)
        return out


from libc.math cimport isfinite, sqrt
from libc.stdlib cimport malloc, free
from cpython.long cimport PyLong_AsLongLong
from cpython.float cimport PyFloat_AS_DOUBLE

cdef int64_t _INT32_MAX = 2147483647
cdef int64_t _MAX_K = 1 << 20


cdef class Gate:
    """The index's readers-writer lock plus the structure and vectors a search uses.

    ``search1`` is the per-query fast path: for the common call (a C-contiguous float32 query
    array, int ``k``, int or None tenant, params None / a dict of plain numbers / a
    ``params_class`` instance) it checks the input in C, takes the read side, searches and
    releases in one GIL-free stretch, with no Python-level lock or validation objects. Anything
    else returns None and the caller takes the general path (``vecdb.kernels.prepare``), which
    raises the proper ``vecdb.errors`` error; a query the fast path accepts is exactly one the
    general path accepts, and the results are the same.

    ``bind`` must be called by the holder of the write side (or before the index is shared)
    whenever the structure or the vector matrix object changes.
    """

    cdef cur_gate *g
    cdef object core_obj, base_obj, params_class
    cdef cur_t *cp
    cdef const float *bp
    cdef readonly int dim
    cdef bint cosine
    cdef double g1_default, g2_default

    def __cinit__(self, int dim, bint cosine, params_class, double gamma1, double gamma2):
        self.g = cur_gate_new()
        if self.g == NULL:
            raise MemoryError("Gate: allocation failed")
        self.dim = dim
        self.cosine = cosine
        self.params_class = params_class
        self.g1_default = gamma1
        self.g2_default = gamma2
        self.cp = NULL
        self.bp = NULL

    def __dealloc__(self):
        if self.g != NULL:
            cur_gate_free(self.g)
            self.g = NULL

    def bind(self, CuratorCore core, cnp.ndarray base):
        """Searches from now on use ``core`` over ``base`` (float32 C-contiguous [cap, dim])."""
        if cnp.PyArray_TYPE(base) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(base) \
                or cnp.PyArray_NDIM(base) != 2 or base.shape[1] != self.dim or core.dim != self.dim:
            raise TypeError("Gate.bind: expected a C-contiguous float32 [n, dim] matrix")
        self.core_obj = core
        self.base_obj = base
        self.cp = core.c
        self.bp = <const float*>cnp.PyArray_DATA(base)

    # -- the lock, for the Python side ------------------------------------------------------
    def acquire_read(self) -> bool:
        """Take the read side; False (nothing taken) for the thread holding the write side."""
        cdef int r
        with nogil:
            r = cur_gate_read(self.g)
        return bool(r)

    def release_read(self):
        cur_gate_read_done(self.g)

    def acquire_write(self):
        """Take the write side (reentrant for the holding thread)."""
        with nogil:
            cur_gate_write(self.g)

    def release_write(self):
        if cur_gate_write_done(self.g):
            raise RuntimeError("Gate.release_write: the write side is not held by this thread")

    def is_writer(self) -> bool:
        return bool(cur_gate_is_writer(self.g))

    # -- the fast search path ---------------------------------------------------------------
    cdef bint _gammas(self, object params, double *g1, double *g2):
        """Read (gamma1, gamma2) from params; False when the general path must parse them."""
        cdef double v
        g1[0] = self.g1_default
        g2[0] = self.g2_default
        if params is None:
            return True
        if type(params) is self.params_class:  # a validated frozen dataclass
            g1[0] = float(params.gamma1)
            g2[0] = float(params.gamma2)
            return True
        if type(params) is not dict or len(<dict>params) > 2:
            return False
        for key, val in (<dict>params).items():
            if type(val) is float:
                v = PyFloat_AS_DOUBLE(val)
            elif type(val) is int and -(1 << 53) < val < (1 << 53):  # not bool: type() is exact
                v = <double>PyLong_AsLongLong(val)
            else:
                return False
            if not isfinite(v) or v < 1:
                return False
            if key == "gamma1":
                g1[0] = v
            elif key == "gamma2":
                g2[0] = v
            else:
                return False
        return True

    def search1(self, object queries, object k, object tenant, object params):
        """(ids int64 [nq, k], dist float32 [nq, k]), or None when the general path must run."""
        cdef double g1, g2
        cdef int64_t kk, t
        cdef Py_ssize_t nq, i, j, d = self.dim
        cdef cnp.ndarray arr
        if not cnp.PyArray_CheckExact(queries):
            return None
        arr = <cnp.ndarray>queries
        if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(arr) \
                or not cnp.PyArray_ISALIGNED(arr):
            return None
        if cnp.PyArray_NDIM(arr) == 1:
            if arr.shape[0] != d:
                return None
            nq = 1
        elif cnp.PyArray_NDIM(arr) == 2:
            if arr.shape[1] != d or arr.shape[0] < 1:
                return None
            nq = arr.shape[0]
        else:
            return None
        if type(k) is not int or not 1 <= k <= _MAX_K:
            return None
        kk = k
        if tenant is None:
            t = -1
        elif type(tenant) is int and 0 <= tenant <= _INT32_MAX:
            t = tenant
        else:
            return None
        if not self._gammas(params, &g1, &g2):
            return None
        cdef const float *qp = <const float*>cnp.PyArray_DATA(arr)
        cdef float *norm = NULL
        cdef double ss
        cdef bint ok = True
        with nogil:
            for i in range(nq * d):
                if not isfinite(qp[i]):
                    ok = False
                    break
            if ok and self.cosine:
                norm = <float*>malloc(sizeof(float) * nq * d)
                if norm != NULL:
                    for i in range(nq):
                        ss = 0
                        for j in range(d):
                            ss += <double>qp[i * d + j] * qp[i * d + j]
                        if ss == 0:
                            ok = False
                            break
                        ss = sqrt(ss)
                        for j in range(d):
                            norm[i * d + j] = <float>(qp[i * d + j] / ss)
        if not ok:
            free(norm)
            return None
        if self.cosine:
            if norm == NULL:
                raise MemoryError("Gate.search1")
            qp = norm
        cdef cnp.npy_intp dims[2]
        dims[0] = nq
        dims[1] = kk
        cdef cnp.ndarray ids = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT64, 0)
        cdef cnp.ndarray dist = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        cdef int64_t *ip = <int64_t*>cnp.PyArray_DATA(ids)
        cdef float *dp = <float*>cnp.PyArray_DATA(dist)
        cdef int64_t stats[2]
        cdef int rc, taken
        stats[0] = 0
        stats[1] = 0
        with nogil:
            taken = cur_gate_read(self.g)
            # the bound structure is read only under the lock: a writer may rebind it
            rc = cur_search(self.cp, self.bp, qp, nq, <int32_t>t, <int32_t>kk, g1, g2, ip, dp,
                            stats)
            if taken:
                cur_gate_read_done(self.g)
        free(norm)
        if rc:
            raise MemoryError("CuratorCore.search")
        return ids, dist
