"""SPANN: a memory/disk hybrid index (heads in RAM, posting lists in the KV store), with
SPFresh-style online updates (LIRE: split, reassign, merge, tombstones).

After "SPANN" (Chen et al., NeurIPS 2021) and "SPFresh" (Xu et al., SOSP 2023)::

    RAM:   heads (one real vector per posting list) --HeadIndex (flat | HNSW)-->  nearest heads
           version map (uint8 per slot) + live flags + tenant bitmaps (AccessLists)
    store: postings CF   b"P"+list id -> packed records (slot, version, vector), one value per list
                         b"H"+list id -> head vector        (heads are durable with their lists)
                         b"V"+chunk   -> 4096 slot versions (durable with the records they validate)

Build: hierarchical balanced k-means (assignment minimises ``dist + lambda * size``) down to leaves
of ~1/head_ratio points; the member nearest each leaf centroid becomes a head; every vector is
posted to up to ``replica_count`` of its candidate heads chosen by the RNG rule within ``(1+eps1)``
of the nearest; lists are capped at ``build_fill * posting_limit`` (a vector's nearest list always
keeps it), so the update stream that follows has room to append before lists split.

Search: nearest ``max_lists`` heads, query-aware pruning ``d <= (1+eps) * d_nearest``, one
``multi_get`` of the kept lists (or ``io_threads`` concurrent ones), then one native pass over the
fetched buffers (``vecdb._spann.scan``, no GIL): validity (live, current version, tenant bit)
checked before any distance, SIMD distances, a bounded top-k that dedupes replicas by slot.

Updates: ``add`` bumps each slot's version and appends records to the RNG-chosen lists (one atomic
WriteBatch with the version chunks). Lists over the limit are split by balanced 2-means into two
new heads; members of the split list and of nearby lists whose nearest head changed are
re-inserted (version bump, so their old replicas become stale). Lists with few live records merge
(their vectors re-insert elsewhere). ``remove`` is a tombstone (live flag); stale/deleted records
are dropped whenever a list is rewritten. Splits/merges run in a background thread (``flush()``
waits for it); every structural change is one atomic WriteBatch, and new heads enter the head
index before their old list disappears, so a concurrent search never misses a live vector.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vecdb import _native, _spann
from vecdb.errors import InvalidArgument
from vecdb.index._spann_parts import (
    SQ8,
    HeadIndex,
    balanced_kmeans,
    hierarchical_balanced_clusters,
    nearest_member,
    pack_records,
    record_dtype,
    within,
)
from vecdb.index.acl import AccessLists, normalize_acl
from vecdb.index.base import Index, SearchParams, pad_results
from vecdb.kernels import metric_code
from vecdb.storage.kv import KVStore, MemoryKVStore, WriteBatch
from vecdb.storage.npz import npz_member_to_file, write_npz

CF = "postings"
_VCHUNK = 4096  # slots per durable version chunk
_HALF_MAX = 65504.0  # largest finite float16
_UPDATE_IO = 4  # list reads in flight when an insert appends to lists (read-modify-write)


def _key(tag: bytes, i: int) -> bytes:
    return tag + int(i).to_bytes(8, "big")


def _pkeys(ids: np.ndarray) -> list[bytes]:
    """``[_key(b"P", i) for i in ids]`` without a Python int per id (search builds ~50 a query)."""
    n = len(ids)
    a = np.empty((n, 9), dtype=np.uint8)
    a[:, 0] = ord("P")
    a[:, 1:] = np.asarray(ids, dtype=">i8").view(np.uint8).reshape(n, 8)
    raw = a.tobytes()
    return [raw[j:j + 9] for j in range(0, 9 * n, 9)]


@dataclasses.dataclass(frozen=True)
class SPANNSearchParams(SearchParams):
    """Per-call knobs: ``max_lists`` heads probed at most; ``eps``: keep a list only if its head
    is within ``(1+eps)`` of the nearest head's distance (squared L2 / negated ip);
    ``io_threads``: posting reads in flight at once (1: one MultiGet in the calling thread; more:
    the lists are split over that many concurrent MultiGets; the scan stays in one thread)."""

    max_lists: int = 32
    eps: float = 1.0
    io_threads: int = 1

    def __post_init__(self):
        if not isinstance(self.max_lists, int) or isinstance(self.max_lists, bool) \
                or not 1 <= self.max_lists <= 4096:
            raise ValueError(f"max_lists must be an int in [1, 4096], got {self.max_lists!r}")
        if not isinstance(self.eps, int | float) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if not isinstance(self.io_threads, int) or isinstance(self.io_threads, bool) \
                or not 1 <= self.io_threads <= 64:
            raise ValueError(f"io_threads must be an int in [1, 64], got {self.io_threads!r}")


class SPANNIndex(Index):
    """Disk-resident ANN index: heads in RAM, posting lists in a ``KVStore`` (see module doc).

    Creation knobs: ``head_ratio`` (fraction of points that become heads at build),
    ``replica_count`` (max lists per vector), ``posting_limit`` (records per list before a split;
    default ``max(32, 6/head_ratio)``), ``eps1`` (replica closeness), ``candidates`` (heads
    considered per vector), ``balance`` (size penalty lambda), ``head_index`` ("flat", "hnsw" or
    "auto": hnsw above 4096 heads), ``head_M``/``head_ef``, ``merge_min`` (live records below
    which a list merges), ``reassign_lists`` (nearby lists checked after a split),
    ``background`` (split/merge in a thread), ``bulk_min`` (the first add of at least this many
    vectors into an empty index runs the full build), ``threads`` (build-time head index threads),
    ``posting_dtype`` ("float32", or "float16": posting vectors stored as half floats, half the
    bytes read per query; returned distances are then those of the rounded vectors, and vector
    values must fit float16), ``reassign`` ("all" or "nearest": which members of a split list
    are re-inserted, see ``_reassign``), ``build_fill`` (a bulk build caps lists at this
    fraction of ``posting_limit``: at 1.0 a GloVe-50 build left 31% of its lists exactly at the
    limit, and the first appends then set off a wave of ~220 splits).
    """

    kind = "spann"
    params_class = SPANNSearchParams
    needs_store = True

    def __init__(self, dim: int, metric: str = "l2", store: KVStore | None = None, *,
                 head_ratio: float = 0.12, replica_count: int = 8,
                 posting_limit: int | None = None, eps1: float = 1.0, candidates: int = 32,
                 balance: float = 1.0, head_index: str = "auto", head_M: int = 16,
                 head_ef: int = 128, merge_min: int | None = None, reassign_lists: int = 8,
                 background: bool = True, bulk_min: int = 1000, threads: int = 1, seed: int = 0,
                 posting_dtype: str = "float32", reassign: str = "all", build_fill: float = 0.8,
                 _fresh: bool = True):
        super().__init__(dim, metric)
        if not 0 < float(head_ratio) <= 1:
            raise InvalidArgument(f"head_ratio must be in (0, 1], got {head_ratio!r}")
        for name, v, lo in (("replica_count", replica_count, 1), ("candidates", candidates, 1),
                            ("head_M", head_M, 2), ("head_ef", head_ef, 1),
                            ("reassign_lists", reassign_lists, 0), ("bulk_min", bulk_min, 1),
                            ("threads", threads, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InvalidArgument(f"{name} must be an int >= {lo}, got {v!r}")
        if posting_limit is not None and (not isinstance(posting_limit, int) or posting_limit < 4):
            raise InvalidArgument(f"posting_limit must be an int >= 4, got {posting_limit!r}")
        if not math.isfinite(eps1) or eps1 < 0 or not math.isfinite(balance) or balance < 0:
            raise InvalidArgument("eps1 and balance must be finite and >= 0")
        if posting_dtype not in ("float32", "float16", "sq8"):
            raise InvalidArgument(
                f"posting_dtype must be float32, float16 or sq8, got {posting_dtype!r}")
        if reassign not in ("all", "nearest"):
            raise InvalidArgument(f"reassign must be all or nearest, got {reassign!r}")
        if isinstance(build_fill, bool) or not isinstance(build_fill, int | float) \
                or not 0 < build_fill <= 1:
            raise InvalidArgument(f"build_fill must be in (0, 1], got {build_fill!r}")
        if head_index not in ("auto", "flat", "hnsw"):
            raise InvalidArgument(f"head_index must be auto, flat or hnsw, got {head_index!r}")
        if store is None:
            store = MemoryKVStore()
        self.store = store
        self.head_ratio = float(head_ratio)
        self.replica_count = replica_count
        self.posting_limit = posting_limit or max(32, int(round(6 / self.head_ratio)))
        self.eps1 = float(eps1)
        self.candidates = max(candidates, replica_count)
        self.balance = float(balance)
        self.head_index_kind = head_index
        self.head_M, self.head_ef = head_M, head_ef
        self.merge_min = merge_min if merge_min is not None else max(2, self.posting_limit // 10)
        self.reassign_lists = reassign_lists
        self.background = bool(background)
        self.bulk_min = bulk_min
        self.threads = threads
        self.seed = seed
        self._code = metric_code(metric)
        self.posting_dtype = posting_dtype
        self.reassign = reassign
        self.build_fill = float(build_fill)
        self._half = posting_dtype == "float16"
        self._fmt = {"float32": 0, "float16": 1, "sq8": 2}[posting_dtype]  # native scan format
        self._rec = record_dtype(self.dim, ("<f4", "<f2", "u1")[self._fmt])
        self._sq: SQ8 | None = None  # sq8: trained by the first add, stored under b"Q"
        self._heads = self._new_heads(head_index if head_index != "auto" else "flat")
        self._next_list = 0
        self._sizes: dict[int, int] = {}  # list id -> records stored (live or not)
        self._ver = np.zeros(1024, dtype=np.uint8)
        self._live = np.zeros(1024, dtype=bool)
        self._count = 0
        self._acl = AccessLists(1024)
        self._wlock = threading.RLock()  # writers: add/remove/grant/revoke and maintenance
        self._todo: set[int] = set()  # lists to check (split / GC / merge)
        self._q: queue.Queue = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None  # posting reads for io_threads > 1
        self._pinned: dict[int, bytes] = {}  # list id -> its value, held in RAM (pin_lists)
        self._pool_lock = threading.Lock()
        self._retired: list[ThreadPoolExecutor] = []  # outgrown pools (see _fetch)
        self.stats = {"splits": 0, "merges": 0, "reassigned": 0, "gc_records": 0}
        if _fresh:  # a new index owns the postings family: drop anything a previous one left
            b = WriteBatch()
            b.delete_range(CF, b"", b"\xff" * 9)
            self.store.write(b)

    def _new_heads(self, kind: str) -> HeadIndex:
        return HeadIndex(self.dim, self._code, kind, M=self.head_M, ef=self.head_ef,
                         threads=self.threads, seed=self.seed)

    # -- slot arrays ----------------------------------------------------------------------
    def _grow(self, max_slot: int) -> None:
        cap = len(self._live)
        if max_slot < cap:
            return
        while cap <= max_slot:
            cap *= 2
        ver = np.zeros(cap, dtype=np.uint8)
        ver[: len(self._ver)] = self._ver
        live = np.zeros(cap, dtype=bool)
        live[: len(self._live)] = self._live
        self._ver, self._live = ver, live

    def _bump(self, slots: np.ndarray, batch: WriteBatch) -> np.ndarray:
        """New version (1..255, wrapping) for ``slots``; the touched chunks go into ``batch``."""
        v = self._ver[slots].astype(np.int32) % 255 + 1
        self._ver[slots] = v.astype(np.uint8)
        for c in np.unique(slots // _VCHUNK).tolist():
            a = c * _VCHUNK
            chunk = np.zeros(_VCHUNK, dtype=np.uint8)
            part = self._ver[a: a + _VCHUNK]
            chunk[: len(part)] = part
            batch.put(CF, _key(b"V", c), chunk.tobytes())
        return self._ver[slots]

    # -- record vectors -------------------------------------------------------------------
    def _train_sq(self, X: np.ndarray, batch: WriteBatch) -> None:
        """sq8: train the quantizer on the first vectors added (durable in the same batch)."""
        if self._fmt == 2 and self._sq is None:
            self._sq = SQ8.train(X)
            batch.put(CF, b"Q", self._sq.to_bytes())

    def _enc(self, X: np.ndarray) -> np.ndarray:
        """Vectors as stored in records (float32/float16 by the record dtype, SQ8 codes)."""
        return self._sq.encode(X) if self._fmt == 2 else X

    def _vecs(self, rec: np.ndarray) -> np.ndarray:
        """float32 vectors of records (decoded SQ8 codes / widened float16)."""
        if self._fmt == 2:
            return self._sq.decode(rec["vec"])
        return np.ascontiguousarray(rec["vec"], dtype=np.float32)

    # -- build ----------------------------------------------------------------------------
    def _build_cap(self) -> int:
        """Records a bulk-built list keeps (besides its nearest-list records): ``build_fill`` of
        ``posting_limit``, leaving room for appends before the first split."""
        return max(1, int(self.build_fill * self.posting_limit))

    def _build(self, X: np.ndarray, slots: np.ndarray) -> None:
        """Bulk build into an empty index (heads, replicas, capped lists, one pass of writes)."""
        n = X.shape[0]
        leaf = max(2, int(round(1 / self.head_ratio)))
        clusters = hierarchical_balanced_clusters(X, leaf, self.balance, self.seed)
        head_rows = np.array([nearest_member(X, c) for c in clusters], dtype=np.int64)
        H = len(head_rows)
        if self.head_index_kind == "auto" and H > 4096:
            self._heads = self._new_heads("hnsw")
        ids = np.arange(H, dtype=np.int64)
        self._next_list = H
        batch = WriteBatch()
        self._train_sq(X, batch)
        vers = self._bump(slots, batch)
        self._heads.add(ids, X[head_rows])
        C = min(self.candidates, H)
        cand, cdist = self._heads.search(X, C)
        keep = self._heads.select_replicas(cand, cdist, self.replica_count, self.eps1)
        pts, cols = np.nonzero(keep)
        lists = cand[pts, cols]
        rank = cols  # 0 = the vector's nearest head: never dropped by the cap
        d = cdist[pts, cols]
        order = np.lexsort((d, rank > 0, lists))
        pts, lists, rank = pts[order], lists[order], rank[order]
        bounds = np.searchsorted(lists, np.arange(H + 1))
        cap = self._build_cap()
        for h in range(H):
            a, b = int(bounds[h]), int(bounds[h + 1])
            sel = pts[a:b]
            if len(sel) > cap:
                primary = int((rank[a:b] == 0).sum())
                sel = sel[: max(primary, cap)]
            batch.put(CF, _key(b"H", h), X[head_rows[h]].tobytes())
            batch.put(CF, _key(b"P", h), pack_records(self._rec, slots[sel], vers[sel],
                                                      self._enc(X[sel])))
            self._sizes[h] = len(sel)
            if len(batch) >= 8192:
                self.store.write(batch)
                batch = WriteBatch()
        self.store.write(batch)
        del n

    def build_stream(self, chunks: Iterable[np.ndarray], n_total: int, sample: np.ndarray,
                     tmp: str | os.PathLike, search_ef: int | None = None,
                     max_rows: int = 1 << 20, split_hubs: bool = True) -> dict[str, float]:
        """Bulk build from ``chunks`` (an iterable of [m, dim] arrays, ``n_total`` rows in all,
        slots 0..n_total-1 in order) without holding them at once: for data sets larger than
        the Python heap should hold (the issue's 5M x 128).

        1. heads from ``sample`` (a uniform sample of the rows, ~10 rows per head or more):
           SPANN's balanced hierarchical k-means down to leaves of ``1/head_ratio`` points
           scaled by the sampling rate; each head is its leaf's mean (on a sample a member head
           is a noisy point and becomes a hub on clustered data, measured by the bulk builder);
           SQ8 is trained on the sample (rows outside its range are clipped).
        2. per chunk: candidate heads (head HNSW, beam ``search_ef``, default ``head_ef``), the
           RNG replica rule, records packed in the posting format and saved to a run file in
           ``tmp`` sorted by list id (no vectors kept in memory between chunks).
        3. per range of list ids holding <= ``max_rows`` records: the runs' slices of the range
           are merged, capped at ``build_fill * posting_limit`` exactly as ``add``'s build (a
           vector's nearest list always keeps it) and written (one batch per range).
           ``split_hubs``: a list still holding more than twice the leaf size
           (``1/head_ratio``) after the cap (a hub: its head is the nearest of many vectors,
           typical of mean heads on clustered data) is split by balanced k-means into parts
           of about the leaf size, each part a new list whose head is the part's mean.
        Returns seconds per stage and the counts of lists and split hubs. Needs an empty index;
        no ACLs (one tenant).
        """
        import tempfile

        with self._wlock:
            if len(self._heads) or self._count:
                raise InvalidArgument("build_stream needs an empty index")
            if n_total < 1:
                raise InvalidArgument(f"n_total must be >= 1, got {n_total!r}")
            t0 = time.perf_counter()
            S = self._prepare(sample, "sample")
            leaf_full = max(2, int(round(1 / self.head_ratio)))
            leaf = max(2, int(round(leaf_full * len(S) / n_total)))
            clusters = hierarchical_balanced_clusters(S, leaf, self.balance, self.seed)
            heads = np.stack([S[c].mean(axis=0, dtype=np.float64) for c in clusters])
            heads = np.ascontiguousarray(heads, dtype=np.float32)
            if self.metric == "cosine":
                heads /= np.maximum(np.linalg.norm(heads, axis=1, keepdims=True), 1e-30)
            H = len(heads)
            if self.head_index_kind == "auto" and H > 4096:
                self._heads = self._new_heads("hnsw")
            self._heads.add(np.arange(H, dtype=np.int64), heads)
            self._next_list = H
            batch = WriteBatch()
            self._train_sq(S, batch)
            for h in range(H):
                batch.put(CF, _key(b"H", h), heads[h].tobytes())
            self.store.write(batch)
            del S
            t1 = time.perf_counter()
            ef0 = self._heads.ef
            if search_ef is not None:
                self._heads.ef = int(search_ef)
            C = min(self.candidates, H)
            counts = np.zeros(H, dtype=np.int64)
            runs: list[str] = []
            tdir = tempfile.mkdtemp(prefix="spann-runs-", dir=tmp)
            start = 0
            try:
                for X in chunks:
                    X = self._prepare(X)
                    m = len(X)
                    if start + m > n_total:
                        raise InvalidArgument(f"the chunks hold more than n_total={n_total} rows")
                    s = np.arange(start, start + m, dtype=np.int64)
                    self._grow(start + m - 1)
                    self._live[s] = True
                    self._count += m
                    self._acl.add_csr(s, *normalize_acl(None, m))
                    batch = WriteBatch()
                    vers = self._bump(s, batch)
                    self.store.write(batch)
                    cand, cdist = self._heads.search(X, C)
                    keep = self._heads.select_replicas(cand, cdist, self.replica_count, self.eps1)
                    pts, cols = np.nonzero(keep)
                    lists = cand[pts, cols]
                    order = np.lexsort((cdist[pts, cols], cols > 0, lists))
                    pts, lists, cols = pts[order], lists[order], cols[order]
                    rec = np.zeros(len(pts), dtype=self._rec)
                    rec["slot"] = s[pts]
                    rec["ver"] = vers[pts]
                    rec["vec"] = self._enc(X[pts])
                    path = os.path.join(tdir, f"run{len(runs):05d}")
                    for name, arr in (("lid", lists.astype(np.int32)), ("sec", cols > 0),
                                      ("d", cdist[pts, cols]),
                                      ("rec", rec.view(np.uint8).reshape(len(rec), -1))):
                        np.save(f"{path}.{name}.npy", arr)
                    runs.append(path)
                    counts += np.bincount(lists, minlength=H)
                    start += m
                t2 = time.perf_counter()
                self._heads.ef = ef0
                # reduce: list-id ranges of <= max_rows records each
                bounds, acc, lo = [], 0, 0
                for h in range(H):
                    if acc and acc + counts[h] > max_rows:
                        bounds.append((lo, h))
                        lo, acc = h, 0
                    acc += int(counts[h])
                bounds.append((lo, H))
                opened = [{name: np.load(f"{r}.{name}.npy", mmap_mode="r")
                           for name in ("lid", "sec", "d", "rec")} for r in runs]
                empty = np.zeros((0, self._rec.itemsize), dtype=np.uint8)  # records as bytes
                hubs, cap = 0, self._build_cap()
                for lo, hi in bounds:
                    got = []
                    for z in opened:
                        a, b = np.searchsorted(z["lid"], [lo, hi])
                        if b > a:
                            got.append([np.asarray(z[name][a:b])
                                        for name in ("lid", "sec", "d", "rec")])
                    if got:
                        lid, sec, d, rec = (np.concatenate(c) for c in zip(*got, strict=True))
                        # as add's build: per list, nearest-list records first, then by distance
                        order = np.lexsort((d, sec, lid))
                        lid, sec, rec = lid[order], sec[order], rec[order]
                    else:
                        lid, sec, rec = np.zeros(0, np.int32), np.zeros(0, bool), empty
                    cut = np.searchsorted(lid, np.arange(lo, hi + 1))
                    batch = WriteBatch()
                    for h in range(lo, hi):
                        a, b = int(cut[h - lo]), int(cut[h - lo + 1])
                        if b - a > cap:
                            b = a + max(int((~sec[a:b]).sum()), cap)
                        if split_hubs and b - a > 2 * leaf_full:
                            self._split_hub(h, rec[a:b], leaf_full, batch)
                            hubs += 1
                            continue
                        batch.put(CF, _key(b"P", h), rec[a:b].tobytes())
                        self._sizes[h] = b - a
                    self.store.write(batch)
                del opened
            finally:
                self._heads.ef = ef0
                shutil.rmtree(tdir, ignore_errors=True)
            if start != n_total:
                raise InvalidArgument(f"the chunks held {start} rows, not n_total={n_total}")
            t3 = time.perf_counter()
            return {"heads_s": t1 - t0, "assign_s": t2 - t1, "write_s": t3 - t2,
                    "lists": float(len(self._sizes)), "hubs_split": float(hubs)}

    def _split_hub(self, lid: int, raw: np.ndarray, leaf: int, batch: WriteBatch) -> None:
        """build_stream: replace list ``lid`` (its records as a uint8 [n, record] array) by
        ``ceil(n / leaf)`` balanced k-means parts, each a new list headed by its mean."""
        r = np.ascontiguousarray(raw).view(self._rec).reshape(-1)
        V = self._vecs(r)
        k = max(2, -(-len(r) // leaf))
        lab = balanced_kmeans(V, k, self.balance, np.random.default_rng(self.seed + lid))
        ids, heads = [], []
        for c in range(k):
            part = np.flatnonzero(lab == c)
            if not len(part):
                continue
            hv = V[part].mean(axis=0, dtype=np.float64).astype(np.float32)
            if self.metric == "cosine":
                hv /= max(float(np.linalg.norm(hv)), 1e-30)
            nid = self._next_list
            self._next_list += 1
            batch.put(CF, _key(b"H", nid), hv.tobytes())
            batch.put(CF, _key(b"P", nid), np.ascontiguousarray(raw[part]).tobytes())
            self._sizes[nid] = len(part)
            ids.append(nid)
            heads.append(hv)
        batch.delete(CF, _key(b"H", lid))
        self._heads.add(np.array(ids, dtype=np.int64), np.stack(heads))
        self._heads.remove([lid])

    # -- writes ---------------------------------------------------------------------------
    def add(self, vectors, slots=None, acl=None) -> np.ndarray:
        X = self._prepare(vectors)
        n = X.shape[0]
        if self._half and n and float(np.abs(X).max()) > _HALF_MAX:
            raise InvalidArgument(f"a value exceeds {_HALF_MAX}, the float16 postings' range")
        with self._wlock:
            high = len(self._live) if self._count else 0
            if slots is None:
                used = np.flatnonzero(self._live)
                start = int(used[-1]) + 1 if len(used) else 0
                s = np.arange(start, start + n, dtype=np.int64)
            else:
                s = self._slots(slots, n)
            indptr, indices = normalize_acl(acl, n)
            del high
            if n == 0:
                return s
            self._grow(int(s.max()))
            old = s[self._live[s]]
            self._acl.clear_many(old)
            self._count += n - len(old)
            self._live[s] = True
            self._acl.add_csr(s, indptr, indices)
            if len(self._heads) == 0 and n >= self.bulk_min:
                self._build(X, s)
            else:
                if len(self._heads) == 0:  # first vector seeds the first head
                    self._new_list(X[:1])
                self._insert(X, s)
            self._kick()
        return s

    def _new_list(self, head: np.ndarray) -> int:
        lid = self._next_list
        self._next_list += 1
        b = WriteBatch()
        b.put(CF, _key(b"H", lid), head.reshape(-1).tobytes())
        b.put(CF, _key(b"P", lid), b"")
        self.store.write(b)
        self._heads.add(np.array([lid]), head.reshape(1, -1))
        self._sizes[lid] = 0
        return lid

    def _insert(self, X: np.ndarray, s: np.ndarray, exclude: set[int] | None = None) -> None:
        """Bump versions of ``s`` and append their records to the RNG-chosen lists (one batch)."""
        if len(s) == 0 or len(self._heads) == 0:
            return
        batch = WriteBatch()
        self._train_sq(X, batch)
        vers = self._bump(s, batch)
        C = min(self.candidates, len(self._heads))
        cand, cdist = self._heads.search(X, C)
        if exclude:
            bad = np.isin(cand, list(exclude))
            cdist = np.where(bad, np.inf, cdist)
            order = np.argsort(cdist, axis=1, kind="stable")
            cand = np.take_along_axis(np.where(bad, -1, cand), order, 1)
            cdist = np.take_along_axis(cdist, order, 1)
        keep = self._heads.select_replicas(cand, cdist, self.replica_count, self.eps1)
        pts, cols = np.nonzero(keep)
        lists = cand[pts, cols]
        order = np.argsort(lists, kind="stable")
        pts, lists = pts[order], lists[order]
        uniq, starts = np.unique(lists, return_index=True)
        ends = np.append(starts[1:], len(lists))
        olds = self._fetch(_pkeys(uniq), _UPDATE_IO)
        repin: dict[int, bytes] = {}
        for lid, a, b, old in zip(uniq.tolist(), starts.tolist(), ends.tolist(), olds,
                                  strict=True):
            sel = pts[a:b]
            value = (old or b"") + pack_records(self._rec, s[sel], vers[sel], self._enc(X[sel]))
            batch.put(CF, _key(b"P", lid), value)
            if lid in self._pinned:
                repin[lid] = value
            size = (len(old or b"") // self._rec.itemsize) + len(sel)
            self._sizes[lid] = size
            if size > self.posting_limit:
                self._todo.add(lid)
        self.store.write(batch)
        self._pinned.update(repin)  # pinned copies follow their lists (after the write)

    def remove(self, slots) -> None:
        s = self._slots(slots)
        with self._wlock:
            s = s[s < len(self._live)]
            s = s[self._live[s]]
            self._live[s] = False  # tombstone: records stay until their list is rewritten
            self._count -= len(s)
            self._acl.clear_many(s)

    def _check_live(self, slot: int) -> None:
        if not (0 <= slot < len(self._live) and self._live[slot]):
            raise InvalidArgument(f"slot {slot} is not in the index")

    def grant(self, slot: int, tenant: int) -> None:
        with self._wlock:
            self._check_live(int(slot))
            self._acl.grant(int(slot), int(tenant))

    def revoke(self, slot: int, tenant: int) -> None:
        with self._wlock:
            self._check_live(int(slot))
            self._acl.revoke(int(slot), int(tenant))

    # -- maintenance (SPFresh LIRE) ---------------------------------------------------------
    def _kick(self) -> None:
        """Hand pending list checks to the background worker (or run them now)."""
        if not self._todo:
            return
        if not self.background:
            self._drain()
            return
        todo, self._todo = self._todo, set()
        self._idle.clear()
        for lid in todo:
            self._q.put(lid)
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="spann-maint", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                lid = self._q.get(timeout=0.5)
            except queue.Empty:
                if self._q.empty():
                    self._idle.set()
                    if self._closed:
                        return
                continue
            with self._wlock:
                self._todo.add(lid)
                self._drain()
            if self._q.empty():
                self._idle.set()

    def _drain(self) -> None:
        """Process pending list checks (caller holds the write lock)."""
        guard = 0
        while self._todo and guard < 100000:
            guard += 1
            lid = self._todo.pop()
            self._maintain(lid)

    def flush(self) -> None:
        """Wait until every queued split/merge/reassign is done (tests, checkpoints)."""
        with self._wlock:
            self._kick()
        if self.background:
            while not (self._q.empty() and self._idle.is_set()):
                self._idle.wait(0.05)
            with self._wlock:
                self._drain()

    wait = flush

    def compact(self) -> None:
        """Check every list now: drop stale/deleted records, split over-full, merge tiny."""
        with self._wlock:
            self._todo.update(self._heads.ids().tolist())
            self._drain()

    def _read_list(self, lid: int) -> np.ndarray | None:
        raw = self.store.get(CF, _key(b"P", lid))
        return None if raw is None else np.frombuffer(raw, self._rec)

    def _valid(self, rec: np.ndarray) -> np.ndarray:
        s = rec["slot"]
        ok = s < len(self._live)
        sc = np.where(ok, s, 0)
        return ok & self._live[sc] & (self._ver[sc] == rec["ver"])

    def _maintain(self, lid: int) -> None:
        if lid not in self._sizes:
            return
        rec = self._read_list(lid)
        if rec is None:
            return
        rec = rec[self._valid(rec)]
        _, first = np.unique(rec["slot"], return_index=True)  # one record per slot
        rec = rec[np.sort(first)]
        dropped = self._sizes[lid] - len(rec)
        if len(rec) > self.posting_limit:
            self._split(lid, rec)
        elif len(rec) < self.merge_min and len(self._heads) > 1:
            self._merge(lid, rec)
        elif dropped > 0:
            self.store.put(CF, _key(b"P", lid), rec.tobytes())
            self._sizes[lid] = len(rec)
            if lid in self._pinned:
                self._pinned[lid] = rec.tobytes()
        self.stats["gc_records"] += max(0, dropped)

    def _split(self, lid: int, rec: np.ndarray) -> None:
        """Balanced 2-means split of an over-full list, then LIRE reassignment."""
        V = self._vecs(rec)
        old_head = self._heads.vectors(np.array([lid]))[0]
        lab = balanced_kmeans(V, 2, self.balance, np.random.default_rng(self.seed + lid))
        parts = [np.flatnonzero(lab == c) for c in (0, 1)]
        if min(len(p) for p in parts) == 0:  # identical vectors: cut in half
            parts = [np.arange(len(rec) // 2), np.arange(len(rec) // 2, len(rec))]
        new_ids, new_heads = [], []
        batch = WriteBatch()
        for p in parts:
            h = V[nearest_member(V, p)]
            nid = self._next_list
            self._next_list += 1
            new_ids.append(nid)
            new_heads.append(h)
            batch.put(CF, _key(b"H", nid), h.tobytes())
            batch.put(CF, _key(b"P", nid), rec[p].tobytes())
            self._sizes[nid] = len(p)
        batch.delete(CF, _key(b"P", lid))
        batch.delete(CF, _key(b"H", lid))
        # new heads first: a concurrent search sees old or new lists, never neither
        self._heads.add(np.array(new_ids), np.stack(new_heads))
        self.store.write(batch)
        self._heads.remove([lid])
        self._pinned.pop(lid, None)
        del self._sizes[lid]
        self.stats["splits"] += 1
        for nid, p in zip(new_ids, parts, strict=True):
            if len(p) > self.posting_limit:
                self._todo.add(nid)
        self._reassign(old_head, new_ids, np.stack(new_heads), rec)

    def _reassign(self, old_head: np.ndarray, new_ids: list[int], new_heads: np.ndarray,
                  rec: np.ndarray) -> None:
        """LIRE: re-insert vectors whose nearest head is no longer a list that holds them.

        Members of the split list whose nearest head is now neither new head move
        (``reassign="all"``), or only those that the list of that nearest head does not already
        hold (``reassign="nearest"``: keeps the invariant "every vector is in its nearest head's
        list" without re-placing replicas; with 8 replicas most members are replicas their
        nearest list already holds, so "all" re-inserts ~370 vectors into 8 lists each per split
        on GloVe-50). "all" also refreshes replica placement as heads multiply, which matters
        when an index grows from very few heads (engine test: >= 0.9 vs 0.89). Members of
        the ``reassign_lists`` lists nearest the old head move when they are closer to a new head
        than to the old one and a new head is now their nearest (SPFresh)."""
        v = self._vecs(rec)
        cand_s = [rec["slot"]]
        cand_v = [v]
        if self.reassign_lists:
            near, _ = self._heads.search(old_head[None, :], self.reassign_lists + 2)
            near = [i for i in near[0].tolist() if i >= 0 and i not in new_ids]
            near = near[: self.reassign_lists]
            for raw in self.store.multi_get(CF, [_key(b"P", i) for i in near]):
                if not raw:
                    continue
                r = np.frombuffer(raw, self._rec)
                r = r[self._valid(r)]
                if not len(r):
                    continue
                v = self._vecs(r)
                m = ~self._head_dists(old_head, new_heads, v, strict=False)
                cand_s.append(r["slot"][m])
                cand_v.append(v[m])
        S = np.concatenate(cand_s)
        Vc = np.concatenate(cand_v)
        S, first = np.unique(S, return_index=True)
        Vc = Vc[first]
        if not len(S):
            return
        nearest, _ = self._heads.search(Vc, 1)
        in_split = np.isin(S, rec["slot"])
        is_new = np.isin(nearest[:, 0], new_ids)
        away = in_split & ~is_new & (nearest[:, 0] >= 0)
        held = np.zeros(len(S), dtype=bool)
        if self.reassign == "nearest" and away.any():  # does that list hold them already?
            lids = np.unique(nearest[away, 0])
            pairs = []
            for lid, raw in zip(lids.tolist(), self._fetch(_pkeys(lids), _UPDATE_IO),
                                strict=True):
                if raw:
                    r = np.frombuffer(raw, self._rec)
                    r = r[self._valid(r)]
                    pairs.append(np.stack([np.full(len(r), lid), r["slot"]], axis=1))
            if pairs:
                have = np.concatenate(pairs)
                key = have[:, 0] * (1 << 32) + have[:, 1]
                want = nearest[:, 0] * (1 << 32) + S
                held = away & np.isin(want, key)
        move = np.where(in_split, ~is_new & ~held, is_new)
        if move.any():
            self.stats["reassigned"] += int(move.sum())
            self._insert(Vc[move], S[move])

    def _head_dists(self, old_head: np.ndarray, new_heads: np.ndarray, v: np.ndarray,
                    strict: bool = True) -> np.ndarray:
        """Rows of ``v`` farther (``strict``: strictly; else at least as far) from every new head
        than from the old head."""
        if not len(v):
            return np.zeros(0, dtype=bool)
        d_old = _native.distances(old_head, v, self._code)
        d_new = np.min(np.stack([_native.distances(h, v, self._code) for h in new_heads]), axis=0)
        return d_new > d_old if strict else d_new >= d_old

    def _merge(self, lid: int, rec: np.ndarray) -> None:
        """Drop a tiny list and re-insert its live vectors into their other nearest lists."""
        b = WriteBatch()
        b.delete(CF, _key(b"P", lid))
        b.delete(CF, _key(b"H", lid))
        self._heads.remove([lid])
        self.store.write(b)
        self._pinned.pop(lid, None)
        del self._sizes[lid]
        self.stats["merges"] += 1
        if len(rec):
            self._insert(self._vecs(rec),
                         rec["slot"].astype(np.int64),
                         exclude={lid})

    # -- reads ----------------------------------------------------------------------------
    def _fetch(self, keys: list[bytes], io_threads: int) -> list[bytes | None]:
        """The posting lists of ``keys``: one ``multi_get``, or ``io_threads`` concurrent ones.

        A disk read costs ~80 us whatever its size up to ~32 KB, and RocksDB's MultiGet reads the
        blocks of one file one after another, so a query's latency is about lists x 80 us; with
        several reads in flight (the store releases the GIL) the device overlaps them, as SPANN's
        and DiskANN's asynchronous readers do. Order of the result does not matter to the scan."""
        n = len(keys)
        t = min(io_threads, n)
        if t <= 1:
            return self.store.multi_get(CF, keys)
        pool = self._pool
        if pool is None or pool._max_workers < t:
            with self._pool_lock:
                if self._pool is None or self._pool._max_workers < t:
                    # the smaller pool is retired, not shut down: a concurrent search may still
                    # be submitting to it (submit after shutdown raises); close() ends it
                    if self._pool is not None:
                        self._retired.append(self._pool)
                    self._pool = ThreadPoolExecutor(t, "spann-io")
                pool = self._pool
        parts = [keys[j * n // t:(j + 1) * n // t] for j in range(t)]
        futs = [pool.submit(self.store.multi_get, CF, part) for part in parts[1:]]
        out = self.store.multi_get(CF, parts[0])  # this thread reads one share itself
        for f in futs:
            out += f.result()
        return out

    def search(self, queries, k: int, tenant: int | None = None, params=None):
        """Top-k per query: nearest heads, query-aware pruning, one fetch of the kept lists, then
        the native scan (validity, tenant bit, SIMD distance, bounded top-k, replica dedupe)."""
        p = self._params(params)
        k = self._k(k)
        Q = self._prepare(queries, "queries")
        nq = Q.shape[0]
        out_i, out_d = pad_results(nq, k)
        lists_read = np.zeros(nq, dtype=np.int64)
        bytes_read = np.zeros(nq, dtype=np.int64)
        scanned = np.zeros(nq, dtype=np.int64)
        from_ram = np.zeros(nq, dtype=np.int64)
        if nq == 0 or len(self._heads) == 0:
            self._local.stats = (lists_read, bytes_read, scanned, from_ram)
            return out_i, out_d
        bm = None
        if tenant is not None:
            if isinstance(tenant, bool) or not isinstance(tenant, int | np.integer) or tenant < 0:
                raise InvalidArgument(f"tenant must be a non-negative int, got {tenant!r}")
            bm = self._acl.bitmap(int(tenant))
        hid, hd = self._heads.search(Q, p.max_lists)
        keep = (hid >= 0) & within(hd, hd[:, :1], p.eps, self._code)
        st = np.zeros(3, dtype=np.int64)
        sq = (self._sq.scale, self._sq.offset) if self._sq is not None else None
        for i in range(nq):
            ids = hid[i][keep[i]]
            pinned = self._pinned
            if pinned:  # lists held in RAM are not read
                got = [pinned.get(j) for j in ids.tolist()]
                blocks = [b for b in got if b is not None]
                from_ram[i] = len(blocks)
                miss = ids[np.fromiter((b is None for b in got), bool, len(got))]
                blocks += self._fetch(_pkeys(miss), p.io_threads)
            else:
                blocks = self._fetch(_pkeys(ids), p.io_threads)
            live, ver = self._live, self._ver  # one snapshot (_grow swaps both arrays)
            m = min(len(live), len(ver))
            _spann.scan(Q[i], blocks, live[:m].view(np.uint8), ver[:m], bm, k, self._code,
                        out_i[i], out_d[i], st, self._fmt, sq)
            lists_read[i] = len(ids)
            bytes_read[i] = st[0]
            scanned[i] = st[1]
        self._local.stats = (lists_read, bytes_read, scanned, from_ram)
        return out_i, out_d

    def last_search_stats(self) -> dict[str, np.ndarray]:
        """Per query of this thread's last ``search``: lists scanned (``lists_read``), their
        bytes, records scanned, and how many of the lists were pinned in RAM (``pin_lists``):
        disk reads = lists_read - lists_from_ram (less any RocksDB block cache hits)."""
        lr, br, sc, fr = getattr(self._local, "stats", (np.zeros(0),) * 4)
        return {"lists_read": lr, "bytes_read": br, "records_scanned": sc,
                "lists_from_ram": fr}

    def pin_lists(self, max_bytes: int, queries: np.ndarray, max_lists: int = 16) -> int:
        """Hold the posting lists that ``queries`` (a sample like the expected queries, e.g.
        base vectors) probe most often, per byte, in RAM, up to ``max_bytes``; returns how many.

        A frequency-chosen set beats an LRU cache of the same size on a skewed probe
        distribution (GloVe-50, 10 MB, lists probed by 20k base vectors as proxy queries: 21% of
        a test query's lists vs ~14% from RocksDB's LRU block cache). Pinned copies follow
        their lists (appends, GC, splits, merges), are counted in ``memory_bytes`` and are not
        saved (call again after ``load``). ``max_bytes=0`` unpins everything."""
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise InvalidArgument(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        if max_bytes == 0 or len(self._heads) == 0:
            self._pinned = {}
            return 0
        Q = self._prepare(queries, "queries")
        with self._wlock:
            hid, _ = self._heads.search(Q, max(1, int(max_lists)))
            ids = np.array(sorted(self._sizes), dtype=np.int64)
            size = np.array([self._sizes[i] for i in ids.tolist()], dtype=np.float64)
            size = np.maximum(size, 1) * self._rec.itemsize
            pos = np.searchsorted(ids, hid[hid >= 0])
            ok = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == hid[hid >= 0])
            freq = np.bincount(pos[ok], minlength=len(ids)).astype(np.float64)
            order = np.argsort(-(freq / size), kind="stable")
            order = order[freq[order] > 0]
            chosen = order[np.cumsum(size[order]) <= max_bytes]
            pin: dict[int, bytes] = {}
            for lid, raw in zip(ids[chosen].tolist(), self._fetch(_pkeys(ids[chosen]), 4),
                                strict=True):
                if raw is not None:
                    pin[lid] = raw
            self._pinned = pin
            return len(pin)

    @property
    def acl(self) -> AccessLists:
        return self._acl

    def num_lists(self) -> int:
        return len(self._heads)

    def memory_bytes(self) -> int:
        """RAM held: heads + head graph, version map, live flags, list sizes, tenant bitmaps,
        the SQ8 quantizer and the pinned lists."""
        pinned = self._pinned
        return (self._heads.memory_bytes() + self._ver.nbytes + self._live.nbytes
                + 80 * len(self._sizes) + self._acl.memory_bytes() + 8 * self.dim
                + sum(len(v) + 100 for v in list(pinned.values())))

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Stop the background worker (pending work is finished first)."""
        self.flush()
        self._closed = True
        with self._pool_lock:
            pools = self._retired + ([self._pool] if self._pool is not None else [])
            self._pool, self._retired = None, []
        for p in pools:
            p.shutdown(wait=True)

    # -- persistence ----------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"head_ratio": self.head_ratio, "replica_count": self.replica_count,
                "posting_limit": self.posting_limit, "eps1": self.eps1,
                "candidates": self.candidates, "balance": self.balance,
                "head_index": self.head_index_kind, "head_M": self.head_M,
                "head_ef": self.head_ef, "merge_min": self.merge_min,
                "reassign_lists": self.reassign_lists, "background": self.background,
                "bulk_min": self.bulk_min, "threads": self.threads, "seed": self.seed,
                "posting_dtype": self.posting_dtype, "reassign": self.reassign,
                "build_fill": self.build_fill}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Live flags, versions, ACLs (compact: the owner array), list sizes and the head graph
        (bytes), copied; heads and postings stay in the store."""
        self.flush()
        with self._wlock:
            meta, arrays = self._snapshot(True)
            g = self._heads.graph_bytes()
            if g is not None:
                arrays["head_graph"] = g
            return meta, arrays

    def _snapshot(self, copy: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``_state`` without the head graph, under the write lock. ``copy=False``: the slot
        arrays (live flags, versions, ACL owners) are the index's own, valid while the caller
        holds the lock (``save`` writes them out in place: no per-slot copy)."""
        meta = {"config": self._config(), "capacity": len(self._live),
                "head_kind": self._heads.kind}
        lids = np.array(sorted(self._sizes), dtype=np.int64)
        arrays = {"live_mask": self._live.copy() if copy else self._live,
                  "ver": self._ver.copy() if copy else self._ver,
                  **self._acl.to_arrays(compact=True, copy=copy),
                  "list_ids": lids,
                  "list_sizes": np.array([self._sizes[i] for i in lids.tolist()],
                                         dtype=np.int64)}
        return meta, arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (temp file + rename; no pickle), like ``Index.save`` but
        without holding a copy of anything per slot or per head: the slot arrays are written
        in place under the write lock, and the head graph is streamed from a file."""
        self.flush()
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as d, \
                self._wlock:
            meta, arrays = self._snapshot(copy=False)
            meta = {"kind": self.kind, "dim": self.dim, "metric": self.metric, **meta}
            graph = os.path.join(d, "graph")
            files = {"head_graph": graph} if self._heads.save_graph(graph) else {}
            with open(tmp, "wb") as f:
                write_npz(f, {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8),
                              **arrays}, files)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, store: KVStore | None = None) -> SPANNIndex:
        """Reopen from a ``save`` file plus the same store that holds the posting lists. The
        head graph goes from the file to a temporary file (no in-memory copy) and loads from
        there."""
        with np.load(path, allow_pickle=False) as z, \
                tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as d:
            meta = json.loads(z["__meta__"].tobytes().decode())
            if meta.get("kind") != cls.kind:
                raise InvalidArgument(f"{path}: holds a {meta.get('kind')!r} index, not "
                                      f"'spann'")
            arrays = {k: z[k] for k in z.files if k not in ("__meta__", "head_graph")}
            if "head_graph" in z.files:
                arrays["head_graph"] = npz_member_to_file(z, "head_graph",
                                                          os.path.join(d, "graph"))
            return cls._from_state(meta, arrays, store)

    @classmethod
    def _from_state(cls, meta, arrays, store: KVStore | None = None, *,
                    live: Iterable[np.ndarray] | None = None,
                    acl: AccessLists | None = None) -> SPANNIndex:
        """An index from ``_state``/``save`` arrays (the slot arrays -- live flags, versions,
        ACL owners -- are taken over where their size fits, not copied; ``head_graph``: bytes
        or the path of a graph file) and the store. For an import (``spann_adopter``):
        ``live``, chunks of live slots instead of an array, and ``acl``, lists taken as they
        are."""
        if store is None:
            raise InvalidArgument("SPANNIndex.load needs the store that holds its posting lists")
        idx = cls(meta["dim"], meta["metric"], store, _fresh=False, **meta["config"])
        cap = int(meta["capacity"])
        full = len(idx._live)
        while full < cap:
            full *= 2
        ver = arrays.get("ver")
        if ver is not None and len(ver) == full and ver.dtype == np.uint8 \
                and ver.flags.writeable and ver.flags.c_contiguous:
            idx._ver = ver  # taken over
        else:
            idx._ver = np.zeros(full, dtype=np.uint8)
            if ver is not None:
                idx._ver[: len(ver)] = ver
        mask = arrays.get("live_mask")
        if mask is not None and len(mask) == full and mask.dtype == np.bool_ \
                and mask.flags.writeable and mask.flags.c_contiguous:
            idx._live = mask  # taken over
        else:
            idx._live = np.zeros(full, dtype=bool)
            if mask is not None:
                idx._live[: len(mask)] = mask
        if "live" in arrays:  # older checkpoints: the live slots
            idx._live[arrays["live"]] = True
        for part in live or ():
            idx._live[part] = True
        idx._count = int(np.count_nonzero(idx._live))  # no temporary on a bool array
        idx._acl = acl if acl is not None else AccessLists.from_arrays(arrays, full)
        for k, v in store.iterate(CF, prefix=b"V"):  # durable versions win over the checkpoint
            c = int.from_bytes(k[1:], "big")
            chunk = np.frombuffer(v, dtype=np.uint8)
            idx._grow(c * _VCHUNK + len(chunk) - 1)
            idx._ver[c * _VCHUNK: c * _VCHUNK + len(chunk)] = chunk
        if idx._fmt == 2:
            raw = store.get(CF, b"Q")
            if raw is not None:
                idx._sq = SQ8.from_bytes(raw, idx.dim)
        # heads straight into one float32 matrix, sized by the saved list count (grown only
        # for lists made after the checkpoint) and taken over by the head index: no Python
        # object per head and no second copy (at 236k heads lists of ints and arrays had been
        # ~1-2 KB per head of transient memory, a byte buffer 512 B)
        idbuf = array("q")
        hv = np.empty((max(16, len(arrays.get("list_ids", ()))), idx.dim), dtype=np.float32)
        for k, v in store.iterate(CF, prefix=b"H"):
            if len(idbuf) == len(hv):
                hv = np.concatenate([hv, np.empty_like(hv[: len(hv) // 2 + 16])])
            hv[len(idbuf)] = np.frombuffer(v, dtype=np.float32)
            idbuf.append(int.from_bytes(k[1:], "big"))
        heads = np.frombuffer(idbuf, dtype=np.int64) if len(idbuf) else np.zeros(0, np.int64)
        if meta["head_kind"] == "hnsw":
            idx._heads = idx._new_heads("hnsw")
        if len(heads):
            # the saved graph (identical results, no rebuild) if it still holds these heads;
            # popped so the loaded copy is the only one alive
            idx._heads.add(heads, hv[: len(heads)], graph=arrays.pop("head_graph", None),
                           take=True)
        del hv
        if len(heads):
            idx._next_list = int(heads.max()) + 1
            if "list_ids" in arrays:
                # list sizes from the checkpoint, not by reading every posting list (the whole
                # data set) at each open; lists made after the checkpoint are read. A size that
                # grew after the checkpoint only delays that list's split check to its next
                # append, which recomputes the size from the list it rewrites.
                lids = np.asarray(arrays["list_ids"], dtype=np.int64)
                order = np.argsort(lids, kind="stable")
                lids = lids[order]
                lsz = np.asarray(arrays["list_sizes"], dtype=np.int64)[order]
                pos = np.minimum(np.searchsorted(lids, heads), max(0, len(lids) - 1))
                have = lids[pos] == heads if len(lids) else np.zeros(len(heads), bool)
                idx._sizes.update(zip(heads[have].tolist(), lsz[pos[have]].tolist(),
                                      strict=True))
                missing = heads[~have]
                if len(missing):
                    for h, v in zip(missing.tolist(), store.multi_get(CF, _pkeys(missing)),
                                    strict=True):
                        idx._sizes[h] = len(v or b"") // idx._rec.itemsize
            else:  # an older checkpoint: learn the sizes from the lists themselves
                for k, v in store.iterate(CF, prefix=b"P"):
                    idx._sizes[int.from_bytes(k[1:], "big")] = len(v) // idx._rec.itemsize
        return idx
