"""Curator: a multi-tenant index with one shared clustering tree and per-tenant sub-trees.

After "Curator: Efficient Indexing for Multi-Tenant Vector Databases" (Jin et al., 2024). The
point: per-tenant search speed with the memory of one shared index. Vectors are stored once (a
vector on 8 tenants' lists costs 8 slot entries, not 8 copies)::

    shared tree (hierarchical k-means)        per node: centroid, Bloom filter of the tenants
            root ── shortlist(t=7)            present below, and for each tenant whose sub-tree
           /  |  \\                             ends here a shortlist of its slots (<= max_sl_size)
        n1   n2   n3 ── shortlist(t=3)
       / \\
     leaf leaf ── shortlist(t=3? no: antichain) ... every (slot, tenant) pair sits in exactly one
                                                   shortlist of the tenant, on the slot's path

- **Insert** routes the vector to its nearest-centroid leaf (kept per slot) and grants it to every
  tenant on its access list.
- **Grant** walks the slot's path from the root: append to the tenant's shortlist if the node has
  one (splitting it to the children when it overflows); else, if the node's Bloom filter lacks the
  tenant, start a one-element shortlist there; else descend. So a small tenant lives in one
  shortlist near the root (an exact scan), a big one is spread over shortlists deeper down.
- **Revoke / delete** remove the entry, then merge the tenant's shortlists up to the highest
  ancestor whose sub-tree holds <= ``max_sl_size`` of its entries. Bloom filters keep stale bits
  (false positives only) until a lazy full rebuild.
- **Search** is best-first over the tenant's sub-tree by centroid distance, skipping nodes whose
  Bloom filter lacks the tenant; shortlists met become candidate buckets until they hold
  ``gamma1 * gamma2 * k`` vectors; the buckets nearest by centroid are scanned exactly (shared SIMD
  kernels) until ``gamma2 * k`` vectors were scanned. ``tenant=None`` does the same over leaves.

All of that runs in C without the GIL (``native/_curator_impl.c`` through ``vecdb._curator``).
A plain query (float32 array, int k and tenant, simple knobs) is one native call: input checks,
the readers-writer lock (in C) and the search happen in one GIL-free stretch, so the Python
boundary costs ~1 us instead of ~7 us; other inputs take the general validating path.

**Training.** Until ``train_size`` vectors are present the tree is a single root leaf, so every
search is an exact scan of the tenant's shortlist. The first add that reaches ``train_size`` live
vectors trains the tree (faiss ``Kmeans``, hierarchical: ``nlist`` children at the root,
``fanout`` below, until a node's share of the data is <= ``leaf_size`` or ``max_depth``) on a sample
of up to ``train_sample`` live vectors and rebuilds the structure. **Re-training** is triggered
when the live count grows past ``retrain_factor`` times the count the tree was trained at, or when
data drift piles more than ``drift_factor * leaf_size`` vectors into one leaf; with
``background_retrain`` (default) it runs in a thread: snapshot under the write lock, build without
locks while searches and writes continue on the old structure (writes are journaled), replay the
journal and swap under the write lock. ``retrain()`` does it on demand (synchronously, or with
``background=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from vecdb.errors import InvalidArgument
from vecdb.index.acl import normalize_acl
from vecdb.index.base import Index, SearchParams, check_build_params
from vecdb.kernels import metric_code

_INT32_MAX = 2**31 - 1


class _RWLock:
    """Many concurrent searches (the native search runs without the GIL) or one writer.

    A thin Python face of the native gate (``vecdb._curator.Gate``), whose lock is the one the
    per-query fast path takes in C. Writes are reentrant for the thread that holds the write side
    (an add that triggers a retrain), and a read from that thread takes nothing. Writers wait for
    running searches; new searches wait for a waiting writer, so a stream of searches cannot
    starve writes.
    """

    def __init__(self, gate) -> None:
        self._gate = gate

    def acquire_read(self) -> bool:
        """Take the read side; returns False (nothing taken) for the thread holding the write
        side, which may read its own state."""
        return self._gate.acquire_read()

    def release_read(self) -> None:
        self._gate.release_read()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        taken = self.acquire_read()
        try:
            yield
        finally:
            if taken:
                self.release_read()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        self._gate.acquire_write()
        try:
            yield
        finally:
            self._gate.release_write()


@dataclasses.dataclass(frozen=True)
class CuratorSearchParams(SearchParams):
    """Per-call search knobs (names as in the Curator paper).

    ``gamma1``: the walk collects candidate buckets until they hold ``gamma1 * gamma2 * k`` vectors
    (more exploration, better choice of buckets). ``gamma2``: the nearest buckets are scanned
    exactly until ``gamma2 * k`` vectors were scanned (the main recall/speed knob).
    """

    gamma1: float = 2.0
    gamma2: float = 96.0

    def __post_init__(self):
        for name in ("gamma1", "gamma2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise InvalidArgument(f"{name} must be a number, got {v!r}")
            if not np.isfinite(v) or v < 1:
                raise InvalidArgument(f"{name} must be a finite number >= 1, got {v!r}")


_DEFAULT_PARAMS = CuratorSearchParams()

_BUILD_DEFAULTS: dict[str, Any] = {
    "nlist": 32,  # root fan-out
    "fanout": 8,  # fan-out below the root
    "leaf_size": 128,  # target vectors per leaf (of the data the tree is trained for)
    "max_sl_size": 128,  # shortlist capacity at internal nodes
    "max_depth": 6,
    "train_size": 4096,  # live vectors needed before the first training
    "train_sample": 100_000,  # k-means sample size
    "niter": 12,  # k-means iterations
    "bloom_bits": 2048,  # bits per node filter
    "bloom_hashes": 3,
    "retrain_factor": 8.0,  # retrain when live count > factor x trained count
    "drift_factor": 32.0,  # ... or when a leaf holds > factor x leaf_size vectors
    "background_retrain": True,  # automatic retrains (after the first) run in a thread
    "tree_metric": "auto",  # routing/clustering metric: auto (= the metric), "l2" or "ip"
    "seed": 0,
}


class CuratorIndex(Index):
    """Shared clustering tree + per-tenant shortlists (see the module docstring)."""

    kind = "curator"
    params_class = CuratorSearchParams

    def __init__(self, dim: int, metric: str = "l2", **params: Any):
        super().__init__(dim, metric)
        p = check_build_params("CuratorIndex", params, _BUILD_DEFAULTS)
        ints = ("nlist", "fanout", "leaf_size", "max_sl_size", "max_depth", "train_size",
                "train_sample", "niter", "bloom_bits", "bloom_hashes", "seed")
        for name in ints:
            v = p[name]
            low = 0 if name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
            p[name] = int(v)
        for name in ("retrain_factor", "drift_factor"):
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 1:
                raise InvalidArgument(f"{name} must be a number > 1, got {v!r}")
            p[name] = float(v)
        if not isinstance(p["background_retrain"], bool):
            raise InvalidArgument("background_retrain must be a bool")
        if p["tree_metric"] not in ("auto", "l2", "ip"):
            raise InvalidArgument(f"tree_metric must be auto, l2 or ip, got {p['tree_metric']!r}")
        if p["nlist"] < 2 or p["fanout"] < 2:
            raise InvalidArgument("nlist and fanout must be >= 2")
        if p["max_depth"] > 30:
            raise InvalidArgument("max_depth must be <= 30")
        self.params = p
        self._code = metric_code(metric)
        tm = p["tree_metric"]
        self._tree_l2 = tm == "l2" or (tm == "auto" and self.metric == "l2")
        from vecdb._curator import Gate

        self._gate = Gate(self.dim, self.metric == "cosine", CuratorSearchParams,
                          _DEFAULT_PARAMS.gamma1, _DEFAULT_PARAMS.gamma2)
        self._lock = _RWLock(self._gate)
        self._params_cache: dict[tuple, SearchParams] = {}
        self.__vecs = np.zeros((1024, self.dim), dtype=np.float32)
        self._high = 0
        self._trained_on = 0  # live count the tree was trained at (0: untrained single leaf)
        self._tree = self._single_leaf()
        self.__core = self._new_core(self._tree)
        self._gate.bind(self.__core, self.__vecs)
        self._journal: list | None = None  # writes made during a background rebuild
        self._generation = 0  # bumped by every swap of the structure
        self._before_swap = None  # test hook, called by a background rebuild before its swap

    # The structure and the vector matrix are read by the native fast search path through the
    # gate, so every replacement of either object rebinds it (always under the write lock).
    @property
    def _core(self):
        return self.__core

    @_core.setter
    def _core(self, core) -> None:
        self.__core = core
        self._gate.bind(core, self.__vecs)

    @property
    def _vecs(self) -> np.ndarray:
        return self.__vecs

    @_vecs.setter
    def _vecs(self, vecs: np.ndarray) -> None:
        self.__vecs = vecs
        self._gate.bind(self.__core, vecs)

    # -- tree -------------------------------------------------------------------------------
    def _single_leaf(self) -> dict[str, np.ndarray]:
        return {"centroids": np.zeros((1, self.dim), dtype=np.float32),
                "parent": np.full(1, -1, dtype=np.int32),
                "child_ptr": np.zeros(2, dtype=np.int32),
                "children": np.zeros(0, dtype=np.int32)}

    def _new_core(self, tree: dict[str, np.ndarray]):
        from vecdb._curator import CuratorCore

        children = tree["children"] if len(tree["children"]) else np.zeros(1, dtype=np.int32)
        return CuratorCore(self.dim, self._code, metric_code("l2" if self._tree_l2 else "ip"),
                           np.ascontiguousarray(tree["centroids"]),
                           np.ascontiguousarray(tree["parent"]),
                           np.ascontiguousarray(tree["child_ptr"]),
                           np.ascontiguousarray(children, dtype=np.int32),
                           self.params["bloom_bits"], self.params["bloom_hashes"],
                           self.params["max_sl_size"])

    def _train_tree(self, X: np.ndarray, n_total: int) -> dict[str, np.ndarray]:
        """Hierarchical k-means over the sample ``X`` standing for ``n_total`` vectors.

        For ip/cosine the k-means is spherical (unit centroids), so routing by inner product picks
        the centroid of the right direction; for l2 it is plain Lloyd.
        """
        import faiss

        p = self.params
        spherical = not self._tree_l2
        leaf_cap = max(1.0, p["leaf_size"] * len(X) / max(1, n_total))  # in sample points
        root = X.mean(axis=0)
        if spherical:
            root = root / max(float(np.linalg.norm(root)), 1e-12)
        cents, parent, kids = [root.astype(np.float32)], [-1], [[]]
        queue = [(0, np.arange(len(X)), 0)]
        head = 0
        while head < len(queue):
            node, idx, depth = queue[head]
            head += 1
            if len(idx) <= leaf_cap or depth >= p["max_depth"]:
                continue
            k = min(p["nlist"] if depth == 0 else p["fanout"], len(idx))
            if k < 2:
                continue
            sub = np.ascontiguousarray(X[idx])
            km = faiss.Kmeans(self.dim, k, niter=p["niter"], seed=p["seed"] + node,
                              spherical=spherical, min_points_per_centroid=1,
                              max_points_per_centroid=1 << 30, verbose=False)
            km.train(sub)
            C = km.centroids.astype(np.float32)
            if spherical:
                C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
            _, assign = km.index.search(sub, 1)
            assign = assign.ravel()
            if len(np.unique(assign)) < 2:  # cannot split (duplicates): stays a leaf
                continue
            for j in range(k):
                cid = len(cents)
                cents.append(C[j])
                parent.append(node)
                kids.append([])
                kids[node].append(cid)
                queue.append((cid, idx[assign == j], depth + 1))
        child_ptr = np.zeros(len(cents) + 1, dtype=np.int32)
        child_ptr[1:] = np.cumsum([len(c) for c in kids])
        children = np.array([c for cs in kids for c in cs], dtype=np.int32)
        return {"centroids": np.ascontiguousarray(np.stack(cents), dtype=np.float32),
                "parent": np.array(parent, dtype=np.int32), "child_ptr": child_ptr,
                "children": children}

    def retrain(self, background: bool = False) -> threading.Thread | None:
        """Retrain the tree on the live vectors and rebuild the structure; access is unchanged
        (the same pairs are re-granted).

        ``background=False``: done now, under the write lock. ``background=True``: a snapshot
        (live slots, their vectors, all pairs) is taken under the write lock, the new tree and
        structure are built in a thread without any lock while searches and writes go on against
        the old one, and the writes made meanwhile are journaled and replayed on the new structure
        just before the swap (under the write lock). Returns the thread (None if synchronous or
        if a background rebuild is already running). The snapshot copies the live vectors, so a
        background rebuild transiently needs one more copy of them.
        """
        with self._lock.write():
            if background:
                if self._journal is not None:
                    return None
                live = self._core.live_slots()
                snap = (live, self._vecs[live], self._core.pairs(), self._generation)
                self._journal = []
                th = threading.Thread(target=self._rebuild_background, args=snap,
                                      name="curator-retrain", daemon=True)
                th.start()
                return th
            live = self._core.live_slots()
            tree, core, trained = self._build(live, self._vecs[live], self._core.pairs())
            self._tree, self._core, self._trained_on = tree, core, trained
            self._journal = None  # a running background rebuild is superseded
            self._generation += 1
            return None

    def _build(self, live: np.ndarray, X: np.ndarray, pairs) -> tuple[dict, Any, int]:
        """Train a tree on (a sample of) ``X`` (the vectors of ``live``) and fill a new core."""
        n = len(live)
        if n == 0:
            return self._single_leaf(), self._new_core(self._single_leaf()), 0
        rng = np.random.default_rng(self.params["seed"])
        pick = np.arange(n) if n <= self.params["train_sample"] else np.sort(
            rng.choice(n, self.params["train_sample"], replace=False))
        tree = self._train_tree(np.ascontiguousarray(X[pick]), n)
        core = self._new_core(tree)
        core.place(live, core.route(X))
        core.grant_many(*pairs)
        return tree, core, n

    def _rebuild_background(self, live, X, pairs, gen: int) -> None:
        tree, core, trained = self._build(live, X, pairs)
        hook = self._before_swap
        if hook is not None:  # tests: writes can be made to happen before the swap
            hook()
        with self._lock.write():
            if self._journal is None or self._generation != gen:
                return  # superseded by a synchronous retrain or a load
            for op in self._journal:
                op(core)
            self._tree, self._core, self._trained_on = tree, core, trained
            self._journal = None
            self._generation += 1

    def _log(self, op) -> None:
        """Apply a write to the live structure and journal it for a running background rebuild."""
        op(self._core)
        if self._journal is not None:
            self._journal.append(op)

    def _maybe_retrain(self, leaves: np.ndarray) -> None:
        """Automatic (re)training after an add; ``leaves``: where the new vectors went. The first
        training is synchronous (small by construction); later ones follow
        ``background_retrain``."""
        n = len(self._core)
        p = self.params
        if self._trained_on == 0:
            if n >= p["train_size"]:
                self.retrain()
            return
        if self._journal is not None:  # a rebuild is already running
            return
        grow = n > p["retrain_factor"] * self._trained_on
        if not grow:
            # drift: new data piling into a region the tree cut coarsely (only touched leaves
            # can have grown, so only they are checked: O(batch), not O(tree))
            touched = np.unique(leaves) if len(leaves) > 1 else leaves
            biggest = max(self._core.leaf_size(int(x)) for x in touched[:4096])
            grow = biggest > p["drift_factor"] * p["leaf_size"]
        if grow:
            self.retrain(background=p["background_retrain"])

    # -- writes -----------------------------------------------------------------------------
    def _grow(self, max_slot: int) -> None:
        cap = len(self._vecs)
        if max_slot < cap:
            return
        while cap <= max_slot:
            cap *= 2
        self._resize(cap)

    def _resize(self, cap: int) -> None:
        """The vector matrix with ``cap`` rows (``cap`` >= the current rows); caller holds the
        write lock."""
        v = np.zeros((cap, self.dim), dtype=np.float32)
        v[: len(self._vecs)] = self._vecs
        self._vecs = v

    @staticmethod
    def _acl_pairs(acl, n: int, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The validated access lists of ``n`` vectors at slots ``s`` as (slot, tenant) pairs."""
        indptr, indices = normalize_acl(acl, n)
        if indices.size and int(indices.max()) > _INT32_MAX:
            raise InvalidArgument("acl: tenant ids must be < 2^31")
        return np.repeat(s, np.diff(indptr)), np.ascontiguousarray(indices, dtype=np.int32)

    def _put_vectors(self, s: np.ndarray, X: np.ndarray) -> None:
        """Store ``X`` at slots ``s`` (non-empty); caller holds the write lock."""
        self._grow(int(s.max()))
        self._vecs[s] = X
        self._high = max(self._high, int(s.max()) + 1)

    @staticmethod
    def _tenant(tenant) -> int:
        if isinstance(tenant, bool) or not isinstance(tenant, int | np.integer):
            raise InvalidArgument(f"tenant must be an integer, got {tenant!r}")
        if not 0 <= int(tenant) <= _INT32_MAX:
            raise InvalidArgument(f"tenant ids must be in [0, 2^31), got {tenant}")
        return int(tenant)

    def add(self, vectors, slots=None, acl=None) -> np.ndarray:
        """Insert (or replace) vectors with their access lists (owner first; order is kept only
        as a set). Validates everything before changing anything."""
        X = self._prepare(vectors)
        n = X.shape[0]
        with self._lock.write():
            if slots is None:
                s = np.arange(self._high, self._high + n, dtype=np.int64)
            else:
                s = self._slots(slots, n)
            ps, pt = self._acl_pairs(acl, n, s)
            if n == 0:
                return s
            self._put_vectors(s, X)
            out: list[np.ndarray] = []

            def op(core):
                replaced = np.array([x for x in s.tolist() if core.slot_leaf(x) >= 0],
                                    dtype=np.int64)
                if len(replaced):
                    core.unplace(replaced)
                leaves = core.route(X)
                core.place(s, leaves)
                if len(pt):
                    core.grant_many(ps, pt)
                out.append(leaves)

            self._log(op)
            self._maybe_retrain(out[0])
        return s

    def remove(self, slots) -> None:
        """Delete slots (unknown or already deleted ones are ignored)."""
        s = self._slots(slots)
        s = np.ascontiguousarray(s)
        with self._lock.write():
            self._log(lambda core: core.unplace(s))

    def _check_live(self, slot) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int | np.integer):
            raise InvalidArgument(f"slot must be an integer, got {slot!r}")
        if self._core.slot_leaf(int(slot)) < 0:
            raise InvalidArgument(f"slot {slot} is not in the index")
        return int(slot)

    def grant(self, slot: int, tenant: int) -> None:
        t = self._tenant(tenant)
        with self._lock.write():
            s = np.array([self._check_live(slot)], dtype=np.int64)
            self._log(lambda core: core.grant_many(s, np.array([t], dtype=np.int32)))

    def revoke(self, slot: int, tenant: int) -> None:
        t = self._tenant(tenant)
        with self._lock.write():
            s = np.array([self._check_live(slot)], dtype=np.int64)
            self._log(lambda core: core.revoke_many(s, np.array([t], dtype=np.int32)))

    # -- reads ------------------------------------------------------------------------------
    def _params(self, params) -> SearchParams:
        # Parsing a knob dict costs ~5 us, a third of a small search: cache parsed dicts (the
        # params are frozen, so sharing one object between calls and threads is safe).
        if isinstance(params, dict):
            try:
                # types in the key: {"gamma1": True} must not hit the entry of {"gamma1": 1}
                key = (tuple(params.items()), tuple(map(type, params.values())))
                hit = self._params_cache.get(key)
            except TypeError:  # unhashable values: let from_dict report them
                return super()._params(params)
            if hit is None:
                hit = super()._params(params)
                if len(self._params_cache) < 256:
                    self._params_cache[key] = hit
            return hit
        if params is None:
            return _DEFAULT_PARAMS
        return super()._params(params)

    def search(self, queries, k: int, tenant: int | None = None, params=None):
        """k nearest per query among ``tenant``'s slots (every live slot if ``tenant`` is None).

        The common call (float32 C-contiguous queries, int k, int or None tenant, params None, a
        dict of plain numbers or a ``CuratorSearchParams``) is checked and served in one native
        call (``Gate.search1``: no Python lock, no per-call objects but the results); any other
        input takes the general path below, which validates it and raises the proper error."""
        r = self._gate.search1(queries, k, tenant, params)
        if r is not None:
            return r
        p = self._params(params)
        k = self._k(k)
        Q = self._prepare(queries, "queries")
        t = -1 if tenant is None else self._tenant(tenant)
        taken = self._lock.acquire_read()  # explicit, not a context manager: per-query path
        try:
            ids, dist, _ = self._core.search(self._vecs, Q, t, k, p.gamma1, p.gamma2)
        finally:
            if taken:
                self._lock.release_read()
        return ids, dist

    def search_stats(self, queries, k: int, tenant: int | None = None, params=None):
        """Like ``search`` plus totals ``{"scanned": vectors, "visited": nodes}``."""
        p = self._params(params)
        k = self._k(k)
        Q = self._prepare(queries, "queries")
        t = -1 if tenant is None else self._tenant(tenant)
        with self._lock.read():
            ids, dist, st = self._core.search(self._vecs, Q, t, k, p.gamma1, p.gamma2)
        return ids, dist, {"scanned": int(st[0]), "visited": int(st[1])}

    def tenants_of(self, slot: int) -> np.ndarray:
        """Sorted tenants that may see ``slot`` (empty if the slot is not live)."""
        return self._core.slot_tenants(int(slot))

    def vectors(self, slots) -> np.ndarray:
        """Stored (normalised, for cosine) vectors of live slots."""
        s = self._slots(slots)
        for x in s.tolist():
            self._check_live(x)
        return self._vecs[s].copy()

    @property
    def trained(self) -> bool:
        return self._trained_on > 0

    @property
    def core(self):
        """The native structure (tests check its invariants)."""
        return self._core

    @property
    def tree(self) -> dict[str, np.ndarray]:
        return self._tree

    def memory_bytes(self) -> int:
        """Vectors (allocated capacity) + the native structure."""
        return self._vecs.nbytes + self.structure_bytes()

    def structure_bytes(self) -> int:
        """Bytes beyond the raw vectors: tree, Bloom filters, shortlists, per-slot lists."""
        return int(self._core.memory_bytes())

    def __len__(self) -> int:
        return len(self._core)

    # -- bulk build (vecdb.ingest.bulk_curator) ---------------------------------------------
    def train_tree(self, sample: np.ndarray, n_total: int) -> dict[str, np.ndarray]:
        """The shared tree trained on ``sample`` (prepared vectors: normalised for cosine)
        standing for ``n_total`` vectors: Curator's own hierarchical k-means, as a retrain on
        that sample would make it. Changes nothing in this index."""
        X = self._prepare(sample, "sample")
        if not isinstance(n_total, int | np.integer) or n_total < len(X):
            raise InvalidArgument(f"n_total must be an int >= the sample size, got {n_total!r}")
        if len(X) == 0:
            return self._single_leaf()
        return self._train_tree(np.ascontiguousarray(X), int(n_total))

    @classmethod
    def with_tree(cls, dim: int, metric: str, tree: dict[str, np.ndarray],
                  trained_on: int = 0, **params: Any) -> CuratorIndex:
        """An empty index whose shared tree is ``tree`` (from ``train_tree``), counted as trained
        at ``trained_on`` vectors (the automatic retrain then fires at ``retrain_factor`` times
        that). The bulk path's map tasks route with it; its import places into it."""
        idx = cls(dim, metric, **params)
        # own writable copies (a tree from Ray's object store is read-only; the core wants
        # writable buffers): small, nodes x dim
        dt = {"centroids": np.float32, "parent": np.int32, "child_ptr": np.int32,
              "children": np.int32}
        t = {k: np.array(tree[k], dtype=v, order="C", copy=True) for k, v in dt.items()}
        if t["centroids"].ndim != 2 or t["centroids"].shape[1] != idx.dim:
            raise InvalidArgument(f"tree centroids must be [nodes, {idx.dim}]")
        if len(t["parent"]) != len(t["centroids"]) or len(t["child_ptr"]) != len(t["parent"]) + 1:
            raise InvalidArgument("tree arrays disagree on the number of nodes")
        idx._tree = t
        idx._core = idx._new_core(t)
        idx._trained_on = int(trained_on) if len(t["parent"]) > 1 else 0
        return idx

    def reserve(self, capacity: int) -> None:
        """Size the vector matrix for slots ``< capacity`` at once (a bulk import knows its
        slot range: no doubling copies of a large matrix while placing)."""
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer):
            raise InvalidArgument(f"capacity must be an int, got {capacity!r}")
        if capacity > 0:
            with self._lock.write():
                if capacity > len(self._vecs):
                    self._resize(int(capacity))

    def route(self, vectors) -> np.ndarray:
        """Leaf of each vector in the current tree (int32 [n]): where ``add`` would place it.
        Read-only; what the bulk path's map tasks run in parallel."""
        X = self._prepare(vectors)
        with self._lock.read():
            return self._core.route(X)

    def place_routed(self, vectors, slots, leaves, acl=None) -> None:
        """Insert new vectors whose leaves were computed already (``route`` on this tree, e.g.
        by parallel bulk tasks): ``add`` without the routing and without automatic retraining.
        ``slots`` must not be live; ``leaves`` must be leaves of the tree. Validates everything
        before changing anything."""
        X = self._prepare(vectors)
        n = X.shape[0]
        s = self._slots(slots, n)
        lv = np.ascontiguousarray(leaves, dtype=np.int32)
        if lv.shape != (n,):
            raise InvalidArgument(f"leaves must have shape ({n},), got {lv.shape}")
        ps, pt = self._acl_pairs(acl, n, s)
        if n == 0:
            return
        with self._lock.write():
            cp = self._tree["child_ptr"]
            if lv.min() < 0 or lv.max() >= len(cp) - 1 or (cp[lv + 1] != cp[lv]).any():
                raise InvalidArgument("leaves: every entry must be a leaf node of the tree")
            if len(np.unique(s)) != n or any(self._core.slot_leaf(int(x)) >= 0
                                             for x in s.tolist()):
                raise InvalidArgument("place_routed: slots must be distinct and not live")
            self._put_vectors(s, X)

            def op(core):
                core.place(s, lv)
                if len(pt):
                    core.grant_many(ps, pt)

            self._log(op)

    # -- persistence ------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with self._lock.read():
            live = self._core.live_slots()
            leaves = np.array([self._core.slot_leaf(int(x)) for x in live], dtype=np.int32)
            sl_node, sl_tenant, sl_indptr, sl_ids = self._core.lists()
            arrays = {f"tree_{k}": v for k, v in self._tree.items()}
            arrays.update(slots=live, leaves=leaves, vectors=self._vecs[live], sl_node=sl_node,
                          sl_tenant=sl_tenant, sl_indptr=sl_indptr, sl_ids=sl_ids)
            meta = {"params": self.params, "high": self._high, "trained_on": self._trained_on}
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> CuratorIndex:
        idx = cls(meta["dim"], meta["metric"], **meta["params"])
        tree = {k: arrays[f"tree_{k}"] for k in ("centroids", "parent", "child_ptr", "children")}
        tree["centroids"] = np.ascontiguousarray(tree["centroids"], dtype=np.float32)
        tree["children"] = np.ascontiguousarray(tree["children"], dtype=np.int32)
        idx._tree = tree
        idx._core = idx._new_core(tree)
        slots = np.ascontiguousarray(arrays["slots"], dtype=np.int64)
        if len(slots):
            idx._grow(int(slots.max()))
            idx._vecs[slots] = arrays["vectors"]
            idx._core.place(slots, np.ascontiguousarray(arrays["leaves"], dtype=np.int32))
        ip, ids = arrays["sl_indptr"], np.ascontiguousarray(arrays["sl_ids"], dtype=np.int64)
        for i, (node, tenant) in enumerate(zip(arrays["sl_node"].tolist(),
                                               arrays["sl_tenant"].tolist(), strict=True)):
            idx._core.restore_list(node, tenant, ids[ip[i] : ip[i + 1]])
        idx._high = int(meta["high"])
        idx._trained_on = int(meta["trained_on"])
        return idx
