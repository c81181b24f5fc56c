"""Building blocks of the SPANN index (``vecdb.index.spann``): balanced clustering, the RNG
replica rule, the in-memory head index and the packed posting-record format.

Kept apart from the index class so each piece can be read (and tested) on its own::

    vectors --hierarchical_balanced_clusters--> leaf clusters --nearest member--> heads
    heads --HeadIndex--> candidate heads per vector --rng_select--> posting lists (<= replica_count)

All distances are the kernel convention (squared L2, or negated inner product): smaller = closer.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from vecdb import _native, _spann
from vecdb.kernels import numpy_backend

# -- packed posting records ---------------------------------------------------------------------


def record_dtype(dim: int, vec: str = "<f4") -> np.dtype:
    """One posting record: slot int64 | version uint8 | 3 pad bytes | vector[dim].

    ``vec``: ``"<f4"`` (float32, default), ``"<f2"`` (float16 postings: half the bytes read per
    list; distances are then those of the float16-rounded vectors) or ``"u1"`` (SQ8: one uint8
    code per dimension, see ``SQ8``). Records of a list are
    concatenated without a header, so appending to a list is a byte concatenation and a
    multi_get of many lists parses with one ``np.frombuffer``.
    """
    if vec not in ("<f4", "<f2", "u1"):
        raise ValueError(f"posting vectors are <f4, <f2 or u1, not {vec!r}")
    return np.dtype({"names": ["slot", "ver", "vec"],
                     "formats": ["<i8", "u1", (vec, (dim,))],
                     "offsets": [0, 8, 12], "itemsize": 12 + np.dtype(vec).itemsize * dim})


def pack_records(dtype: np.dtype, slots: np.ndarray, vers: np.ndarray, vecs: np.ndarray) -> bytes:
    rec = np.zeros(len(slots), dtype=dtype)
    rec["slot"] = slots
    rec["ver"] = vers
    rec["vec"] = vecs
    return rec.tobytes()


class SQ8:
    """Per-dimension scalar quantizer of posting vectors: ``x[i] ~ offset[i] + scale[i] * code``,
    ``code`` uint8. Trained once (the range of each dimension over the training vectors, no
    clipping of them); later vectors outside the range are clipped to it. A record then holds
    ``dim`` bytes instead of ``4 * dim`` (float32) or ``2 * dim`` (float16), so one disk read
    holds ~2x the records of float16 (GloVe-50: 62 vs 112 bytes). The native scan folds the
    query into the quantizer's space once per query (``sp_sq8_prepare``), so a record costs one
    uint8->float conversion and one FMA per dimension."""

    def __init__(self, scale: np.ndarray, offset: np.ndarray):
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.offset = np.ascontiguousarray(offset, dtype=np.float32)

    @classmethod
    def train(cls, X: np.ndarray) -> SQ8:
        lo = X.min(axis=0).astype(np.float64)
        hi = X.max(axis=0).astype(np.float64)
        return cls((hi - lo) / 255.0, lo)

    def encode(self, X: np.ndarray) -> np.ndarray:
        safe = np.where(self.scale > 0, self.scale, 1.0).astype(np.float32)
        c = np.rint((np.asarray(X, dtype=np.float32) - self.offset) / safe)
        c[:, self.scale <= 0] = 0
        return np.clip(c, 0, 255).astype(np.uint8)

    def decode(self, C: np.ndarray) -> np.ndarray:
        return (self.offset + self.scale * np.asarray(C, dtype=np.float32)).astype(np.float32)

    def to_bytes(self) -> bytes:
        return self.scale.tobytes() + self.offset.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes, dim: int) -> SQ8:
        a = np.frombuffer(raw, dtype=np.float32)
        if a.shape != (2 * dim,):
            raise ValueError(f"SQ8 parameters of {len(raw)} bytes do not fit dim {dim}")
        return cls(a[:dim], a[dim:])


# -- distances ----------------------------------------------------------------------------------


def pair_dist(Q: np.ndarray, X: np.ndarray, code: int) -> np.ndarray:
    """Dense distances [len(Q), len(X)] (BLAS for big blocks, native SIMD for a few queries)."""
    if len(Q) == 0 or len(X) == 0:
        return np.zeros((len(Q), len(X)), dtype=np.float32)
    if len(Q) >= 8:
        return numpy_backend.pairwise(Q, X, code)
    return _native.pairwise(np.ascontiguousarray(Q), np.ascontiguousarray(X), code)


def within(d: np.ndarray, d0: np.ndarray | float, eps: float, code: int = 0) -> np.ndarray:
    """``d <= (1+eps) * d0``: the closeness rule of replicas (eps1) and query pruning (eps).

    For squared L2 as is. For negated inner products (cosine data is unit length) the rule is
    applied to ``2 + 2d``, the squared L2 distance between unit vectors, so that eps means the
    same for both metrics (a plain ratio of negative numbers would be meaningless).
    """
    if code == 1:
        d = np.maximum(2 + 2 * np.asarray(d, dtype=np.float32), 0)
        d0 = np.maximum(2 + 2 * np.asarray(d0, dtype=np.float32), 0)
    return d <= (1 + eps) * d0


# -- balanced k-means ---------------------------------------------------------------------------


def balanced_kmeans(X: np.ndarray, k: int, lam: float, rng: np.random.Generator,
                    niter: int = 8, sample: int = 256) -> np.ndarray:
    """Labels [n] of a k-means whose assignment minimises ``dist + lam' * size``.

    Lloyd iterations on a sample (at most ``sample`` points per centroid, as faiss does), then a
    penalised assignment of all points: ``lam'`` = ``lam`` * (mean nearest distance) / (n / k),
    so ``lam`` is scale-free; a few rounds re-use the previous round's cluster sizes (SPTAG's
    balanced clustering). Always squared L2 (cosine data is normalised at the boundary).
    """
    n = X.shape[0]
    k = int(min(k, n))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    S = X if n <= k * sample else X[rng.choice(n, k * sample, replace=False)]
    C = S[rng.choice(len(S), k, replace=False)].copy()
    for _ in range(niter):
        lab = np.argmin(pair_dist(S, C, 0), axis=1)
        cnt = np.bincount(lab, minlength=k)
        sums = np.zeros(C.shape, dtype=np.float64)
        order = np.argsort(lab, kind="stable")
        present = np.flatnonzero(cnt)
        sums[present] = np.add.reduceat(S[order], np.searchsorted(lab[order], present), axis=0)
        empty = cnt == 0
        C[~empty] = (sums[~empty] / cnt[~empty, None]).astype(np.float32)
        if empty.any():  # re-seed empty centroids on random points
            C[empty] = S[rng.choice(len(S), int(empty.sum()), replace=False)]
    D = pair_dist(X, C, 0)
    lab = np.argmin(D, axis=1)
    if lam > 0:
        scale = lam * float(np.mean(D[np.arange(n), lab])) / (n / k)
        for _ in range(4):
            size = np.bincount(lab, minlength=k).astype(np.float32)
            lab = np.argmin(D + scale * size[None, :], axis=1)
    return lab


def hierarchical_balanced_clusters(X: np.ndarray, leaf: int, lam: float, seed: int = 0,
                                   branch: int = 32) -> list[np.ndarray]:
    """Split the rows of X recursively with small-k balanced k-means until every cluster holds at
    most ``1.5 * leaf`` points; returns the member row arrays of the leaves."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    stack = [np.arange(X.shape[0], dtype=np.int64)]
    limit = max(1, 2 * leaf)
    while stack:
        rows = stack.pop()
        if len(rows) <= limit:
            out.append(rows)
            continue
        want = max(2, len(rows) // leaf)
        k = want if want <= 4 * branch else branch
        lab = balanced_kmeans(X[rows], k, lam, rng)
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(k + 1))
        parts = [rows[order[bounds[i]:bounds[i + 1]]] for i in range(k)]
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:  # degenerate (duplicates): cut arbitrarily
            parts = np.array_split(rows, want)
        stack.extend(parts)
    return out


