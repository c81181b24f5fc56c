"""HNSW graph index (Malkov & Yashunin) in native code, with tenant-filtered search and deletes.

The graph, the insert and the search loops live in C (``native/_hnsw_impl.c``) and run without the
GIL; this module is the Python boundary: it validates input, assigns slots and levels, keeps the
access lists and plans each filtered search::

    search(Q, k, tenant, params)
        |  tenant is None ----------------------------> graph walk, results = live slots
        |  members(tenant) <= exact_threshold --------> exact scan of the tenant's slots
        |     (a batch of >= 8 queries: exact_threshold_batch; the scan is GEMM blocks merged
        |      into per-query heaps in C, several times cheaper per query than one by one)
        |  selectivity < two_hop_below (default off) --> seeded two-hop walk for every query
        |  otherwise: "local", per query -------------> tenant dense around the query's
        |                                                 descent end point: bitmap walk;
        |                                                 else: seeded two-hop walk
        v  (a walk that found < k results falls back to the exact scan of the tenant's slots)

Why the planner: a bitmap-filtered HNSW walk at selectivity s does ~1/s times the work to fill ef
allowed results, and far more when the tenant's vectors are clustered away from the query (the
walk must cross everyone else's nodes to reach them); an exact scan costs members x dim and, for a
batch, runs at GEMM speed. The two-hop walk (ACORN-style) scores only the tenant's nodes, reaching
them through two hops, and starts at the sampled members nearest the query as well as where the
descent ended, so a tenant clustered elsewhere is reached directly. Whether the tenant is "here"
is read off the descent's end point and its level-0 neighbours: their share of the tenant's nodes
against its share of the index.

Deletes mark the slot deleted at once (never returned), then relink its neighbours through its
own neighbours (heuristic-pruned), so recall does not decay; the slot is reused by later adds.
Adding at a live slot replaces the vector (delete + insert).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import zipfile
import zlib
from typing import Any

import numpy as np

from vecdb import _hnsw
from vecdb.errors import InvalidArgument
from vecdb.index.acl import AccessLists, normalize_acl
from vecdb.index.base import Index, SearchParams, check_build_params, pad_results
from vecdb.kernels import metric_code
from vecdb.storage.npz import write_npy_into

# Planner defaults, measured on GloVe-50 (390k x 50, one thread, BLAS on one thread; tenants of
# 0.1-50%, random and clustered membership; bench/results/hnsw_filtered.json and the README):
# - one query per call: the per-query SIMD scan of the members beats the walks up to ~30-40k
#   members (1.3k QPS at 39k members vs 1.8k for the bitmap walk on a random tenant, 1.1k for the
#   local walk on a clustered one, for which the scan would still win), hence EXACT_THRESHOLD;
# - batches of >= 8 queries: the GEMM scan merged into heaps in C runs ~14-18k QPS at 39k members
#   and ~3.2k at 195k, level with the best walk at 50% of the index (3.2k QPS at recall 0.95),
#   hence EXACT_THRESHOLD_BATCH = 256k members;
# - above them, "local" per query: LOCAL_RATIO 0.5 sends every query of a random tenant (10-50%)
#   to the bitmap walk and ~1/3-1/2 of a clustered tenant's queries to the seeded two-hop walk
#   (clustered 10%: ~2x the bitmap walk's QPS at recall 0.95). Two-hop for every query
#   (TWO_HOP_BELOW > 0) loses recall on sparse random tenants (0.81 at 1%, ef 128), so it is off.
EXACT_THRESHOLD = 32768
EXACT_THRESHOLD_BATCH = 262144
TWO_HOP_BELOW = 0.0
LOCAL_RATIO = 0.5
SEEDS = 256
STRATEGIES = ("auto", "graph", "two_hop", "local", "exact")
_EXACT_BLOCK = 8192  # members gathered per GEMM block in the batched exact scan
_GEMM_MIN_QUERIES = 8  # batches at least this large take the GEMM exact scan


@dataclasses.dataclass(frozen=True)
class HNSWSearchParams(SearchParams):
    """Per-call HNSW search knobs.

    ``ef``: beam width on level 0 (raised to k when smaller). ``strategy``: "auto" (the planner),
    or force "graph", "two_hop", "local" or "exact" for a tenant search. ``exact_threshold``: a
    tenant with at most this many vectors is scanned exactly; ``exact_threshold_batch``: the same
    for a batch of >= 8 queries, whose scan runs as GEMM blocks (several times cheaper per query
    than the per-query scan, so it wins up to larger tenants). ``two_hop_below``: below this
    selectivity (tenant size / live vectors) every query takes the two-hop walk. ``local_ratio``:
    the "local" strategy decides per query: the plain bitmap walk when the tenant's share of the
    descent's end point, its level-0 neighbours and theirs is at least ``local_ratio`` times its
    share of the index (the tenant is where the query is), else the seeded two-hop walk. ``seeds``:
    tenant members sampled (and scored exactly) as extra entry points of a two-hop walk (0: none).
    ``num_threads``: threads for a batch of queries.
    """

    ef: int = 64
    strategy: str = "auto"
    exact_threshold: int = EXACT_THRESHOLD
    exact_threshold_batch: int = EXACT_THRESHOLD_BATCH
    two_hop_below: float = TWO_HOP_BELOW
    local_ratio: float = LOCAL_RATIO
    seeds: int = SEEDS
    num_threads: int = 1

    def __post_init__(self):
        for name in ("ef", "num_threads"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
        for name in ("exact_threshold", "exact_threshold_batch", "seeds"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
                raise InvalidArgument(f"{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.local_ratio, float | int) or not 0 <= self.local_ratio <= 64:
            raise InvalidArgument(f"local_ratio must be in [0, 64], got {self.local_ratio!r}")
        if not isinstance(self.two_hop_below, float | int) or not 0 <= self.two_hop_below <= 1:
            raise InvalidArgument(f"two_hop_below must be in [0, 1], got {self.two_hop_below!r}")
        if self.strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


_BUILD = {
    "M": 16,
    "ef_construction": 200,
    "max_elements": None,
    "seed": 100,
    "num_threads": 1,
    "extend_candidates": False,
    "keep_pruned": False,
}


def _run_threads(fn, n_threads: int) -> None:
    """Run ``fn()`` on ``n_threads`` Python threads (each releases the GIL in native code)."""
    if n_threads <= 1:
        fn()
        return
    errors: list[BaseException] = []

    def body():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)

    ts = [threading.Thread(target=body) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def _sample(members: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of the tenant's members, spread uniformly at random (deterministic for a given
    member count, so repeated searches give identical results): the seeds of a two-hop walk."""
    if len(members) <= n:
        return members
    rng = np.random.default_rng(len(members))
    return np.ascontiguousarray(members[np.sort(rng.choice(len(members), n, replace=False))])


