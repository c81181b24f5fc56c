# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""vecdb._idmap: the engine's id map, uint64 external id -> int64 slot, in C (_idmap_impl.c).

A Python dict costs ~100 bytes per id and a Python-level loop per lookup; this map costs 16 bytes
per bucket at load 0.3..0.7 (~27 B per id at 10M ids) and runs every batch without the GIL.

Thread safety: the engine already serialises mutations (its writer mutex + the RW lock's write
side) and keeps lookups from overlapping them (readers take the read side; writers look up under
the writer mutex). The map does not rely on that for memory safety: lookups may run while one
mutation runs (they see each key before or after the change, never a torn entry), a table
replaced by a rehash is freed only once no lookup is running, and a second concurrent mutation
raises instead of corrupting the table.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, realloc

from vecdb.errors import FailedPrecondition, InvalidArgument

cnp.import_array()

cdef extern from "_idmap_impl.h":
    ctypedef struct idm_entry:
        uint64_t key
        int64_t val
    ctypedef struct idm_table:
        idm_entry *tab
        int64_t cap
        int64_t live
        int64_t used
    uint64_t idm_hash(uint64_t x) nogil
    int idm_init(idm_table *t, int64_t cap) nogil
    void idm_release(idm_table *t) nogil
    int64_t idm_cap_for(int64_t n) nogil
    int idm_rehash_into(const idm_table *src, idm_table *dst) nogil
    int idm_needs_grow(const idm_table *t, int64_t n_new) nogil
    void idm_lookup(const idm_table *t, const uint64_t *keys, int64_t n, int64_t *out) nogil
    int64_t idm_insert(idm_table *t, const uint64_t *keys, const int64_t *vals, int64_t n) nogil
    int64_t idm_delete(idm_table *t, const uint64_t *keys, int64_t n) nogil
    int64_t idm_export(const idm_table *t, uint64_t *keys, int64_t *vals, int64_t room) nogil


def _as_keys(ids) -> np.ndarray:
    """ids as a contiguous uint64 array: unsigned ids as they are, signed ones by bit pattern
    (an int64 -1 is the id 2^64-1, as the engine's int64 ``slot_id`` array stores it)."""
    a = np.asarray(ids)
    if a.ndim != 1:
        raise InvalidArgument(f"ids: expected a 1-D array, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgument(f"ids: expected integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.signedinteger):
        a = a.astype(np.int64, copy=False).view(np.uint64)
    return np.ascontiguousarray(a, dtype=np.uint64)


def hash64(ids) -> np.ndarray:
    """The map's hash of each id (uint64; the bucket is ``hash & (capacity - 1)``): for tests
    that build colliding ids."""
    cdef cnp.ndarray[uint64_t, ndim=1] k = _as_keys(ids)
    cdef cnp.ndarray[uint64_t, ndim=1] out = np.empty(len(k), dtype=np.uint64)
    cdef int64_t i, n = len(k)
    with nogil:
        for i in range(n):
            out[i] = idm_hash(k[i])
    return out