def nearest_member(X: np.ndarray, rows: np.ndarray) -> int:
    """The member of ``rows`` nearest to their mean (a real vector becomes the head)."""
    V = X[rows]
    c = V.mean(axis=0, dtype=np.float64).astype(np.float32)
    return int(rows[int(np.argmin(_native.distances(c, np.ascontiguousarray(V), 0)))])


# -- the RNG replica rule -----------------------------------------------------------------------


def rng_select(X: np.ndarray, cand: np.ndarray, cdist: np.ndarray, head_vecs_of, code: int,
               replicas: int, eps1: float, block: int = 4096) -> np.ndarray:
    """Boolean [n, C] mask of the candidate heads each vector is posted to.

    ``cand`` [n, C] candidate head ids sorted by ``cdist`` (ascending, -1 padded). Candidate j is
    kept when it is within ``(1+eps1)`` of the nearest, fewer than ``replicas`` are chosen, and no
    already chosen head c_i is closer to c_j than the vector is (SPANN's RNG rule: c_j would be
    covered by c_i anyway). ``head_vecs_of(ids)`` gives head vectors for an id array of any
    shape. The rule runs in native code (``vecdb._spann.rng_select``, no GIL) over blocks of
    ``block`` vectors; it computes only the head-to-head distances of chosen heads (at most
    ``replicas`` per candidate) instead of the whole C x C matrix. ``X`` is not needed by the
    rule (the vector-to-head distances are ``cdist``); it stays in the signature for callers.
    """
    n, C = cand.shape
    keep = np.zeros((n, C), dtype=bool)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    cdist = np.ascontiguousarray(cdist, dtype=np.float32)
    f = float(np.float32(1 + eps1))
    for s in range(0, n, block):
        e = min(n, s + block)
        H = np.ascontiguousarray(head_vecs_of(np.maximum(cand[s:e], 0)), dtype=np.float32)
        _spann.rng_select(cand[s:e], cdist[s:e], H, int(code), int(replicas), f,
                          keep[s:e].view(np.uint8))
    return keep