class _TenantView:
    """A tenant's bitmap, its member list (unpacked on demand, kept only for tenants small
    enough to cache) and seed samples, valid for one cache key (count, bitmap size, CRC)."""

    def __init__(self, key: tuple, bitmap: np.ndarray, acl: AccessLists, tenant: int):
        self.key, self.bitmap, self.count = key, bitmap, key[0]
        self._acl, self._tenant = acl, tenant
        self._members: np.ndarray | None = None
        self._samples: dict[int, np.ndarray] = {}
        self.rows, self.keep = 0, False

    def members(self) -> np.ndarray:
        m = self._members
        if m is None:
            m = self._acl.members(self._tenant)
            if self.keep:
                self._members = m
        return m

    def seeds(self, n: int) -> np.ndarray:
        s = self._samples.get(n)
        if s is None:
            s = self._samples[n] = _sample(self.members(), n)
        return s


class HNSWIndex(Index):
    """Hierarchical navigable small-world graph over slots, tenant-aware.

    ``M`` links per node (2M on level 0), ``ef_construction`` beam width at insert, ``seed`` for
    the level draws, ``num_threads`` default threads for ``add``; ``max_elements`` only pre-sizes
    (capacity grows on demand). ``extend_candidates``/``keep_pruned`` are the paper's options of
    the neighbour-selection heuristic.
    """

    kind = "hnsw"
    params_class = HNSWSearchParams

    def __init__(self, dim: int, metric: str = "l2", **params: Any):
        super().__init__(dim, metric)
        p = check_build_params(type(self).__name__, params, _BUILD)
        for name in ("M", "ef_construction", "num_threads"):
            v = p[name]
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
        if not 2 <= p["M"] <= 64:
            raise InvalidArgument(f"M must be in [2, 64], got {p['M']}")
        if p["max_elements"] is not None and (
            not isinstance(p["max_elements"], int | np.integer) or p["max_elements"] < 0
        ):
            raise InvalidArgument(
                f"max_elements must be a non-negative integer, got {p['max_elements']!r}")
        if not isinstance(p["seed"], int | np.integer):
            raise InvalidArgument(f"seed must be an integer, got {p['seed']!r}")
        self.params = {k: (v if not isinstance(v, np.integer) else int(v)) for k, v in p.items()}
        self.M = int(p["M"])
        self.ef_construction = int(p["ef_construction"])
        self._code = metric_code(self.metric)
        self._core = _hnsw.HNSWCore(self.dim, self._code, self.M, self.ef_construction,
                                    bool(p["extend_candidates"]), bool(p["keep_pruned"]))
        cap = max(1024, int(p["max_elements"] or 0))
        self._core.reserve(cap)
        self._acl = AccessLists(cap)
        self._live = np.zeros(cap, dtype=bool)
        self._high = 0  # 1 + largest slot ever used
        self._count = 0
        self._free: list[int] = []  # deleted slots, reused by add(slots=None)
        self._draws = 0  # level draws so far (the level RNG stream is (seed, draws))
        self._mult = 1.0 / np.log(self.M)
        self._lock = threading.Lock()  # orders writers; searches never take it
        self._views: dict[int, _TenantView] = {}  # tenant -> cached view (see _tenant_view)
        self._view_rows = 0
        self._views_lock = threading.Lock()

    # -- writes ---------------------------------------------------------------------------
    def _grow(self, max_slot: int) -> None:
        cap = len(self._live)
        if max_slot < cap:
            return
        while cap <= max_slot:
            cap *= 2
        self._core.reserve(cap)
        live = np.zeros(cap, dtype=bool)
        live[: len(self._live)] = self._live
        self._live = live

    def _levels(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.params["seed"]), self._draws])
        self._draws += 1
        u = rng.random(n)
        return np.minimum(-np.log(1.0 - u) * self._mult, 30).astype(np.int32)

    def add(self, vectors, slots=None, acl=None, num_threads: int | None = None) -> np.ndarray:
        """Insert (or replace, for a live slot) vectors; returns their slots."""
        X = self._prepare(vectors)
        n = X.shape[0]
        if slots is not None:
            s = self._slots(slots, n)
        indptr, indices = normalize_acl(acl, n)
        nt = self.params["num_threads"] if num_threads is None else num_threads
        if not isinstance(nt, int | np.integer) or nt < 1:
            raise InvalidArgument(f"num_threads must be a positive integer, got {nt!r}")
        if n == 0:
            return np.zeros(0, dtype=np.int64) if slots is None else s
        with self._lock:
            if slots is None:
                reuse = [self._free.pop() for _ in range(min(n, len(self._free)))]
                fresh = np.arange(self._high, self._high + n - len(reuse), dtype=np.int64)
                s = np.concatenate([np.array(reuse, dtype=np.int64), fresh])
            if s.size and s.max() >= 2**31 - 1:
                raise InvalidArgument("slots must be < 2**31 - 1")
            self._grow(int(s.max()))
            live = s[self._live[s]]
            if len(live):  # replace = delete + insert
                self._core.remove(np.ascontiguousarray(live))
                self._acl.clear_many(live)
                self._count -= len(live)
            if self._free:
                taken = set(s.tolist())
                self._free = [f for f in self._free if f not in taken]
            levels = self._levels(n)
            counter = np.zeros(1, dtype=np.int64)
            _run_threads(lambda: self._core.add_batch(X, s, levels, counter), min(int(nt), n))
            self._live[s] = True
            self._count += n
            self._high = max(self._high, int(s.max()) + 1)
            self._acl.add_csr(s, indptr, indices)
        return s

    def remove(self, slots) -> None:
        s = self._slots(slots)
        with self._lock:
            s = s[s < self._high]
            s = s[self._live[s]]
            if not len(s):
                return
            self._live[s] = False
            self._count -= len(s)
            self._acl.clear_many(s)
            self._core.remove(np.ascontiguousarray(s))
            self._free.extend(s.tolist())

    def _check_live(self, slot: int) -> None:
        if not (0 <= slot < self._high and self._live[slot]):
            raise InvalidArgument(f"slot {slot} is not in the index")

    def grant(self, slot: int, tenant: int) -> None:
        self._check_live(int(slot))
        self._acl.grant(int(slot), int(tenant))

    def revoke(self, slot: int, tenant: int) -> None:
        self._check_live(int(slot))
        self._acl.revoke(int(slot), int(tenant))

    # -- reads ----------------------------------------------------------------------------
    def plan(self, tenant: int | None, params: HNSWSearchParams | None = None,
             nq: int = 1) -> str:
        """The strategy a search of ``nq`` queries for ``tenant`` will use: graph (no tenant),
        exact, two_hop or local (per query: bitmap walk or seeded two-hop walk)."""
        p = self._params(params)
        if tenant is None:
            return "graph"
        if p.strategy != "auto":
            return p.strategy
        c = self._acl.count(int(tenant))
        if c <= (p.exact_threshold_batch if nq >= _GEMM_MIN_QUERIES else p.exact_threshold):
            return "exact"
        if c < p.two_hop_below * max(1, self._count):
            return "two_hop"
        return "local"

    def search(self, queries, k: int, tenant: int | None = None, params=None):
        p = self._params(params)
        k = self._k(k)
        Q = self._prepare(queries, "queries")
        nq = Q.shape[0]
        if tenant is not None and (not isinstance(tenant, int | np.integer) or tenant < 0):
            raise InvalidArgument(f"tenant must be a non-negative integer, got {tenant!r}")
        out_i, out_d = pad_results(nq, k)
        if nq == 0 or self._count == 0:
            return out_i, out_d
        strategy = self.plan(tenant, p, nq)
        if tenant is None:
            return self._walk(Q, k, p, strategy, None, None, 1.0, out_i, out_d)
        for fresh in (False, True):
            view = self._tenant_view(int(tenant), fresh)
            if view.count == 0:
                return out_i, out_d
            if strategy == "exact":
                out_i, out_d = self._exact(Q, k, view.members())
            else:
                seeds = view.seeds(p.seeds) if strategy != "graph" and p.seeds else None
                self._walk(Q, k, p, strategy, view.bitmap, seeds,
                           view.count / max(1, self._count), out_i, out_d)
                # a walk that found fewer than min(k, |tenant|) results (the tenant's nodes were
                # not reachable from where it went): those queries are answered exactly
                short = (out_i >= 0).sum(1) < min(k, view.count)
                if short.any():
                    out_i[short], out_d[short] = self._exact(Q[short], k, view.members())
                    self.last_stats["exact_fallbacks"] = int(short.sum())
            # The member list may come from the cache: check every result against the tenant's
            # bitmap (k bit tests per query); an access list changed behind the cache's key
            # (bench code writing to .acl directly) costs one fresh recomputation, never a leak.
            got = out_i[out_i >= 0]
            bitmap = view.bitmap
            if not len(got) or ((bitmap[got >> 3] >> (got & 7)) & 1).all():
                return out_i, out_d
        raise AssertionError("hnsw: a result outside the tenant after a fresh member list")

    def _walk(self, Q, k, p, strategy, bitmap, seeds, share, out_i, out_d):
        """The graph walk (C, GIL released) for a batch, on ``p.num_threads`` threads."""
        # the "local" test: the tenant's share of the nodes around the query's descent end point
        # must reach local_ratio x its share of the index (local_ratio 0: always the bitmap walk)
        local_min = p.local_ratio * share
        mode = {"graph": _hnsw.GRAPH, "two_hop": _hnsw.TWO_HOP, "local": _hnsw.LOCAL}[strategy]
        counter = np.zeros(1, dtype=np.int64)
        stats = np.zeros(3, dtype=np.int64)
        _run_threads(
            lambda: self._core.search_batch(Q, k, int(p.ef), bitmap, mode, None, out_i, out_d,
                                            counter, stats, seeds, local_min),
            min(p.num_threads, Q.shape[0]),
        )
        self.last_stats = {"distances": int(stats[0]), "exact_fallbacks": int(stats[1]),
                           "seeded_walks": int(stats[2]), "strategy": strategy}
        return out_i, out_d

    def _tenant_view(self, tenant: int, fresh: bool = False) -> _TenantView:
        """The tenant's bitmap with its member list and seed samples, cached. Unpacking a bitmap
        into the member list costs ~1-2 ms on 400k slots, far more than a small tenant's search
        or a walk, so views are cached, keyed by the tenant's count and a CRC of its bitmap
        (~10 us); ``search`` checks every result against the bitmap anyway. Member lists of
        large tenants are not kept (walks need only the seed sample)."""
        bitmap = self._acl.bitmap(tenant)
        key = (self._acl.count(tenant), len(bitmap), zlib.crc32(bitmap))
        view = None if fresh else self._views.get(tenant)
        if view is not None and view.key == key:
            view.bitmap = bitmap
            return view
        view = _TenantView(key, bitmap, self._acl, tenant)
        budget = max(1 << 20, 2 * self._count)  # cached member slots, all tenants together
        keep = view.count <= budget // 8
        with self._views_lock:
            old = self._views.pop(tenant, None)
            self._view_rows -= old.rows if old else 0
            self._views[tenant] = view
            view.rows = view.count if keep else 0
            view.keep = keep
            self._view_rows += view.rows
            while self._view_rows > budget and len(self._views) > 1:
                old = self._views.pop(next(iter(self._views)))  # oldest first
                self._view_rows -= old.rows
        return view

    def _exact(self, Q: np.ndarray, k: int, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-NN over the tenant's members. A few queries (or few members): the per-query
        SIMD scan in C. A batch: members gathered in cache-sized blocks, one BLAS GEMM per block
        for the inner products, and a C pass that merges each block into per-query bounded heaps
        (a compare per score: no full top-k per block, no Python merge). GloVe-50, 200 queries,
        39k members: 2.0k QPS for the earlier GEMM + top-k + merge path, see the README for the
        fused one."""
        nq = Q.shape[0]
        if nq < _GEMM_MIN_QUERIES or k > 1024:
            return self._core.exact(Q, k, members)
        hd = np.full((nq, k), np.inf, dtype=np.float32)
        hi = np.full((nq, k), -1, dtype=np.int64)
        l2 = self._code == 0
        empty = np.zeros(0, dtype=np.float32)
        S = np.empty((nq, _EXACT_BLOCK), dtype=np.float32)
        for s in range(0, len(members), _EXACT_BLOCK):
            rows = np.ascontiguousarray(members[s : s + _EXACT_BLOCK])
            G = self._core.gather(rows)
            if len(rows) == _EXACT_BLOCK:
                blk = np.dot(Q, G.T, out=S)  # reused buffer: no allocation per block
            else:
                blk = np.ascontiguousarray(Q @ G.T)
            xn = np.einsum("ij,ij->i", G, G) if l2 else empty
            self._core.topk_block(blk, rows, xn, hd, hi)
        qn = np.einsum("ij,ij->i", Q, Q) if l2 else empty
        self._core.topk_finish(qn, hd, hi)
        return hi, hd

    def vectors(self, slots) -> np.ndarray:
        """Stored (normalised, for cosine) vectors of live slots."""
        s = self._slots(slots)
        for x in s.tolist():
            self._check_live(x)
        return self._core.vectors(np.ascontiguousarray(s))

    @property
    def acl(self) -> AccessLists:
        return self._acl

    def memory_bytes(self) -> int:
        return int(self._core.memory_bytes()) + self._live.nbytes + self._acl.memory_bytes()

    def __len__(self) -> int:
        return self._count

    # -- persistence ----------------------------------------------------------------------
    # ``save``/``load`` stream the graph through the .npz chunk by chunk (_IO_BYTES of vectors
    # and links at a time): no second whole copy of it, in the same file as ``Index.save``.
    streams_load = True

    def _meta(self) -> dict[str, Any]:
        """The metadata of ``_state`` (caller holds the writer lock)."""
        return {
            "params": self.params,
            "high": self._high,
            "draws": self._draws,
            "entry": int(self._core.entry),
            "maxlevel": int(self._core.maxlevel),
            "free": list(self._free),
        }

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with self._lock:
            levels, states, vecs, l0, upper = self._core.export(self._high)
            arrays = {"levels": levels, "states": states, "vectors": vecs, "links0": l0,
                      "links_up": upper, **self._acl.to_arrays()}
            return self._meta(), arrays

    def _chunk_slots(self) -> int:
        """Slots per streamed chunk: _IO_BYTES of vectors, level-0 and (typical) upper links."""
        return max(1, _IO_BYTES // (4 * (self.dim + 2 * self.M + 1) + 4 * (self.M + 1)))

    def save(self, path: str | os.PathLike, chunk: int | None = None) -> None:
        """Write the index atomically (temp file + fsync + rename) in ``Index.save``'s format,
        an uncompressed .npz with the members of ``_state``; vectors and links are exported and
        written ``chunk`` slots at a time (default: ~_IO_BYTES per chunk), never whole."""
        with self._lock:
            high, core = self._high, self._core
            c = int(chunk) if chunk else self._chunk_slots()
            if c < 1:
                raise InvalidArgument(f"chunk must be a positive integer, got {chunk!r}")
            meta = {"kind": self.kind, "dim": self.dim, "metric": self.metric, **self._meta()}
            levels = core.export(high, 0, "levels")
            states = core.export(high, 0, "states")
            nup = _up_words(levels, states, self.M)
            acl = self._acl.to_arrays()
            tmp = f"{os.fspath(path)}.tmp"
            with open(tmp, "wb") as f:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                    _put(z, "__meta__", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
                    _put(z, "levels", levels)
                    _put(z, "states", states)
                    for name, shape in (("vectors", (high, self.dim)),
                                        ("links0", (high, 2 * self.M + 1)), ("links_up", (nup,))):
                        dtype = np.float32 if name == "vectors" else np.int32
                        with z.open(f"{name}.npy", "w", force_zip64=True) as fid:
                            np.lib.format.write_array_header_1_0(fid, _header(shape, dtype))
                            for lo in range(0, high, c):
                                part = core.export(min(high, lo + c), lo, name)
                                fid.write(memoryview(part).cast("B"))
                    for name, arr in acl.items():
                        _put(z, name, arr)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, chunk: int | None = None) -> HNSWIndex:
        """Read an index written by ``save`` (or ``Index.save``): levels, states and the access
        lists whole, vectors and links ``chunk`` slots at a time from the members' streams into
        the graph. A file this reader does not expect (not a zip, members of another dtype or
        layout) goes through ``Index.load``'s whole-array path."""
        try:
            z = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            return Index.load.__func__(cls, path)
        with z:
            names = set(z.namelist())
            if not {f"{n}.npy" for n in ("__meta__", "levels", "states", *_BIG)} <= names:
                return Index.load.__func__(cls, path)
            with z.open("__meta__.npy") as f:
                meta = json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes())
            if meta.get("kind") != cls.kind:
                raise InvalidArgument(f"{path}: holds a {meta.get('kind')!r} index, "
                                      f"not {cls.kind!r}")
            small = {}
            for name in sorted(names):
                key = name[:-4]
                if not name.endswith(".npy") or key == "__meta__" or key in _BIG:
                    continue
                with z.open(name) as f:
                    small[key] = np.lib.format.read_array(f, allow_pickle=False)
            high, dim, M = int(meta["high"]), int(meta["dim"]), int(meta["params"]["M"])
            levels = np.ascontiguousarray(small.pop("levels"), dtype=np.int32)
            states = np.ascontiguousarray(small.pop("states"), dtype=np.uint8)
            if len(levels) != high or len(states) != high:
                return Index.load.__func__(cls, path)
            want = {"vectors": ((high, dim), np.float32), "links0": ((high, 2 * M + 1), np.int32),
                    "links_up": ((_up_words(levels, states, M),), np.int32)}
            streams = {}
            try:
                for name, (shape, dtype) in want.items():
                    f = streams[name] = z.open(f"{name}.npy")
                    if not _header_matches(f, shape, dtype):
                        break
                else:
                    return cls._load_streams(meta, small, levels, states, streams,
                                             int(chunk) if chunk else None)
            finally:
                for f in streams.values():
                    f.close()
        return Index.load.__func__(cls, path)

    @classmethod
    def _load_streams(cls, meta: dict[str, Any], small: dict[str, np.ndarray],
                      levels: np.ndarray, states: np.ndarray, streams: dict[str, Any],
                      chunk: int | None) -> HNSWIndex:
        """Build the index from the member streams (positioned at their data), ``chunk`` slots
        at a time."""
        idx = cls(meta["dim"], meta["metric"], **meta["params"])
        high = int(meta["high"])
        if high:
            idx._grow(high - 1)
        c = chunk or idx._chunk_slots()
        if c < 1:
            raise InvalidArgument(f"chunk must be a positive integer, got {chunk!r}")
        vb = np.empty((min(c, high), idx.dim), dtype=np.float32)
        lb = np.empty((min(c, high), 2 * idx.M + 1), dtype=np.int32)
        for lo in range(0, high, c):
            hi = min(high, lo + c)
            v, l0 = vb[: hi - lo], lb[: hi - lo]
            _read_exact(streams["vectors"], v)
            _read_exact(streams["links0"], l0)
            nu = _up_words(levels[lo:hi], states[lo:hi], idx.M)
            u = _read_exact(streams["links_up"], np.empty(nu, dtype=np.int32))
            idx._core.restore(levels[lo:hi], states[lo:hi], v, l0, u, int(meta["entry"]),
                              int(meta["maxlevel"]), lo)
        return idx._finish_load(meta, states, small)

    def _finish_load(self, meta: dict[str, Any], states: np.ndarray,
                     arrays: dict[str, np.ndarray]) -> HNSWIndex:
        """Slot bookkeeping and access lists of a loaded index (the graph is restored)."""
        high = int(meta["high"])
        self._live[:high] = states == 1
        self._count = int((states == 1).sum())
        self._high = high
        self._draws = int(meta["draws"])
        self._free = [int(x) for x in meta["free"]]
        self._acl = AccessLists.from_arrays(arrays, len(self._live))
        return self

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> HNSWIndex:
        idx = cls(meta["dim"], meta["metric"], **meta["params"])
        high = int(meta["high"])
        if high:
            idx._grow(high - 1)
        states = np.ascontiguousarray(arrays["states"], dtype=np.uint8)
        idx._core.restore(np.ascontiguousarray(arrays["levels"], dtype=np.int32), states,
                          np.ascontiguousarray(arrays["vectors"], dtype=np.float32),
                          np.ascontiguousarray(arrays["links0"], dtype=np.int32),
                          np.ascontiguousarray(arrays["links_up"], dtype=np.int32),
                          int(meta["entry"]), int(meta["maxlevel"]))
        return idx._finish_load(meta, states, arrays)