cdef class IdMap:
    """uint64 id -> int64 slot (>= 0). Batch operations on numpy arrays, GIL released."""

    cdef idm_table t
    cdef idm_entry **retired  # tables replaced by a rehash while lookups were running
    cdef int nretired
    cdef int64_t retired_bytes
    cdef int readers
    cdef bint writing

    def __cinit__(self, int64_t expected=0):
        """An empty map with room for ``expected`` ids before its first rehash."""
        if expected < 0:
            raise InvalidArgument(f"expected must be >= 0, got {expected}")
        if idm_init(&self.t, idm_cap_for(expected)) != 0:
            raise MemoryError("IdMap: out of memory")
        self.retired = NULL
        self.nretired = 0
        self.retired_bytes = 0
        self.readers = 0
        self.writing = False

    def __dealloc__(self):
        self._free_retired()
        free(self.retired)
        idm_release(&self.t)

    cdef void _free_retired(self):
        cdef int i
        for i in range(self.nretired):
            free(self.retired[i])
        self.nretired = 0
        self.retired_bytes = 0

    cdef _begin_write(self):
        if self.writing:
            raise FailedPrecondition("IdMap: concurrent mutations (the caller must serialise "
                                     "writers)")
        self.writing = True
        if self.readers == 0:
            self._free_retired()

    cdef _reserve(self, int64_t n_new):
        """Rehash (outside the GIL) if inserting n_new new keys could exceed load 0.7."""
        cdef idm_table nt
        cdef idm_entry **r
        if not idm_needs_grow(&self.t, n_new):
            return
        cdef int64_t cap = idm_cap_for(self.t.live + n_new)
        if idm_init(&nt, cap) != 0:
            raise MemoryError(f"IdMap: out of memory growing to {cap} buckets")
        with nogil:
            idm_rehash_into(&self.t, &nt)
        # the swap runs under the GIL, as do the readers' snapshot and count updates
        if self.readers:
            r = <idm_entry **>realloc(self.retired, (self.nretired + 1) * sizeof(idm_entry *))
            if r == NULL:
                idm_release(&nt)
                raise MemoryError("IdMap: out of memory")
            self.retired = r
            self.retired[self.nretired] = self.t.tab
            self.nretired += 1
            self.retired_bytes += self.t.cap * sizeof(idm_entry)
        else:
            free(self.t.tab)
        self.t = nt

    def __len__(self) -> int:
        return self.t.live

    @property
    def capacity(self) -> int:
        """Buckets in the table (a power of two)."""
        return self.t.cap

    def memory_bytes(self) -> int:
        """Bytes held: the table (16 B per bucket) plus tables awaiting release."""
        return self.t.cap * sizeof(idm_entry) + self.retired_bytes

    def reserve(self, int64_t n) -> None:
        """Make room for ``n`` more new ids without a rehash during their inserts."""
        self._begin_write()
        try:
            self._reserve(n)
        finally:
            self.writing = False

    def lookup(self, ids) -> np.ndarray:
        """Slots of ``ids`` (int64; -1 where an id is absent)."""
        cdef cnp.ndarray[uint64_t, ndim=1] k = _as_keys(ids)
        cdef int64_t n = len(k)
        cdef cnp.ndarray[int64_t, ndim=1] out = np.empty(n, dtype=np.int64)
        cdef idm_table snap = self.t
        if n == 0:
            return out
        self.readers += 1
        try:
            with nogil:
                idm_lookup(&snap, &k[0], n, &out[0])
        finally:
            self.readers -= 1
            if self.readers == 0 and self.nretired and not self.writing:
                self._free_retired()
        return out

    def insert(self, ids, slots) -> int:
        """Map ``ids[i] -> slots[i]`` (overwriting; a repeated id keeps its last slot). Slots
        must be >= 0. Returns how many ids were new."""
        cdef cnp.ndarray[uint64_t, ndim=1] k = _as_keys(ids)
        v = np.asarray(slots)
        if v.ndim != 1 or len(v) != len(k):
            raise InvalidArgument(f"insert: {len(k)} ids but slots of shape {v.shape}")
        if len(v) and not np.issubdtype(v.dtype, np.integer):
            raise InvalidArgument(f"insert: slots must be integers, got dtype {v.dtype}")
        cdef cnp.ndarray[int64_t, ndim=1] s = np.ascontiguousarray(v, dtype=np.int64)
        cdef int64_t n = len(k), added
        if n == 0:
            return 0
        if s.min() < 0:
            raise InvalidArgument(f"insert: slots must be >= 0, got {int(s.min())}")
        self._begin_write()
        try:
            self._reserve(n)
            with nogil:
                added = idm_insert(&self.t, &k[0], &s[0], n)
        finally:
            self.writing = False
        return added

    def delete(self, ids) -> int:
        """Remove ``ids`` (absent ones are ignored). Returns how many were present."""
        cdef cnp.ndarray[uint64_t, ndim=1] k = _as_keys(ids)
        cdef int64_t n = len(k), gone
        if n == 0:
            return 0
        self._begin_write()
        try:
            with nogil:
                gone = idm_delete(&self.t, &k[0], n)
        finally:
            self.writing = False
        return gone

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (ids uint64, slots int64), in table order."""
        cdef idm_table snap = self.t
        cdef int64_t n = snap.live, got = 0
        cdef cnp.ndarray[uint64_t, ndim=1] k = np.empty(n, dtype=np.uint64)
        cdef cnp.ndarray[int64_t, ndim=1] s = np.empty(n, dtype=np.int64)
        if n:
            self.readers += 1
            try:
                with nogil:
                    got = idm_export(&snap, &k[0], &s[0], n)
            finally:
                self.readers -= 1
                if self.readers == 0 and self.nretired and not self.writing:
                    self._free_retired()
        return k[:got], s[:got]

    @classmethod
    def from_arrays(cls, ids, slots) -> IdMap:
        """A map of ``ids[i] -> slots[i]``, sized once for them (one pass, no rehash)."""
        m = cls(len(ids))
        m.insert(ids, slots)
        return m