# -- the in-memory head index -------------------------------------------------------------------


class HeadIndex:
    """Heads (list id -> vector) with nearest-head search.

    ``kind="flat"``: exact scan (small head sets, tests). ``kind="hnsw"``: vecdb's own HNSW graph
    over the heads (slot = list id), which returns exact distances of the stored float32 head
    vectors. All access goes through one lock: head searches are short and splits only add/remove
    a few heads at a time.
    """

    def __init__(self, dim: int, code: int, kind: str = "flat", M: int = 16, ef: int = 128,
                 ef_construction: int = 100, threads: int = 1, seed: int = 0):
        self.dim, self.code, self.kind = dim, code, kind
        self.M, self.ef, self.efc, self.threads, self.seed = M, ef, ef_construction, threads, seed
        self._V = np.zeros((16, dim), dtype=np.float32)
        self._rid = np.full(16, -1, dtype=np.int64)  # row -> list id (-1: free)
        self._row: dict[int, int] = {}
        self._row_of = np.full(16, -1, dtype=np.int64)  # list id -> row (-1: none), vectorised
        self._free: list[int] = []
        self._n = 0  # rows used
        self._lock = threading.RLock()
        self._g = None
        if kind == "hnsw":
            self._g = self._new_graph()

    def _new_graph(self, max_elements: int | None = None):
        from vecdb.index.hnsw import HNSWIndex  # lazily: only the hnsw head index needs it

        return HNSWIndex(self.dim, "ip" if self.code == 1 else "l2", M=self.M,
                         ef_construction=self.efc, seed=self.seed, num_threads=self.threads,
                         max_elements=max_elements)

    def __len__(self) -> int:
        return len(self._row)

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.array(sorted(self._row), dtype=np.int64)

    def add(self, ids: np.ndarray, vecs: np.ndarray,
            graph: np.ndarray | str | None = None, take: bool = False) -> None:
        """Add heads ``ids`` with vectors ``vecs``. ``graph``: a saved head graph (``graph_bytes()``
        of an index holding exactly these ids/vectors, an ``HNSWIndex`` file's bytes as uint8, or
        the path of such a file) loaded instead of built when the graph is empty and it matches
        (same count, same vectors); otherwise ignored and the graph is built as usual
        (reopen/import skip a build that takes minutes for a million heads). ``take``: into an
        empty index, ``vecs`` (float32, C-contiguous, writable, one row per id) becomes the head
        matrix itself, not a copy (the caller must not use it afterwards)."""
        with self._lock:
            ids = np.asarray(ids, dtype=np.int64)
            need = self._n + max(0, len(ids) - len(self._free))
            taken = (take and self._n == 0 and not self._free and len(ids) > len(self._rid)
                     and isinstance(vecs, np.ndarray) and vecs.dtype == np.float32
                     and vecs.shape == (len(ids), self.dim) and vecs.flags.c_contiguous
                     and vecs.flags.writeable)
            if need > len(self._rid):  # grow once, to the exact size for a bulk add
                cap = need if len(ids) > len(self._rid) else 2 * len(self._rid)
                V = vecs if taken else np.zeros((cap, self.dim), dtype=np.float32)
                if not taken:
                    V[: self._n] = self._V[: self._n]
                rid = np.full(cap, -1, dtype=np.int64)
                rid[: self._n] = self._rid[: self._n]
                self._V, self._rid = V, rid
            rows = []
            for i in ids.tolist():
                if self._free:
                    r = self._free.pop()
                else:
                    r = self._n
                    self._n += 1
                self._row[i] = r
                if i >= len(self._row_of):
                    grown = np.full(max(2 * len(self._row_of), i + 1), -1, dtype=np.int64)
                    grown[: len(self._row_of)] = self._row_of
                    self._row_of = grown
                self._row_of[i] = r
                self._rid[r] = i
                rows.append(r)
            if not taken:  # taken: row i is already vecs[i]
                self._V[rows] = vecs
            if graph is not None and self._g is not None and len(self._g) == 0 and len(ids):
                g = self._matching_graph(graph)
                if g is not None:
                    self._g = g
                    return
            if self._g is not None and len(ids):
                if len(self._g) == 0 and len(ids) > 1024:
                    # bulk build: size the graph to the list ids exactly (growth doubles, which
                    # would hold up to 2x the head RAM the budget planned for)
                    self._g = self._new_graph(max_elements=int(ids.max()) + 1)
                self._g.add(np.ascontiguousarray(vecs, dtype=np.float32), slots=ids)

    def remove(self, ids) -> None:
        with self._lock:
            for i in np.asarray(ids, dtype=np.int64).tolist():
                r = self._row.pop(i, None)
                if r is None:
                    continue
                self._row_of[i] = -1
                self._rid[r] = -1
                self._free.append(r)
            if self._g is not None:
                self._g.remove(np.asarray(ids, dtype=np.int64))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Head vectors for an array of ids (any shape); unknown ids give zeros."""
        with self._lock:
            ids = np.asarray(ids, dtype=np.int64)
            rows = self._rows(ids.ravel())
            out = self._V[np.maximum(rows, 0)]
            out[rows < 0] = 0
            return out.reshape(*ids.shape, self.dim)

    def select_replicas(self, cand: np.ndarray, cdist: np.ndarray, replicas: int, eps1: float,
                        block: int = 4096) -> np.ndarray:
        """Boolean [n, C] mask: SPANN's RNG rule (``rng_select``) for candidate heads ``cand``
        (list ids, -1 padded, sorted by ``cdist``), reading the head vectors in place
        (``vecdb._spann.rng_select_heads``, no GIL, no gathered [n, C, dim] copy). The ids are
        mapped to rows of the head matrix under the lock, per block of ``block`` vectors (a
        removed head counts as padding)."""
        n, C = cand.shape
        keep = np.zeros((n, C), dtype=bool)
        cand = np.asarray(cand, dtype=np.int64)
        cdist = np.ascontiguousarray(cdist, dtype=np.float32)
        for s in range(0, n, block):
            e = min(n, s + block)
            with self._lock:
                rows = np.ascontiguousarray(self._rows(cand[s:e].ravel()).reshape(e - s, C))
                _spann.rng_select_heads(None, self._V[: max(self._n, 1)], rows, cdist[s:e],
                                        int(replicas), float(eps1), int(self.code),
                                        keep[s:e].view(np.uint8))
        return keep

    _CHUNK = 256  # queries per hold of the lock (a batch does not hold off other searches)

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [nq, k] -1 padded, exact distances float32 [nq, k]) sorted ascending.

        A big batch (an insert's or a split's reassignment) takes the lock per chunk of
        ``_CHUNK`` queries, so a concurrent single-query search waits for one chunk at most, not
        for the whole batch. Writers of the heads (splits, merges) run under the index's write
        lock, so the heads do not change between the chunks of a writer's own batch."""
        nq = Q.shape[0]
        ids = np.full((nq, k), -1, dtype=np.int64)
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        for s in range(0, nq, self._CHUNK):
            e = min(nq, s + self._CHUNK)
            with self._lock:
                self._search_chunk(Q[s:e], k, ids[s:e], dist[s:e])
        return ids, dist

    def _search_chunk(self, Q: np.ndarray, k: int, ids: np.ndarray, dist: np.ndarray) -> None:
        live = len(self._row)
        if live == 0 or Q.shape[0] == 0:
            return
        kk = min(k, live)
        if self._g is None:
            V = self._V[: self._n]
            D = pair_dist(Q, V, self.code)
            D[:, self._rid[: self._n] < 0] = np.inf
            r, d = _native.topk(np.ascontiguousarray(D, dtype=np.float32), kk)
            ids[:, :kk] = np.where(r >= 0, self._rid[np.maximum(r, 0)], -1)
            dist[:, :kk] = d
            ids[~np.isfinite(dist)] = -1
            return
        from vecdb.index.hnsw import HNSWSearchParams

        params = HNSWSearchParams(ef=max(self.ef, kk), num_threads=self.threads)
        lab, d = self._g.search(Q, kk, params=params)
        ids[:, :kk] = lab
        dist[:, :kk] = d

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        ok = (ids >= 0) & (ids < len(self._row_of))
        return np.where(ok, self._row_of[np.where(ok, ids, 0)], -1)

    def graph_bytes(self) -> np.ndarray | None:
        """The HNSW graph serialised (vecdb's index file format) as uint8, or None for flat."""
        import tempfile

        with self._lock, tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "g")
            return np.fromfile(p, dtype=np.uint8) if self.save_graph(p) else None

    def save_graph(self, path: str) -> bool:
        """Write the HNSW graph to ``path`` (vecdb's index file format: what ``add(graph=)``
        takes); False (nothing written) for a flat head index."""
        if self._g is None:
            return False
        with self._lock:
            self._g.save(path)
        return True

    def load_graph(self, raw: np.ndarray) -> bool:
        """Replace the graph by a saved one if it holds exactly the current heads."""
        if self._g is None:
            return False
        with self._lock:
            g = self._matching_graph(raw)
            if g is None:
                return False
            self._g = g
            return True

    def _matching_graph(self, raw: np.ndarray | str | os.PathLike):
        """The ``HNSWIndex`` saved in ``raw`` (its bytes, or the path of its file: loaded from
        there, no copy in memory) if it holds exactly the current heads, else None. The head
        vectors are compared in blocks (no whole copy of them)."""
        import tempfile

        from vecdb.errors import InvalidArgument
        from vecdb.index.hnsw import HNSWIndex

        with self._lock, tempfile.TemporaryDirectory() as d:
            if isinstance(raw, str | os.PathLike):
                p = os.fspath(raw)
            else:
                p = os.path.join(d, "g")
                np.asarray(raw, dtype=np.uint8).tofile(p)
            try:
                g = HNSWIndex.load(p)
            except (ValueError, OSError):  # not a graph file (vecdb errors are ValueErrors)
                return None
            ids = np.array(sorted(self._row), dtype=np.int64)
            if len(g) != len(ids):
                return None
            try:  # every current head is in the saved graph, with the same vector
                for s in range(0, len(ids), 4096):  # 2 x 2 MB at dim 128
                    part = ids[s:s + 4096]
                    if not np.array_equal(g.vectors(part), self._V[self._rows(part)]):
                        return None
            except InvalidArgument:
                return None
            g.params["num_threads"] = self.threads
            return g

    def memory_bytes(self) -> int:
        b = self._V.nbytes + self._rid.nbytes + self._row_of.nbytes + 100 * len(self._row)
        if self._g is not None:
            b += self._g.memory_bytes()
        return b