_IO_BYTES = 4 << 20  # vectors + links per streamed chunk of save/load (~6.5k slots at dim 128)
_BIG = ("vectors", "links0", "links_up")  # the members save/load stream


def _header(shape: tuple[int, ...], dtype) -> dict[str, Any]:
    """The .npy header dict ``np.save`` writes for a C-order array (Python ints in the shape)."""
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": tuple(int(x) for x in shape)}


def _up_words(levels: np.ndarray, states: np.ndarray, M: int) -> int:
    """int32 words of upper links ``export`` writes for these slots (used nodes of level > 0)."""
    return int(levels[(states != 0) & (levels > 0)].sum(dtype=np.int64)) * (M + 1)


def _put(z: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """One whole array as member ``name.npy``, exactly as ``np.savez`` writes it."""
    with z.open(f"{name}.npy", "w", force_zip64=True) as fid:
        write_npy_into(fid, arr)  # from the array's own memory (no 16 MiB bytes copy per block)


def _header_matches(f, shape: tuple[int, ...], dtype) -> bool:
    """Read a member's .npy header; True if it is a C-order ``dtype`` array of ``shape`` (the
    stream is then at its data)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got = np.lib.format.read_array_header_2_0(f)
        else:
            return False
    except ValueError:
        return False
    shp, fortran, dt = got
    return not fortran and dt == np.dtype(dtype) and tuple(shp) == tuple(shape)


def _read_exact(f, out: np.ndarray) -> np.ndarray:
    """Fill the C-contiguous ``out`` from stream ``f``; a short member is an error."""
    mv = memoryview(out).cast("B")
    got = 0
    while got < len(mv):
        k = f.readinto(mv[got:])
        if not k:
            raise InvalidArgument("hnsw: an index file member is shorter than its header says")
        got += k
    return out
