"""Candidate-head search of the bulk build's map stage: ``HeadGroups`` (batched GEMMs over
groups of heads, near-exact) and ``HeadSearch`` (HeadGroups, the saved head graph, or an exact
scan for a flat head index)."""

from __future__ import annotations

import numpy as np


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
    map search CPU per vector 13 vs 27+ us). At 225k heads (10M, head_ratio 0.02) the selection
    grows to ~48 us per vector."""

    def __init__(self, centroids: np.ndarray, heads_sorted: np.ndarray, ids_sorted: np.ndarray,
                 bounds: np.ndarray, code: int, probes: int) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.heads = np.ascontiguousarray(heads_sorted, dtype=np.float32)
        self.ids = np.asarray(ids_sorted, dtype=np.int64)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.code, self.probes = int(code), int(probes)
        self.hsq = np.einsum("hd,hd->h", self.heads, self.heads)
        self.csq = np.einsum("hd,hd->h", self.centroids, self.centroids)

    @classmethod
    def build(cls, heads: np.ndarray, code: int, group_size: int = 256, probes: int = 8,
              balance: float = 1.0, seed: int = 0) -> HeadGroups:
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
        return cls(cents, heads[order], order, bounds, code, min(probes, len(leaves)))

    def save(self, path: str) -> None:
        np.savez(path, centroids=self.centroids, heads=self.heads, ids=self.ids,
                 bounds=self.bounds, code=self.code, probes=self.probes)

    @classmethod
    def load(cls, path: str) -> HeadGroups:
        z = np.load(path)
        return cls(z["centroids"], z["heads"], z["ids"], z["bounds"], int(z["code"]),
                   int(z["probes"]))

    def _scores(self, X: np.ndarray, V: np.ndarray, vsq: np.ndarray) -> np.ndarray:
        """Distances up to the per-row constant ``|x|^2`` (l2) or exact (ip): ``|v|^2 - 2 x.v``
        / ``-x.v``. The constant does not change the order within a row."""
        ip = X @ V.T
        if self.code == 1:
            return np.negative(ip, out=ip)
        ip *= -2
        ip += vsq[None, :]
        return ip

    def search(self, X: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Candidate head ids [n, k] sorted by distance (kernel convention), -1 / inf padded;
        ``block`` vectors at a time (the distance buffer stays in cache)."""
        if len(X) <= block:
            return self._search(X, k)
        parts = [self._search(X[s:s + block], k) for s in range(0, len(X), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

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
