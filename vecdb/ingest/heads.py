"""Candidate-head search of the bulk build's map stage: ``HeadGroups`` (batched GEMMs over
groups of heads, near-exact) and ``HeadSearch`` (HeadGroups, the saved head graph, or an exact
scan for a flat head index)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from vecdb.errors import InvalidArgument

ENGINES = ("merge", "buffer")
_SAVED = ("centroids", "heads", "ids", "bounds", "hsq", "csq")  # HeadGroups.save's arrays


class HeadGroups:
    """Batched, near-exact candidate search over the heads for the map stage: GEMMs instead of
    one graph walk per vector.

    The heads are cut into ``G`` groups of ``group_size`` to ``2 x group_size`` heads (the
    leaves of SPANN's balanced hierarchical k-means; stored sorted by group). A batch of vectors
    is scored against the group centroids (one GEMM), each vector probes its ``probes`` nearest
    groups, and per group one GEMM scores the vectors that probe it against the group's heads;
    the top-``k`` of the probed heads, sorted, are the candidates. Cost per vector ~ ``(G +
    probes x group_size) x dim`` multiply-adds plus selecting from as many distances: ~``2
    sqrt(probes x H)`` with ``_group_size``. At 1M x 128 (23k heads) 4 probes found the exact
    nearest head for 99.5% of vectors, 8 for 99.9%.

    Why not the head HNSW: on clustered data its approximate candidates send vectors to worse
    lists, at a graph walk per vector (1M x 128, 26k member heads, same imported head graph at
    query time: recall@10 at 64 lists 0.844 with HeadGroups vs 0.797 with the graph at ef 64;
    map search CPU per vector 13 vs 27+ us).

    Selection (``engine``): ``"merge"`` (default) merges each group's GEMM scores straight into
    per-vector top-k buffers in native code (``_native.heads_merge``); ``"buffer"`` (the earlier
    path, kept to measure against) fills a [n, probes, widest group] buffer and argpartitions it.
    Same candidates; at 235k heads x 128 (10M, head_ratio 0.02, probes 6) the buffer's scatter
    and argpartition made the search 52 us of CPU per vector, the merge 18 (bench.heads,
    bench/results/heads.json; at 1M: 16.6 vs 7.6)."""

    def __init__(self, centroids: np.ndarray, heads_sorted: np.ndarray, ids_sorted: np.ndarray,
                 bounds: np.ndarray, code: int, probes: int, engine: str = "merge",
                 hsq: np.ndarray | None = None, csq: np.ndarray | None = None) -> None:
        # arrays of the right type are taken as they are (no copy): memory-mapped ones stay
        # mapped (``load``), one page-cache copy for every process of a machine
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.heads = np.ascontiguousarray(heads_sorted, dtype=np.float32)
        self.ids = np.asarray(ids_sorted, dtype=np.int64)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.code, self.probes, self.engine = int(code), int(probes), engine
        if engine not in ENGINES:
            raise InvalidArgument(f"engine must be one of {ENGINES}, got {engine!r}")
        if len(self.ids) and (self.ids.min() < 0 or self.ids.max() >= 2**32):
            raise InvalidArgument("head ids must lie in [0, 2^32)")
        self.hsq = np.einsum("hd,hd->h", self.heads, self.heads) if hsq is None \
            else np.asarray(hsq, dtype=np.float32)
        self.csq = np.einsum("hd,hd->h", self.centroids, self.centroids) if csq is None \
            else np.asarray(csq, dtype=np.float32)
        self._gids = np.arange(len(self.centroids), dtype=np.int64)
        self._work: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(cls, heads: np.ndarray, code: int, group_size: int = 256, probes: int = 8,
              balance: float = 1.0, seed: int = 0, engine: str = "merge") -> HeadGroups:
        """Groups of the heads: the leaves of SPANN's balanced hierarchical k-means with leaves of
        ``group_size`` (at most ``2 x group_size`` heads each, so no probe is expensive)."""
        from vecdb.index._spann_parts import hierarchical_balanced_clusters

        H = len(heads)
        leaves = hierarchical_balanced_clusters(heads, max(1, group_size), balance, seed) \
            if H > 2 * group_size else [np.arange(H, dtype=np.int64)]
        order = np.concatenate(leaves)
        cnt = np.array([len(x) for x in leaves], dtype=np.int64)
        start = np.cumsum(cnt) - cnt
        bounds = np.append(start, H)
        sums = np.add.reduceat(heads[order].astype(np.float64), start, axis=0)
        cents = (sums / cnt[:, None]).astype(np.float32)
        return cls(cents, heads[order], order, bounds, code, min(probes, len(leaves)), engine)

    def save(self, path: str) -> None:
        """Write the groups to folder ``path``: one ``.npy`` per array (the squared norms too)
        and ``meta.json``, so ``load`` memory-maps them instead of reading private copies."""
        os.makedirs(path, exist_ok=True)
        for name in _SAVED:
            np.save(os.path.join(path, f"{name}.npy"), getattr(self, name))
        with open(os.path.join(path, "meta.json"), "w") as f:
            json.dump({"code": self.code, "probes": self.probes}, f)

    @classmethod
    def load(cls, path: str, mmap: bool = True) -> HeadGroups:
        """The groups ``save`` wrote to ``path``, memory-mapped read-only unless ``mmap`` is
        False: every worker process of a machine shares one page-cache copy of the heads, ids
        and norms; its private memory is the search buffers, O(batch), not O(heads)."""
        if not os.path.isdir(path):
            raise InvalidArgument(f"{path} is not a saved HeadGroups folder")
        a = {n: np.load(os.path.join(path, f"{n}.npy"), mmap_mode="r" if mmap else None)
             for n in _SAVED}
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        return cls(a["centroids"], a["heads"], a["ids"], a["bounds"], int(meta["code"]),
                   int(meta["probes"]), hsq=a["hsq"], csq=a["csq"])

    def _scores(self, X: np.ndarray, V: np.ndarray, vsq: np.ndarray) -> np.ndarray:
        """Distances up to the per-row constant ``|x|^2`` (l2) or exact (ip): ``|v|^2 - 2 x.v``
        / ``-x.v``. The constant does not change the order within a row."""
        ip = X @ V.T
        if self.code == 1:
            return np.negative(ip, out=ip)
        ip *= -2
        ip += vsq[None, :]
        return ip

    def search(self, X: np.ndarray, k: int, block: int | None = None,
               engine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate head ids [n, k] sorted by distance (kernel convention), -1 / inf padded;
        ``block`` vectors at a time. ``engine`` (default ``self.engine``): ``"merge"`` (native
        per-vector top-k buffers) or ``"buffer"`` (the earlier [n, probes, group] buffer and one
        argpartition; kept to measure against, bench.heads). Both give the same candidates."""
        engine = self.engine if engine is None else engine
        if engine not in ENGINES:
            raise InvalidArgument(f"engine must be one of {ENGINES}, got {engine!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidArgument(f"k must be a positive int, got {k!r}")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.heads.shape[1]:
            raise InvalidArgument(f"expected vectors [n, {self.heads.shape[1]}], got {X.shape}")
        block = (16384 if engine == "merge" else 4096) if block is None else max(1, int(block))
        nb = -(-len(X) // block)
        if nb <= 1:
            return self._one(X, int(k), engine)
        step = -(-len(X) // nb)  # even blocks: 20,000 rows -> 2 x 10,000, not 16,384 + 3,616
        parts = [self._one(X[s:s + step], int(k), engine) for s in range(0, len(X), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _one(self, X: np.ndarray, k: int, engine: str) -> tuple[np.ndarray, np.ndarray]:
        """One block. The merge buffers are kept on the instance across calls (a map task
        searches batch after batch: fresh 16 MB buffers would cost their page faults each time);
        a concurrent caller that finds them busy gets its own."""
        if engine == "buffer":
            return self._search(X, k)
        if not self._lock.acquire(blocking=False):
            return self._search_merge(X, k, {})
        try:
            return self._search_merge(X, k, self._work)
        finally:
            self._lock.release()

    def _search_merge(self, X: np.ndarray, k: int,
                      work: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate head ids [n, k] sorted by distance (kernel convention), -1 / inf padded.

        The probed groups come from the centroid GEMM through the same selection as the heads.
        Per probed group one GEMM of its vectors against its heads, merged straight into
        per-vector top-k buffers by ``_native.heads_merge`` (no [n, probes, group] buffer, no
        argpartition: most scores cost one SIMD compare). ``work``: buffers reused across blocks
        (see ``_one``)."""
        from vecdb import _native

        n = len(X)
        G = len(self.centroids)
        P = min(self.probes, G)
        work = {} if work is None else work
        top = np.empty((n, P), dtype=np.int64)
        for s in range(0, n, 4096):  # the centroid scores a slice at a time (G x 16 KB)
            e = min(n, s + 4096)
            top[s:e] = self._select(X[s:e] @ self.centroids.T, np.arange(e - s), self.csq,
                                    self._gids, P, work, "groups")
        g_all = top.ravel()
        o = np.argsort(g_all, kind="stable")
        gb = np.searchsorted(g_all[o], np.arange(G + 1))
        vec_of = o // P
        buf, cnt, thr = self._buffers(work, "heads", n, k)
        for g in np.flatnonzero(np.diff(gb)).tolist():
            rows = vec_of[gb[g]:gb[g + 1]]
            h0, h1 = int(self.bounds[g]), int(self.bounds[g + 1])
            _native.heads_merge(X[rows] @ self.heads[h0:h1].T, rows, self.hsq[h0:h1],
                                self.ids[h0:h1], self.code, k, buf, cnt, thr)
        ids, d = _native.heads_finish(buf, cnt, k)
        if self.code != 1:  # add the row constant back: exact squared L2
            d += np.einsum("nd,nd->n", X, X)[:, None]
            np.maximum(d, 0, out=d)
        return ids, d

    @staticmethod
    def _buffers(work: dict[str, np.ndarray], name: str, n: int,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``heads_merge`` buffers for ``n`` rows and top-``k`` (cap 4k, at least k + 16),
        reset; the key buffer is kept in ``work`` and grown only when too small."""
        cap = max(4 * k, k + 16)
        buf = work.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != cap:
            buf = work[name] = np.empty((n, cap), dtype=np.uint64)
        return buf[:n], np.zeros(n, dtype=np.int64), np.full(n, np.inf, dtype=np.float32)

    def _select(self, S: np.ndarray, rows: np.ndarray, sq: np.ndarray, ids: np.ndarray, k: int,
                work: dict[str, np.ndarray], name: str) -> np.ndarray:
        """Ids of the ``k`` nearest (``ids`` of the columns of the scores ``S`` = X @ V.T) per
        row, sorted: the probed groups of each vector."""
        from vecdb import _native

        buf, cnt, thr = self._buffers(work, name, len(S), k)
        _native.heads_merge(S, rows, sq, ids, self.code, k, buf, cnt, thr)
        return _native.heads_finish(buf, cnt, k)[0]

    def _search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate head ids [n, k] sorted by distance (kernel convention), -1 / inf padded.

        Each probed group's distances land in a [n, probes, widest group] buffer (one
        contiguous row copy per vector and group); one selection over the whole buffer then
        picks the top-k: one ``argpartition`` of ~``probes x 1.4 x group_size`` values per
        vector instead of one per group (numpy's per-row overhead dominated that)."""
        n = len(X)
        G = len(self.centroids)
        sizes = np.diff(self.bounds)
        W = int(sizes.max())
        Dc = self._scores(X, self.centroids, self.csq)
        P = min(self.probes, G)
        top = np.argpartition(Dc, P - 1, axis=1)[:, :P] if G > P else \
            np.broadcast_to(np.arange(G), (n, G))
        del Dc
        buf = np.full((n, P, W), np.inf, dtype=np.float32)
        g_all = top.ravel()
        o = np.argsort(g_all, kind="stable")
        gb = np.searchsorted(g_all[o], np.arange(G + 1))
        vec_of, slot_of = o // P, o % P
        for g in np.flatnonzero(np.diff(gb)).tolist():
            sel = slice(gb[g], gb[g + 1])
            rows = vec_of[sel]
            h0, h1 = int(self.bounds[g]), int(self.bounds[g + 1])
            buf[rows, slot_of[sel], :h1 - h0] = self._scores(X[rows], self.heads[h0:h1],
                                                              self.hsq[h0:h1])
        flat = buf.reshape(n, P * W)
        kk = min(k, P * W)
        p = np.argpartition(flat, kk - 1, axis=1)[:, :kk] if P * W > kk else \
            np.broadcast_to(np.arange(kk), (n, kk))
        d = np.take_along_axis(flat, p, 1)
        s = np.argsort(d, axis=1, kind="stable")
        p = np.take_along_axis(p, s, 1)
        d = np.take_along_axis(d, s, 1)
        grp = np.take_along_axis(top, p // W, 1)
        ok = np.isfinite(d)
        ids = np.where(ok, self.ids[np.minimum(self.bounds[grp] + p % W, len(self.ids) - 1)], -1)
        if self.code != 1:  # add the row constant back: exact squared L2
            d += np.einsum("nd,nd->n", X, X)[:, None]
            np.maximum(d, 0, out=d)
        out_i = np.full((n, k), -1, dtype=np.int64)
        out_d = np.full((n, k), np.inf, dtype=np.float32)
        out_i[:, :kk], out_d[:, :kk] = ids, d
        return out_i, out_d


def group_size(n_heads: int, probes: int) -> int:
    """Heads per ``HeadGroups`` group: ``sqrt(H / probes)`` balances the centroid GEMM
    (``G = H / size`` centroids) against the probed heads (``probes x size``)."""
    return int(min(1024, max(32, round((n_heads / max(1, probes)) ** 0.5))))


class HeadSearch:
    """Candidate heads of a batch: ``HeadGroups`` (the default: batched GEMMs), the saved head
    HNSW (``ef`` = the collection's ``head_ef`` unless ``search_ef`` is given, as SPANN searches
    it) or, for a flat head index, an exact GEMM scan in blocks."""

    def __init__(self, heads: np.ndarray, code: int, graph_path: str | None, ef: int,
                 groups_path: str | None = None) -> None:
        self.heads, self.code, self.ef = heads, code, ef
        self.g = None
        self.groups = HeadGroups.load(groups_path) if groups_path else None
        if graph_path is not None and self.groups is None:
            from vecdb.index.hnsw import HNSWIndex

            self.g = HNSWIndex.load(graph_path)

    def search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from vecdb import _native
        from vecdb.index._spann_parts import pair_dist

        if self.groups is not None:
            return self.groups.search(X, k)
        if self.g is not None:
            from vecdb.index.hnsw import HNSWSearchParams

            return self.g.search(X, k, params=HNSWSearchParams(ef=max(self.ef, k),
                                                               num_threads=1))
        ids = np.empty((len(X), k), dtype=np.int64)
        dist = np.empty((len(X), k), dtype=np.float32)
        for s in range(0, len(X), 1024):
            D = np.ascontiguousarray(pair_dist(X[s:s + 1024], self.heads, self.code),
                                     dtype=np.float32)
            ids[s:s + 1024], dist[s:s + 1024] = _native.topk(D, k)
        return ids, dist
