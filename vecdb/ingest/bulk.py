"""Offline bulk build of a SPANN collection on Ray, written as RocksDB SST files, then imported
atomically into a stopped data folder.

::

    shards --(1) sample tasks--> sample files (~10 rows per head) --> train_heads_file, Ray tasks:
               balanced k-means levels on <= train_rows drawn rows, route tasks split the files
               into parts of <= train_rows rows, hierarchical_balanced_clusters per part -->
               heads.npy; two parallel Ray tasks: head HNSW + HeadGroups (memory-mappable)
    shards --(2) Ray Data: ShardDatasource read fused with map_batches(_map_block), one task
               per shard, heads memory-mapped once per worker -->
               HeadGroups candidates --> _spann.rng_select_heads
               vectors/acl/payload SST (keys = slots, one disjoint range per batch)
               runs: (list id, primary?, dist, slot) sorted by list id, one per batch
               histogram of list sizes
    runs --(3) reduce tasks (2 x CPUs; each walks consecutive list-id ranges, each range sized
               by the histogram to the memory budget, files mapped once per task)-->
               cap, split hub lists, gather vectors from the map tasks' vector files -->
               postings SST: b"H"+list -> head vector, b"P"+list -> packed records (capped)
    import_bulk: Database.import_sst (engine): SST files ingested per column family, maps
               rebuilt, SPANN adopted (saved head graph and list sizes), checkpoint, reopened
               and counted, renamed into place.

The SPANN parts are SPANN's own (``vecdb.index._spann_parts``, ``vecdb._spann``): the same
balanced hierarchical clustering and nearest-member heads, the same RNG replica rule (native
``rng_select_heads``), the same posting cap rule (a vector's nearest list always keeps it) and
the same record format and keys (``b"H"``/``b"P"``/``b"V"`` + list id in the ``postings``
family). The candidate heads of a vector come from ``HeadGroups`` (batched GEMMs, near-exact)
instead of the head graph. The engine's ``vectors``/``acl``/``payload`` values use the engine's
codec. So the imported collection is what ``SPANNIndex`` + the engine would have written, and it
takes online updates afterwards (splits, merges) like any other SPANN collection.

Memory: every stage streams. A sample task holds its shard's sample rows; a head-training task
at most ``train_rows`` sample rows (the sample stays in files; ``train_heads_file``); a map task one
batch (``batch_rows``) plus search buffers, the heads and head groups memory-mapped (one
page-cache copy per machine); a reduce task one list-id range at a time whose rows fit
``memory_bytes``; the duplicate-id check (``check_unique_ids``) one id range per task. The driver
never holds a head vector (head-training tasks write them to files a task joins into
``heads.npy``; the reduce tasks write the split hub lists' new heads to files): it holds the
heads' count, the list-size histograms until the reduce plan is made (16 B per head), the list
sizes afterwards (8 B per head, ~32 B per head while ``list_ids``/``list_sizes`` are written) and
per map batch its file names and 64 sample ids (~2 KB per batch); the head graph and groups are
built, and the graph updated, in tasks. Each stage's driver peak is split into anon / file / shmem
(``DriverMemory``). The
import holds what the opened collection holds (engine maps, SPANN's versions, live flags and
tenant bitmaps: bytes per vector) plus bounded chunks. Each stage's peak RSS, driver and tasks,
is in the manifest's ``stages``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from vecdb.engine.collection import MAP_DTYPE
from vecdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from vecdb.ingest import cpu
from vecdb.ingest.dataset import map_shards
from vecdb.ingest.heads import HeadGroups, HeadSearch, group_size
from vecdb.ingest.sources import (
    DEFAULT_COLUMNS,
    Columns,
    Shard,
    ShardError,
    check_dim,
    discover,
    plan,
    read_batches,
)
from vecdb.ingest.state import write_json_atomic

FAMILIES = ("vectors", "acl", "payload", "postings")


def _rss() -> int:
    """Peak RSS of this process in bytes (Linux reports KiB): since the process started, or since
    the last ``reset_peak_rss``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    """This process's RSS now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def anon_rss() -> int:
    """This process's anonymous (private, heap) RSS now in bytes: RSS without the file pages it
    maps, which the page cache shares between processes and can drop (0 where /proc is
    missing). ``rss_parts()["anon"]``."""
    return rss_parts().get("anon", 0)


def memory_now() -> dict[str, int]:
    """This process's memory now, bytes (``/proc/self/smaps_rollup``; {} where missing): ``rss``,
    ``pss`` (shared pages divided among the processes mapping them), ``uss`` (pages no other
    process maps), ``anon`` (heap: what a task really adds to a machine; file pages are the
    page cache's, one copy for all its processes) and ``shared`` (mapped by others too)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            kb = {k: int(v.split()[0]) for k, v in
                  (line.split(":", 1) for line in f if ":" in line and line[0].isupper())}
    except (OSError, ValueError):
        return {}
    return {"rss": kb.get("Rss", 0) << 10, "pss": kb.get("Pss", 0) << 10,
            "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) << 10,
            "anon": kb.get("Anonymous", 0) << 10,
            "shared": (kb.get("Shared_Clean", 0) + kb.get("Shared_Dirty", 0)) << 10}


def rss_parts() -> dict[str, int]:
    """This process's RSS now split by kind, bytes ({} where /proc is missing): ``anon`` (its
    heap), ``file`` (mapped file pages: page cache, shared, reclaimable) and ``shmem`` (shared
    memory, e.g. Ray's object store mapped by a zero-copy ``ray.get``), from /proc/self/status."""
    keys = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k = line.split(None, 1)[0]
                if k in keys:
                    out[keys[k]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


class DriverMemory:
    """The driver's peak RSS per stage split into anon / file / shmem (``rss_parts``): a daemon
    thread samples them every ``interval`` seconds (the kernel keeps a peak of the total only,
    VmHWM), so a stage's peak of each part is known, not just of the sum. ``lap()`` returns the
    peaks since the previous lap (each part's own maximum, plus the sum at its largest sample)
    and starts the next. A context manager: ``with DriverMemory() as m`` stops the thread however
    the block ends (a build or import that raises leaves no sampler behind)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._sample()
        # the thread holds the sampler weakly: a build that raises before ``close`` leaves no
        # thread behind once its sampler is collected
        self._thread = threading.Thread(target=DriverMemory._run,
                                        args=(weakref.ref(self), self._stop, interval),
                                        name="driver-memory", daemon=True)
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    def _sample(self) -> None:
        # read /proc under the lock: a sample read before a ``lap`` and folded after it would
        # put memory of the ended stage into the next one's peaks
        with self._lock:
            p = rss_parts()
            if not p:
                return
            p["sum"] = p.get("anon", 0) + p.get("file", 0) + p.get("shmem", 0)
            for k, v in p.items():
                if v > self._peak.get(k, -1):
                    self._peak[k] = v

    @staticmethod
    def _run(ref: Any, stop: Any, interval: float) -> None:
        while not stop.wait(interval):
            me = ref()
            if me is None:
                return
            me._sample()
            del me

    def lap(self) -> dict[str, int]:
        """Peaks of ``anon``, ``file``, ``shmem`` and their ``sum`` since the last lap (bytes)."""
        self._sample()
        with self._lock:
            out, self._peak = self._peak, {}
        self._sample()  # the next lap starts from what is held now
        return out

    def close(self) -> None:
        """Stop the sampling thread (idempotent); ``lap`` still works, sampling on the call."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> DriverMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS count at its current RSS (Linux ``clear_refs`` 5), so a
    stage's or a task's peak is its own and not that of earlier work in the same (reused)
    process. A no-op where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _spann_config(dim: int, metric: str, params: dict[str, Any]) -> dict[str, Any]:
    """SPANN's full, validated configuration for ``params`` (defaults filled by SPANN itself)."""
    from vecdb.index.spann import SPANNIndex
    from vecdb.storage import MemoryKVStore

    try:
        idx = SPANNIndex(dim, metric, MemoryKVStore(), **params)
    except TypeError as e:
        raise InvalidArgument(f"bad SPANN parameter(s) {sorted(params)}: {e}") from None
    cfg = idx._config()
    idx.close()
    return cfg


def head_kind(cfg: dict[str, Any], n_heads: int) -> str:
    """The head index SPANN itself would use for ``n_heads`` heads ("auto": hnsw above 4096)."""
    if cfg["head_index"] != "auto":
        return cfg["head_index"]
    return "hnsw" if n_heads > 4096 else "flat"


def build_head_graph(heads: np.ndarray, metric: str, cfg: dict[str, Any], path: str,
                     threads: int) -> None:
    """The heads' HNSW graph (slot = list id), built once by the driver and saved to ``path``.

    Built exactly as SPANN's ``HeadIndex`` builds it (same M, ef_construction, seed, sized to the
    heads), so the map tasks search the same graph and the import hands it to the collection as
    its saved head graph instead of rebuilding it."""
    from vecdb.index.hnsw import HNSWIndex

    g = HNSWIndex(heads.shape[1], "ip" if metric in ("ip", "cosine") else "l2",
                  M=cfg["head_M"], ef_construction=100, seed=cfg["seed"],
                  num_threads=max(1, threads), max_elements=len(heads))
    g.add(np.ascontiguousarray(heads, dtype=np.float32),
          slots=np.arange(len(heads), dtype=np.int64))
    g.save(path)


def _head_graph_task(heads_path: str, metric: str, cfg: dict[str, Any], path: str,
                     threads: int) -> dict[str, Any]:
    """``build_head_graph`` as a Ray task over the saved heads (memory-mapped)."""
    t0 = time.perf_counter()
    reset_peak_rss()
    build_head_graph(np.load(heads_path, mmap_mode="r"), metric, cfg, path, threads)
    return {"seconds": time.perf_counter() - t0, "rss": _rss()}


def _head_groups_task(heads_path: str, code: int, size: int, probes: int, balance: float,
                      seed: int, path: str) -> dict[str, Any]:
    """``HeadGroups.build`` as a Ray task over the saved heads, saved to folder ``path``."""
    t0 = time.perf_counter()
    reset_peak_rss()
    HeadGroups.build(np.load(heads_path, mmap_mode="r"), code, size, probes, balance,
                     seed).save(path)
    return {"seconds": time.perf_counter() - t0, "rss": _rss()}


def _head_graph_update_task(path: str, removed: np.ndarray, added: list[str],
                            added_ids: np.ndarray) -> dict[str, Any]:
    """The saved head graph without the split hub lists' heads and with their parts' heads (the
    reduce tasks' new-head files ``added``, joined in order, are the heads of ``added_ids``), in
    a task: the driver never loads the graph nor the new heads."""
    from vecdb.index.hnsw import HNSWIndex

    reset_peak_rss()
    heads = [np.load(f) for f in added]
    n = sum(len(h) for h in heads)
    assert n == len(added_ids), (n, len(added_ids))
    g = HNSWIndex.load(path)
    g.remove(removed)
    if n:
        g.add(np.ascontiguousarray(np.concatenate(heads), dtype=np.float32), slots=added_ids)
    g.save(path)
    return {"rss": _rss()}


def run_dtype() -> np.dtype:
    """One assignment in a run file: list id, not-nearest flag, distance, slot (no vector: the
    reduce gathers it from the task's vector file, so runs are 17 bytes per replica)."""
    return np.dtype([("lid", "<i4"), ("sec", "u1"), ("d", "<f4"), ("slot", "<i8")])


# -- stage 1: sample ----------------------------------------------------------------------------
SAMPLE_SALT = 0x5A3D_1E37  # mixed into every sampling seed (see _sample_task)


def _sample_task(shard: Shard, dim: int, metric: str, p: float, seed: int, batch_rows: int,
                 columns: Columns, folder: str | None = None) -> dict[str, Any]:
    """Draw each valid row of ``shard`` with probability ``p`` (prepared for ``metric``); count
    good rows, errors and tenant names. With ``folder`` the drawn rows go to a ``.npy`` file there
    (``"file"``, ``"rows"``) instead of travelling back in the result (``"sample"``)."""
    from vecdb.kernels import prepare

    reset_peak_rss()

    # salted: a generator seeded (seed, offset) -- e.g. the benchmark's clustered_stream(seed=0)
    # -- would otherwise draw the very same uniforms, and the sample would keep only the rows
    # whose generator draws were < p (measured: 27 of 256 clusters; hub heads, recall 0.59 vs
    # 0.985 for a Curator tree trained on it)
    rng = np.random.default_rng((seed, shard.offset, SAMPLE_SALT))
    parts, errors, tenants = [], [], set()
    good = 0
    try:
        for b in read_batches(shard, dim, batch_rows, 0, columns):
            errors += b.errors
            good += len(b)
            if b.tenants is not None:
                tenants.update(b.tenants)
            if b.acl is not None:
                tenants.update(t for a in b.acl for t in a)
            if len(b):
                m = rng.random(len(b)) < p
                if m.any():
                    parts.append(prepare(b.vectors[m], dim, metric))
    except ShardError as e:
        return {"shard": shard.path, "failed": str(e), "errors": [{"file": shard.path, "row": 0,
                                                                   "error": str(e)}]}
    S = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    del parts
    res = {"shard": shard.path, "good": good, "errors": errors, "tenants": sorted(tenants)}
    if folder is None:
        res["sample"] = S
    elif len(S):
        res["file"] = os.path.join(folder, f"sample-{shard.offset:014d}.npy")
        res["rows"] = len(S)
        np.save(res["file"], S)
    return {**res, "rss": _rss()}


def fresh_out(out: str, subdirs: tuple[str, ...]) -> None:
    """Make ``out`` a new, empty bulk-build folder with ``subdirs`` (a half-written earlier
    attempt is removed); ``AlreadyExists`` if it holds a finished build (its manifest)."""
    if os.path.exists(os.path.join(out, "manifest.json")):
        raise AlreadyExists(f"{out} already holds a bulk build (manifest.json); use a new folder")
    shutil.rmtree(out, ignore_errors=True)
    for d in subdirs:
        os.makedirs(os.path.join(out, d))


def sample_stage(shards: list[Shard], dim: int, metric: str, p: float, seed: int,
                 batch_rows: int, columns: Columns, rejected: list[dict[str, Any]],
                 tenant: str, folder: str | None = None
                 ) -> tuple[np.ndarray | list[tuple[str, int]], int, list[dict[str, Any]],
                            set[str], set[str], int]:
    """Stage 1 of every bulk build: one Ray ``_sample_task`` per shard. Returns the sample, the
    number of good rows, the errors (planning rejects first), the failed shards, the tenant names
    seen (plus ``tenant``) and the tasks' peak RSS. With ``folder`` the sample stays on disk and
    the first item is its files, ``[(path, rows)]`` (the SPANN build: the driver never holds
    it); without, the sample itself (the Curator build's bounded ``train_sample``)."""
    import ray

    task = ray.remote(num_cpus=1)(_sample_task)
    res = ray.get([task.remote(s, dim, metric, p, seed, batch_rows, columns, folder)
                   for s in shards])
    errors = list(rejected)
    failed: set[str] = set()
    names = {tenant}
    for r in res:
        errors += r["errors"]
        if "failed" in r:
            failed.add(r["shard"])
        else:
            names.update(r["tenants"])
    sample: np.ndarray | list[tuple[str, int]]
    if folder is not None:
        sample = [(r["file"], r["rows"]) for r in res if "file" in r]
    else:
        parts = [r["sample"] for r in res if "sample" in r]
        sample = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return (sample, sum(r.get("good", 0) for r in res), errors, failed, names,
            max((r.get("rss", 0) for r in res), default=0))


def _leaf_size(cfg: dict[str, Any], n_sample: int, n_total: int) -> int:
    """SPANN's leaf size (``round(1/head_ratio)`` points per head) scaled by the sampling rate,
    so the number of heads ~ what the serial build makes on all rows."""
    leaf_full = max(2, int(round(1 / cfg["head_ratio"])))
    return max(2, int(round(leaf_full * n_sample / max(1, n_total))))


def _leaf_heads(S: np.ndarray, leaf: int, balance: float, seed: int, heads: str) -> np.ndarray:
    """One head per leaf of SPANN's balanced hierarchical k-means of ``S``: the leaf's mean
    (``heads="centroid"``) or its member nearest the mean (``"member"``, SPANN's serial rule)."""
    from vecdb.index._spann_parts import hierarchical_balanced_clusters, nearest_member

    if len(S) == 0:
        return np.zeros((0, S.shape[1]), dtype=np.float32)
    clusters = hierarchical_balanced_clusters(S, leaf, balance, seed)
    if heads == "member":
        return np.ascontiguousarray(S[[nearest_member(S, c) for c in clusters]])
    rows = np.concatenate(clusters)
    cnt = np.array([len(c) for c in clusters], dtype=np.int64)
    sums = np.add.reduceat(S[rows].astype(np.float64), np.cumsum(cnt) - cnt, axis=0)
    return np.ascontiguousarray((sums / cnt[:, None]).astype(np.float32))


def sample_rows_for(cfg: dict[str, Any], n_total: int) -> int:
    """Default training sample: ~10 sample rows per head (``10 x head_ratio x N``, at least
    200k, at most N). Fewer rows per head make leaves of 2-3 points whose heads become hubs on
    clustered data (measured: 10M x 128 with a 600k sample, recall 0.22); 10 rows per head with
    centroid heads gave no list over ``posting_limit`` (1M x 128)."""
    return int(min(n_total, max(200_000, 10 * cfg["head_ratio"] * n_total)))


TRAIN_ROWS = 250_000  # default bound on the sample rows one process holds to train heads


def _subsample(files: list[tuple[str, int]], m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` rows drawn uniformly without replacement from the sample ``files`` (all of them if
    they hold fewer), read through memory maps: only the drawn rows are loaded."""
    ns = np.array([n for _, n in files], dtype=np.int64)
    take = ns if m >= ns.sum() else rng.multivariate_hypergeometric(ns, m)
    out = []
    for (path, n), t in zip(files, take.tolist(), strict=True):
        if t:
            a = np.load(path, mmap_mode="r")
            out.append(np.array(a[np.sort(rng.choice(n, t, replace=False))]))
            del a
    return np.concatenate(out)


def _split_task(files: list[tuple[str, int]], k: int, lam: float, seed: Any,
                train_rows: int) -> dict[str, Any]:
    """One level of the head hierarchy for a part too big to load: SPANN's balanced k-means into
    ``k`` parts, trained on at most ``train_rows`` rows drawn from the part's files. Returns the
    part centroids (the means of its labels; ``"C": None``: the rows are all alike, cut them
    arbitrarily).

    The route tasks send each row to its nearest centroid, without the size penalty: the penalty
    learnt on the drawn rows over-corrects when applied once to all rows (clustered 1M x 128, 8
    parts: up to 139k of 200k rows in a part whose k-means label held 2k), and balanced
    k-means's own final labels on clustered data are close to the nearest-centroid ones. A part
    left too big is split again."""
    from vecdb.index._spann_parts import balanced_kmeans

    reset_peak_rss()
    rng = np.random.default_rng(seed)
    X = _subsample(files, train_rows, rng)
    lab = balanced_kmeans(X, k, lam, rng)
    present = np.flatnonzero(np.bincount(lab, minlength=k))
    if len(present) < 2:
        return {"C": None, "k": k, "rows": len(X), "rss": _rss()}
    C = np.stack([X[lab == j].mean(axis=0, dtype=np.float64) for j in present.tolist()])
    return {"C": np.ascontiguousarray(C, dtype=np.float32), "k": len(C), "rows": len(X),
            "rss": _rss()}


def _route_task(path: str, model: dict[str, Any], prefix: str,
                chunk: int = 65_536) -> dict[str, Any]:
    """Route one sample file's rows to the parts of ``model`` (``_split_task``: nearest centroid,
    streamed in ``chunk``-row blocks), one file per part (``prefix-<part>.npy``); the input file
    is removed. Returns ``[(path, rows) | None]`` per part."""
    from vecdb.index._spann_parts import pair_dist

    reset_peak_rss()
    a = np.load(path, mmap_mode="r")
    k, n = int(model["k"]), len(a)
    lab = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if model["C"] is None:  # identical rows: an arbitrary, even cut
            lab[s:e] = np.arange(s, e) % k
        else:
            lab[s:e] = np.argmin(pair_dist(np.ascontiguousarray(a[s:e]), model["C"], 0), axis=1)
    parts = _save_parts(a, lab, k, prefix)
    del a
    os.remove(path)
    return {"parts": parts, "rss": _rss()}


def _save_parts(rows_of: np.ndarray, lab: np.ndarray, k: int,
                prefix: str) -> list[tuple[str, int] | None]:
    """Rows of ``rows_of`` (an array or a memory map) grouped by their part label ``lab`` into
    one file per part (``prefix-<part>.npy``, rows in input order). Returns ``(path, rows)`` per
    part, None for an empty one."""
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    parts: list[tuple[str, int] | None] = []
    for g in range(k):
        rows = order[bounds[g]:bounds[g + 1]]
        if not len(rows):
            parts.append(None)
            continue
        out = f"{prefix}-{g:04d}.npy"
        np.save(out, np.asarray(rows_of[rows]))
        parts.append((out, len(rows)))
    return parts


def _load_files(files: list[tuple[str, int]]) -> np.ndarray:
    """The rows of sample/part ``files`` (``[(path, rows)]``) in one float32 array filled in
    place (no list of arrays plus their concatenation: 1x, not 2x, the rows at the peak). The
    files stay: the calling task removes them (``_remove_files``) once its outputs are saved, so
    a task Ray retries after a crash still finds its inputs."""
    first = np.load(files[0][0], mmap_mode="r")
    S = np.empty((sum(n for _, n in files), first.shape[1]), dtype=np.float32)
    del first
    at = 0
    for path, n in files:
        S[at:at + n] = np.load(path)
        at += n
    return S


def _remove_files(files: Sequence[tuple[str, int]]) -> None:
    """Remove the ``[(path, rows)]`` files a task or stage has consumed."""
    for path, _ in files:
        os.remove(path)


def _part_task(files: list[tuple[str, int]], leaf: int, lam: float, seed: int,
               head_vectors: str, heads_file: str) -> dict[str, Any]:
    """The sub-tree of one part that fits a task (``train_rows``): load its files (removed once
    the heads are saved) and write its heads (``_leaf_heads``) to ``heads_file``. Returns the
    file and the number of heads, not the heads: the driver never holds head vectors."""
    reset_peak_rss()
    S = _load_files(files)
    H = _leaf_heads(S, leaf, lam, seed, head_vectors)
    np.save(heads_file, np.ascontiguousarray(H, dtype=np.float32))
    _remove_files(files)
    return {"file": heads_file, "heads": len(H), "rows": len(S), "rss": _rss()}


def _gather_heads_task(parts: list[tuple[str, int]], path: str,
                       chunk: int = 65_536) -> dict[str, Any]:
    """``path`` (``heads.npy``): the part files' heads (``[(file, heads)]``) one after another,
    as the .npy ``np.save`` writes: the header, then each part read through a memory map and
    written ``chunk`` heads at a time. A task, so the driver never holds the heads; the task
    holds one ``chunk`` copy plus the clean, mapped pages of the part file it reads (not the
    output's: written, not mapped). The part files stay (a retried task finds them): the driver
    removes them once this task returned."""
    reset_peak_rss()
    first = np.load(parts[0][0], mmap_mode="r")
    n, dim = sum(k for _, k in parts), first.shape[1]
    del first
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {
            "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
            "shape": (n, dim)})
        for f, k in parts:
            a = np.load(f, mmap_mode="r")
            assert a.shape == (k, dim), (f, a.shape, k)
            for s in range(0, k, chunk):
                out.write(np.ascontiguousarray(a[s:min(k, s + chunk)], dtype="<f4").tobytes())
            del a
    return {"heads": n, "rss": _rss()}


def _label_task(files: list[tuple[str, int]], k: int, lam: float, seed: int,
                prefix: str) -> dict[str, Any]:
    """The hierarchy's first level when the whole sample fits one task (``train_rows``): SPANN's
    balanced k-means labels of every row are the parts (as the in-driver build did, same seed),
    one file per part (``prefix-<part>.npy``, rows in sample order); the inputs are removed
    once the parts are saved."""
    from vecdb.index._spann_parts import balanced_kmeans

    reset_peak_rss()
    S = _load_files(files)
    lab = balanced_kmeans(S, k, lam, np.random.default_rng(seed))
    parts = _save_parts(S, lab, k, prefix)
    _remove_files(files)
    return {"parts": parts, "rows": len(S), "rss": _rss()}


def train_heads(files: list[tuple[str, int]], n_total: int, cfg: dict[str, Any], folder: str,
                *, head_vectors: str = "member", groups: int = 1,
                train_rows: int = TRAIN_ROWS) -> tuple[np.ndarray, dict[str, Any]]:
    """``train_heads_file``'s heads as an array [H, dim] (read back from a file under
    ``folder``, then removed) and its stats: for callers that want the heads in memory (tests,
    bench.raydata_map); the bulk build keeps them in ``heads.npy``."""
    path = os.path.join(folder, "heads-trained.npy")
    info = train_heads_file(files, n_total, cfg, folder, path, head_vectors=head_vectors,
                            groups=groups, train_rows=train_rows)
    heads = np.load(path)
    os.remove(path)
    return heads, info


def train_heads_file(files: list[tuple[str, int]], n_total: int, cfg: dict[str, Any],
                     folder: str, heads_path: str, *, head_vectors: str = "member", groups: int = 1,
                     train_rows: int = TRAIN_ROWS) -> dict[str, Any]:
    """Heads [H, dim] written to ``heads_path`` (a float32 .npy) from the sample ``files``
    (``[(path, rows)]``, drawn from ``n_total`` valid rows) with SPANN's build functions:
    balanced hierarchical k-means down to leaves of SPANN's leaf size scaled by the sampling
    rate (``_leaf_size``), one head per leaf (``_leaf_heads``), on Ray tasks. Each part's task
    writes its heads to a file and a last task (``_gather_heads_task``) joins them into
    ``heads_path``: the driver gets file names and counts, never head vectors (it held ~0.5 KB per
    head for 128 dims, plus Ray's copy of each part's result, when the tasks returned them).

    No process holds more than ``train_rows`` sample rows: the hierarchy's first level
    (``groups`` parts, as the serial hierarchy's top split; more if a part would exceed
    ``train_rows``) is trained by a task on a ``train_rows`` sub-sample (``_split_task``), route
    tasks send every file's rows to their nearest part centroid (``_route_task``, files
    under ``folder``), a part still over ``train_rows`` is split the same way again, and each part
    that fits is clustered by its own task (``_part_task``). Every sample file is consumed.

    ``head_vectors="member"`` (default) makes each head the leaf's member nearest the mean, as
    SPANN's serial build does; ``"centroid"`` the mean of its leaf. On clustered data a
    sample-trained member head is a noisy point, and the heads nearest their blob's centre
    become hubs (at 1M x 128 with 10 sample rows per head, member heads left 13% of the vectors
    in lists over ``posting_limit``, centroid heads none; with 3 rows per head both fail; the
    reduce stage splits such hub lists). Returns stats (``heads``: how many, parts, levels,
    largest part, tasks' peak RSS)."""
    import ray

    total = sum(n for _, n in files)
    if total == 0:
        raise FailedPrecondition("no valid vectors to train heads on")
    if head_vectors not in ("centroid", "member"):
        raise InvalidArgument(f"head_vectors must be 'centroid' or 'member', "
                              f"got {head_vectors!r}")
    if not isinstance(train_rows, int) or train_rows < 1000:
        raise InvalidArgument(f"train_rows must be an int >= 1000, got {train_rows!r}")
    leaf = _leaf_size(cfg, total, n_total)
    lam, seed = cfg["balance"], cfg["seed"]

    def ways(rows: int) -> int:  # parts to cut ``rows`` into so each fits ``train_rows``
        return 1 if rows <= train_rows else max(2, -(-5 * rows // (4 * train_rows)))

    def head_file(i: int) -> str:  # part i's heads (``_part_task``), joined at the end
        return os.path.join(folder, f"heads-part-{i:06d}.npy")

    k0 = max(ways(total), groups if total >= 8 * groups * leaf else 1)
    split_t = ray.remote(num_cpus=1)(_split_task)
    route_t = ray.remote(num_cpus=1)(_route_task)
    part_t = ray.remote(num_cpus=1)(_part_task)
    todo = [(files, total, k0, False)]  # (files, rows, parts to cut into, cut arbitrarily)
    leaves, rss, level, largest, drawn, alike_cuts = [], [], 0, 0, 0, 0
    if total <= train_rows and k0 > 1:
        # the sample fits one task: its balanced k-means labels are the first level's parts and
        # part g's sub-tree gets seed + g, exactly as the in-driver build did (measured at 1M:
        # routing to the nearest centroid instead lost 0.005-0.015 recall@10 at 64-128 lists)
        r = ray.get(ray.remote(num_cpus=1)(_label_task).remote(
            files, k0, lam, seed, os.path.join(folder, "l0")))
        rss.append(r["rss"])
        drawn, level, todo = r["rows"], 1, []
        for g, part in enumerate(r["parts"]):
            if part is not None:
                leaves.append(part_t.remote([part], leaf, lam, seed + g, head_vectors,
                                            head_file(len(leaves))))
                largest = max(largest, part[1])
    while todo:
        splits = []
        for fs, rows, k, alike in todo:
            if k <= 1:
                leaves.append(part_t.remote(fs, leaf, lam, seed + len(leaves), head_vectors,
                                            head_file(len(leaves))))
                largest = max(largest, rows)
            else:
                splits.append((fs, rows, k, alike))
        models = ray.get([split_t.remote(fs, k, lam, (seed, level, i), train_rows)
                          for i, (fs, _, k, alike) in enumerate(splits) if not alike])
        models.reverse()
        models = [{"C": None, "k": k, "rows": 0, "rss": 0} if alike
                  else models.pop() for _, _, k, alike in splits]
        routed = [[route_t.remote(path, m, os.path.join(folder, f"l{level}-{i}-{j}"))
                   for j, (path, _) in enumerate(fs)]
                  for i, ((fs, _, _, _), m) in enumerate(zip(splits, models, strict=True))]
        todo = []
        for (_, rows, k, _), m, refs in zip(splits, models, routed, strict=True):
            outs = ray.get(refs)
            rss += [m["rss"]] + [o["rss"] for o in outs]
            drawn = max(drawn, m["rows"])
            for g in range(int(m["k"])):
                fs = [o["parts"][g] for o in outs if o["parts"][g] is not None]
                n = sum(x for _, x in fs)
                if n == rows:  # no progress (the rows are all alike): cut them arbitrarily
                    todo.append((fs, n, k, True))
                    alike_cuts += 1
                elif n:
                    todo.append((fs, n, ways(n), False))
        level += 1
    res = ray.get(leaves)  # in the order of ``leaves``: the heads' order (list ids)
    rss += [r["rss"] for r in res]
    head_files = [(r["file"], r["heads"]) for r in res]
    g = ray.get(ray.remote(num_cpus=1)(_gather_heads_task).remote(head_files, heads_path))
    _remove_files(head_files)  # only now: a retried gather task reads them again
    rss.append(g["rss"])
    return {"heads": int(g["heads"]), "parts": len(res), "levels": level,
            "largest_part_rows": largest, "largest_split_sample": drawn,
            "alike_cuts": alike_cuts, "train_rows": train_rows,
            "worker_peak_rss": max(rss, default=0)}


# -- stage 2: map -------------------------------------------------------------------------------
class _SstSink:
    """A lazily opened ``SstFileWriter`` (a task that has no ACLs writes no ACL file). With
    ``family`` the file is written with that column family's options in the engine (no
    compression for vectors/postings, whose float bytes do not compress: snappy only cost CPU;
    bloom filters where the engine keeps them)."""

    def __init__(self, path: str, family: str) -> None:
        self.path = path
        self.family = family
        self.w = None
        self.n = 0

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        if self.w is None:
            import rocksdict

            from vecdb.storage.rocks import _cf_options

            self.w = rocksdict.SstFileWriter(options=_cf_options(self.family, None, False))
            self.w.open(self.path)
        w = self.w
        for k, v in zip(keys, values, strict=True):
            w[k] = v
        self.n += len(keys)

    def finish(self) -> str | None:
        if self.w is None:
            return None
        self.w.finish()
        return self.path


def write_engine_rows(sst: dict[str, _SstSink], b: Any, X: np.ndarray, slots: np.ndarray,
                      tenant_ids: dict[str, int], tenant: str, id_start: int,
                      maps: str | None = None) -> np.ndarray | None:
    """One batch's engine rows into the task's ``vectors``/``acl``/``payload`` SST sinks (keys =
    global slots, values in the engine's codec; ``X`` the prepared vectors). Shared by every bulk
    build (SPANN, Curator). ``maps``: also save the rows' (slot, id, owner) there (``MAP_DTYPE``,
    slot order), so the import rebuilds the engine maps from 20 B per row instead of decoding
    every vector. Returns the batch's ids when they came from the source (to check
    uniqueness across shards), None when generated (``id_start`` + slot: unique by
    construction)."""
    from vecdb.engine import codec

    ids = b.ids if b.ids is not None else (id_start + slots).astype(np.uint64)
    owners = np.full(len(b), tenant_ids[tenant] if b.tenants is None else 0, np.int32)
    if b.tenants is not None:
        owners = np.array([tenant_ids[t] for t in b.tenants], dtype=np.int32)
    keys = codec.be_keys(slots)
    sst["vectors"].put_many(keys, codec.pack_vectors(ids, owners, X))
    if maps is not None:
        m = np.empty(len(slots), dtype=MAP_DTYPE)
        m["slot"], m["id"], m["owner"] = slots, ids, owners
        np.save(maps, m)
    if b.acl is not None:
        ak, av = [], []
        for i, (key, lst) in enumerate(zip(keys, b.acl, strict=True)):
            g = sorted({tenant_ids[t] for t in lst} - {int(owners[i])})
            if g:
                ak.append(key)
                av.append(np.array(g, dtype="<i4").tobytes())
        if ak:
            sst["acl"].put_many(ak, av)
    if b.payloads is not None:
        pk = [key for key, p in zip(keys, b.payloads, strict=True) if p is not None]
        pv = [json.dumps(p, separators=(",", ":")).encode() for p in b.payloads
              if p is not None]
        if pk:
            sst["payload"].put_many(pk, pv)
    return b.ids


ID_SAMPLE = 64  # ids per batch the driver keeps to cut the id space (check_unique_ids)


def save_ids(ids: np.ndarray | None, folder: str, tag: str) -> dict[str, Any]:
    """A map batch's part of the duplicate-id check (every bulk build): its sorted unique source
    ids go to ``folder/ids-<tag>.npy`` (``check_unique_ids`` reads them back in id ranges); the
    result carries the file, ``ID_SAMPLE`` evenly spaced ids (to cut the id space) and the ids
    the batch itself repeats. Nothing when ids are generated (unique by construction)."""
    if ids is None or not len(ids):
        return {}
    u, c = np.unique(np.asarray(ids, dtype=np.uint64), return_counts=True)
    path = os.path.join(folder, f"ids-{tag}.npy")
    np.save(path, u)
    pick = np.linspace(0, len(u) - 1, min(len(u), ID_SAMPLE)).astype(np.int64)
    return {"ids_file": path, "ids_rows": int(len(u)), "ids_sample": u[pick],
            "ids_dup": u[c > 1][:5]}


def _id_range_task(files: list[str], lo: int | None, hi: int | None) -> dict[str, Any]:
    """The ids in [lo, hi) (None: unbounded) of every batch's sorted id file, found by binary
    search on the memory-mapped files: the first repeated ones and how many repeat."""
    reset_peak_rss()
    parts = []
    for f in files:
        a = np.load(f, mmap_mode="r")
        i = 0 if lo is None else int(np.searchsorted(a, np.uint64(lo)))
        j = len(a) if hi is None else int(np.searchsorted(a, np.uint64(hi)))
        if j > i:
            parts.append(np.array(a[i:j]))
        del a
    x = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    del parts
    x.sort()
    rep = np.unique(x[1:][x[1:] == x[:-1]])
    return {"dups": rep[:5], "n_dups": int(len(rep)), "rows": int(len(x)), "rss": _rss()}


def check_unique_ids(res: list[dict[str, Any]], memory_bytes: int = 256 << 20,
                     tasks: int | None = None) -> dict[str, Any]:
    """InvalidArgument if the source ids of the map results (``save_ids``: each batch's sorted
    unique ids in a file) repeat within a batch or across batches and shards. Shared by every
    bulk build. Ray tasks each check one id range across all the files (range bounds from the
    batches' id samples; at least ``tasks``, default the cluster's CPUs, and enough that a
    range's ids fit ``memory_bytes``): the driver holds ``ID_SAMPLE`` ids per batch, not 8 B
    per id. Returns what it did (tasks, ids, the tasks' peak RSS)."""
    import ray

    files = [r["ids_file"] for r in res if r.get("ids_file")]
    info: dict[str, Any] = {"ids": sum(r.get("ids_rows", 0) for r in res), "tasks": 0,
                            "worker_peak_rss": 0}
    inside = [r["ids_dup"] for r in res if len(r.get("ids_dup", ()))]
    dups = np.unique(np.concatenate(inside)) if inside else np.zeros(0, np.uint64)
    if files and not len(dups):
        # ~3 x 8 B per id in a task (the slices, their concatenation, the comparison)
        k = max(tasks or int(ray.cluster_resources().get("CPU", 1)),
                -(-info["ids"] * 24 // max(1, memory_bytes)))
        sample = np.sort(np.concatenate([r["ids_sample"] for r in res if r.get("ids_file")]))
        cuts = np.unique(sample[(np.arange(1, k) * len(sample)) // k]).tolist() if k > 1 else []
        bounds = [None, *cuts, None]
        t = ray.remote(num_cpus=1)(_id_range_task)
        out = ray.get([t.remote(files, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                  strict=True)])
        info.update(tasks=len(out), worker_peak_rss=max(o["rss"] for o in out))
        assert sum(o["rows"] for o in out) == info["ids"]  # the ranges cover every id once
        found = [o["dups"] for o in out if o["n_dups"]]
        dups = np.concatenate(found) if found else dups
    if len(dups):
        raise InvalidArgument(f"duplicate ids across shards (first: {np.sort(dups)[:5].tolist()})"
                              f"; bulk build needs unique ids")
    return info


MEMORY_EVERY_S = 5.0  # seconds between a map worker's memory_now() readings (first batch: always)
# this process's last reading (time.perf_counter) in the current build: reset by map_heads when it
# loads a new build's heads (Ray reuses workers across builds: a build starting within
# MEMORY_EVERY_S of the previous one's last reading would otherwise get none on this worker)
_MEM_AT = [-float("inf")]
_HEADS: dict[tuple, tuple[np.ndarray, HeadSearch]] = {}


def map_heads(out: str, metric: str, graph_path: str | None, search_ef: int,
              groups_path: str | None) -> tuple[np.ndarray, HeadSearch]:
    """The heads (``out/heads.npy``, memory-mapped: one copy in the page cache for all the
    workers of a machine) and their ``HeadSearch``, loaded once per worker process and build
    (keyed by the heads file's identity; the previous build's are dropped)."""
    from vecdb.kernels import metric_code

    path = os.path.join(out, "heads.npy")
    st = os.stat(path)
    key = (path, st.st_ino, st.st_mtime_ns, metric, graph_path, search_ef, groups_path)
    if key not in _HEADS:
        _HEADS.clear()
        _MEM_AT[0] = -float("inf")  # a new build: its first batch here reads the memory
        heads = np.load(path, mmap_mode="r")
        _HEADS[key] = (heads, HeadSearch(heads, metric_code(metric), graph_path, search_ef,
                                         groups_path))
    return _HEADS[key]


def _sorted_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_counts=True)`` of an already sorted ``a`` without sorting it again
    (a run is sorted by list id): the values where a run of equal values starts, and the runs'
    lengths."""
    if not len(a):
        return a[:0].copy(), np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))
    return a[start], np.diff(np.append(start, len(a))).astype(np.int64)


def _save_hist(path: str, lid: np.ndarray, sec: np.ndarray) -> int:
    """Write a sorted run's sparse list histogram to ``path`` as one (3, k) int32 array: list
    id, records, primary (nearest-list) records per list present. The map batch returns the path,
    not the arrays, so its result stays a few KB (under Ray's inline limit, never in the object
    store the driver maps). Returns k."""
    ids, n = _sorted_counts(lid)
    h = np.empty((3, len(ids)), dtype=np.int32)
    h[0], h[1] = ids, n
    h[2] = np.add.reduceat((sec == 0).astype(np.int32), np.cumsum(n) - n) if len(n) else 0
    np.save(path, h)
    return len(ids)


def _fold_hist(path: str, *totals: np.ndarray) -> None:
    """Add a batch's histogram file (row 0 the ids, row ``i + 1`` the counts for ``totals[i]``:
    ``_save_hist``'s lists, the Curator route's leaves) into the driver's totals and delete it
    (a retried batch rewrites it under the same name; leftovers go with their folder)."""
    h = np.load(path)
    for i, total in enumerate(totals):
        np.add.at(total, h[0], h[i + 1])
    os.unlink(path)


def _map_block(piece: Any, *, offsets: list[int], dim: int, metric: str, cfg: dict[str, Any],
               tenant_ids: dict[str, int], tenant: str, id_start: int, out: str,
               graph_path: str | None, search_ef: int,
               groups_path: str | None = None) -> dict[str, Any]:
    """The map stage's Ray Data function, on one batch of one shard (``dataset.Piece``): engine
    rows (vectors/acl/payload SSTs), the prepared vectors (a .npy the reduce gathers from) and
    the batch's run of list assignments sorted by list id. Every file is named after the shard
    number and the batch's first good row, so a retried task rewrites the same files. Returns
    small metadata (a few KB: paths, counts, source ids); the batch's sparse list histogram goes
    to ``runs/hist-<tag>.npy`` (``_save_hist``), which the driver folds in and deletes."""
    from vecdb import _spann
    from vecdb.kernels import metric_code, prepare

    t0 = time.perf_counter()
    b = piece.batch
    split = {"read": 0.0, "engine_rows": 0.0, "search": 0.0, "search_cpu": 0.0, "rng": 0.0,
             "memory": 0.0, "runs": 0.0}
    res: dict[str, Any] = {"shard": b.shard, "index": piece.shard, "good": len(b),
                           "errors": piece.errors, "runs": [], "sst": {}, "split": split}
    if piece.failed or not len(b):
        res.update(good=0, rss=_rss(), seconds=time.perf_counter() - t0)
        if piece.failed:
            res["failed"] = piece.failed
        return res
    code = metric_code(metric)
    heads, search = map_heads(out, metric, graph_path, search_ef, groups_path)
    C = min(cfg["candidates"], len(heads))
    X = prepare(b.vectors, dim, metric)
    lo, hi = int(b.rows[0]), int(b.rows[-1]) + 1
    tag = f"{piece.shard:06d}-{lo:012d}"
    t2 = time.perf_counter()
    split["read"] += t2 - t0
    slots = offsets[piece.shard] + b.rows
    sst = {f: _SstSink(os.path.join(out, "sst", f"{f}-{tag}.sst"), f)
           for f in ("vectors", "acl", "payload")}
    maps = os.path.join(out, "sst", f"maps-{tag}.npy")
    ids = write_engine_rows(sst, b, X, slots, tenant_ids, tenant, id_start, maps)
    vec_path = os.path.join(out, "vecs", f"vec-{tag}.npy")
    # one write of the batch (np.save): a fresh memmap cost a page fault per 4 KiB and flush() an
    # msync, ~4x the CPU (13 vs 3 ms per 20k x 128 batch); the reduce reads it back through the
    # page cache either way. Bad rows (gaps in b.rows) stay zero rows.
    if len(b.rows) == hi - lo:
        np.save(vec_path, np.ascontiguousarray(X, dtype=np.float32))
    else:
        V = np.zeros((hi - lo, dim), dtype=np.float32)
        V[b.rows - lo] = X
        np.save(vec_path, V)
        del V
    t3 = time.perf_counter()
    split["engine_rows"] += t3 - t2
    p3 = time.thread_time()  # CPU next to wall: a loaded machine doubles the wall splits
    cand, cdist = search.search(X, C)
    t4 = time.perf_counter()
    split["search"] += t4 - t3
    split["search_cpu"] += time.thread_time() - p3
    keep = np.zeros(cand.shape, dtype=bool)
    _spann.rng_select_heads(None, np.ascontiguousarray(heads, np.float32),
                            np.ascontiguousarray(cand, np.int64),
                            np.ascontiguousarray(cdist, np.float32),
                            int(cfg["replica_count"]), float(cfg["eps1"]), code,
                            keep.view(np.uint8))
    t5 = time.perf_counter()
    split["rng"] += t5 - t4
    # the worker's memory with the batch's search buffers, candidates and heads in use: on a
    # worker's first batch of a build and then at most every MEMORY_EVERY_S (smaps_rollup walks the
    # page tables of every mapping, heads and object store included: 9 ms a batch at 3M)
    mem = None
    if t5 - _MEM_AT[0] >= MEMORY_EVERY_S:
        mem, _MEM_AT[0] = memory_now(), t5
    t6 = time.perf_counter()
    split["memory"] += t6 - t5
    pts, cols = np.nonzero(keep)
    lid = cand[pts, cols].astype(np.int32)
    order = np.argsort(lid, kind="stable")
    run = np.empty(len(pts), dtype=run_dtype())
    run["lid"] = lid[order]
    run["sec"] = (cols > 0)[order]
    run["d"] = cdist[pts, cols][order]
    run["slot"] = slots[pts][order]
    path = os.path.join(out, "runs", f"run-{tag}.npy")
    np.save(path, run)
    hist_path = os.path.join(out, "runs", f"hist-{tag}.npy")
    lists = _save_hist(hist_path, run["lid"], run["sec"])
    split["runs"] += time.perf_counter() - t6
    files = {f: s.finish() for f, s in sst.items()}
    res.update(runs=[path], sst={f: p for f, p in files.items() if p}, maps=maps,
               hist=hist_path, lists=lists,
               vec_file=vec_path, offset=int(offsets[piece.shard] + lo),
               **save_ids(ids, os.path.join(out, "ids"), tag),
               rss=_rss(), seconds=time.perf_counter() - t0)
    if mem is not None:
        res["mem"] = mem
    return res


# -- stage 3: reduce ----------------------------------------------------------------------------
class _Mapped:
    """The run and vector files one reduce task reads, memory-mapped once for all its ranges (a
    range used to re-open and re-map every file: 2 x 520 ``np.load`` per range at 10M, and every
    page it touched faulted again). At most ``limit`` files stay mapped (each holds a file
    descriptor); past that the oldest half are dropped and re-opened on demand.

    The pages a task touched stay mapped until it returns, so its RSS counts them (up to the
    run and vector files' size): they are the page cache's clean, shared pages, not the task's
    own memory, which is its anonymous RSS (bounded by ``memory_bytes``; the reduce reports both).
    Unmapping them after each file or range (MADV_DONTNEED) measured 0.35-0.5 s of CPU per range
    at 3M against 0.15 s mapped (the page faults come back in every range)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 4))
        self.limit = limit
        self.files: dict[str, np.ndarray] = {}

    def __call__(self, path: str) -> np.ndarray:
        a = self.files.get(path)
        if a is None:
            if len(self.files) >= self.limit:
                for k in list(self.files)[: self.limit // 2]:
                    del self.files[k]
            a = self.files[path] = np.load(path, mmap_mode="r")
        return a


def _reduce_task(ranges: list[tuple[int, int, int]], runs: list[str], heads_path: str,
                 dim: int, cap: int, vec_files: list[tuple[int, str]], out: str,
                 split: dict[int, tuple[int, int]] | None = None,
                 balance: float = 1.0, seed: int = 0, limit: int = 0) -> list[dict[str, Any]]:
    """Consecutive list-id ranges ``(lo, hi, number)`` one after another (each bounded by the
    memory budget; their heads read from the memory-mapped ``heads_path``: the driver neither
    reads nor ships them), the run and vector files
    mapped once for all of them (``_Mapped``), each run read from a cursor that only moves
    forward (runs are sorted by list id). Returns ``_reduce_range``'s result per range."""
    reset_peak_rss()
    files = _Mapped()
    cursor = [-1] * len(runs)
    heads = np.load(heads_path, mmap_mode="r")
    out_l = []
    for lo, hi, task in ranges:
        out_l.append(_reduce_range(lo, hi, task, runs, heads[lo:hi], dim, cap,
                                   vec_files, out, files, cursor,
                                   {h: v for h, v in (split or {}).items() if lo <= h < hi},
                                   balance, seed, limit))
    return out_l


def _slice_run(files: _Mapped, path: str, cursor: list[int], r: int, lo: int,
               hi: int) -> np.ndarray | None:
    """Run ``r``'s records of lists [lo, hi) (a copy), found by binary search on the mapped list
    ids from the run's cursor (``np.searchsorted`` on the strided field of a read-only map copies
    the whole column first: O(run) per range, O(ranges x assignments) per stage)."""
    import bisect

    a = files(path)
    lid = a["lid"]
    i = cursor[r]
    if i < 0:
        i = bisect.bisect_left(lid, lo)
    j = bisect.bisect_left(lid, hi, i)
    cursor[r] = j
    return np.array(a[i:j]) if j > i else None


def _list_order(cat: np.ndarray) -> np.ndarray:
    """``np.lexsort((d, sec, lid))`` of run records (by list, nearest-list records first, then by
    distance; stable) as one stable argsort of a 64-bit key: lid (31 bits) | sec | the distance's
    bits mapped to an unsigned order. One sort instead of three passes, ~4x less CPU. -0.0 is
    made +0.0 first (lexsort ties them); NaN distances (never from finite vectors), negative
    list ids or a flag above 1 take lexsort itself."""
    d = cat["d"] + np.float32(0)  # -0.0 -> +0.0
    if len(cat) and (np.isnan(d).any() or int(cat["lid"].min()) < 0
                     or int(cat["sec"].max()) > 1):
        return np.lexsort((cat["d"], cat["sec"], cat["lid"]))
    b = d.view(np.uint32)
    b = np.where(b >> np.uint32(31), ~b, b | np.uint32(0x80000000))
    key = cat["lid"].astype(np.uint64) << np.uint64(33)
    key |= (cat["sec"] != 0).astype(np.uint64) << np.uint64(32)
    key |= b
    return np.argsort(key, kind="stable")


def _reduce_range(lo: int, hi: int, task: int, runs: list[str], heads: np.ndarray, dim: int,
                  cap: int, vec_files: list[tuple[int, str]], out: str, files: _Mapped,
                  cursor: list[int], split: dict[int, tuple[int, int]],
                  balance: float, seed: int, limit: int) -> dict[str, Any]:
    """Lists [lo, hi): gather their assignments from every run, order each list (nearest-list
    records first, then by distance), keep at most ``cap`` records (a vector's nearest list
    always keeps it), gather the vectors from the map tasks' vector files, write the postings
    SSTs (``b"H"`` head, ``b"P"`` packed records; one disjoint key range per range ``task``).

    ``split``: list id -> (first new id, ids reserved) for lists whose nearest-list records
    alone overflow ``limit`` (= posting_limit; hub heads): such a list is replaced by lists of
    at most ``cap`` records each, cut by SPANN's balanced k-means, each
    headed by its member nearest the part's mean (what SPANN's online split does, done once
    here instead of as a cascade of splits on the first appends). Their keys go to separate
    files (new ids lie outside [lo, hi))."""
    from vecdb.engine import codec
    from vecdb.index._spann_parts import balanced_kmeans, nearest_member, record_dtype

    t0 = time.perf_counter()
    c0 = time.thread_time()
    tm, tc = {}, {}

    def lap(name: str, w: float, c: float) -> tuple[float, float]:
        tm[name] = time.perf_counter() - w
        tc[name] = time.thread_time() - c
        return time.perf_counter(), time.thread_time()

    parts = [p for r, path in enumerate(runs)
             if (p := _slice_run(files, path, cursor, r, lo, hi)) is not None]
    cat = np.concatenate(parts) if parts else np.zeros(0, dtype=run_dtype())
    lens = [len(p) for p in parts]
    del parts
    t1, c1 = lap("load_runs", t0, c0)
    # order and cap as a permutation of ``cat`` (not a sorted copy): ``cat`` stays grouped by
    # run, i.e. by map batch, i.e. by vector file, which the gather below reads one file at a time
    perm = _list_order(cat)
    rows = len(cat)
    # the cap, vectorised: rank of each record inside its list vs max(primaries, cap)
    lid = cat["lid"][perm].astype(np.int64) - lo
    size = np.bincount(lid, minlength=hi - lo)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    primary = np.bincount(lid, weights=(cat["sec"][perm] == 0),
                          minlength=hi - lo).astype(np.int64)
    rank = np.arange(len(cat)) - np.repeat(start, size)
    keep = rank < np.repeat(np.maximum(primary, cap), size)
    perm = perm[keep]
    dropped = rows - len(perm)
    size = np.bincount(lid[keep], minlength=hi - lo)
    bounds = np.concatenate([[0], np.cumsum(size)])
    del lid, rank, keep
    t1, c1 = lap("sort_cap", t1, c1)
    # vectors: gathered from the memory-mapped vector file of the map task that read each slot,
    # only for the kept records, one vectorised take per run slice (each run is one map batch,
    # whose slots lie in one vector file; a run that crosses files falls back to one take per
    # file). Was: an argsort of the kept slots to group them by file (O(n log n) per range).
    n = len(perm)
    rec = np.zeros(n, dtype=record_dtype(dim))
    slot = cat["slot"]
    rec["slot"] = slot[perm]
    rec["ver"] = 1
    at = np.full(rows, -1, dtype=np.int64)  # output position of each record of ``cat``
    at[perm] = np.arange(n)
    offs = np.array([o for o, _ in vec_files], dtype=np.int64)
    vec = rec["vec"]
    e = 0
    for ln in lens:
        s0, e = e, e + ln
        o = at[s0:e]
        k = o >= 0
        if not k.any():
            continue
        o, sl = o[k], slot[s0:e][k]
        f0 = int(np.searchsorted(offs, sl[0], side="right")) - 1
        src = files(vec_files[f0][1])
        r = sl - offs[f0]
        if r.min() >= 0 and r.max() < len(src) and (f0 + 1 == len(offs)
                                                    or sl.max() < offs[f0 + 1]):
            vec[o] = src[r]
            continue
        fi = np.searchsorted(offs, sl, side="right") - 1
        if fi.min() < 0:  # vec_files[-1] with negative rows: wrong vectors, silently
            raise RuntimeError(f"reduce lists [{lo}, {hi}): slot {int(sl[fi < 0].min())} lies "
                               f"below the first vector file (offset {int(offs[0])})")
        for t in np.unique(fi).tolist():
            m = fi == t
            src, r = files(vec_files[t][1]), sl[m] - offs[t]
            if r.max() >= len(src):  # a slot past this file's rows (the last file's, or a gap)
                raise RuntimeError(f"reduce lists [{lo}, {hi}): slot {int(sl[m].max())} lies "
                                   f"past the vector file {vec_files[t][1]} (rows "
                                   f"{int(offs[t])}..{int(offs[t]) + len(src) - 1})")
            vec[o[m]] = src[r]
    del cat, slot, at, perm, vec
    anon = anon_rss()
    t1, c1 = lap("gather", t1, c1)
    new_ids: list[int] = []
    new_vecs: list[np.ndarray] = []
    new_sizes: list[int] = []
    nk, nv, mk, mv = [], [], [], []
    for h in sorted(split):
        first, reserved = split[h]
        part = rec[int(bounds[h - lo]): int(bounds[h - lo + 1])]
        whole = part.view(np.dtype((np.void, rec.itemsize)))
        V = np.ascontiguousarray(part["vec"])
        rng = np.random.default_rng((seed, h))
        # balanced k-means into ~cap-sized parts; a part still over cap is cut again (k-means
        # balance is approximate), within the ids reserved for this list: every part keeps
        # the fill factor's room for appends
        todo, done = [np.arange(len(part))], []
        while todo:
            m = todo.pop()
            k = -(-len(m) // cap)
            if len(m) <= cap or len(done) + len(todo) + k > reserved:
                done.append(m)
                continue
            lab = balanced_kmeans(V[m], k, balance, rng)
            pieces = [m[lab == j] for j in range(k)]
            pieces = [x for x in pieces if len(x)]
            if len(pieces) == 1:  # identical vectors: cut arbitrarily
                pieces = np.array_split(m, k)
            todo.extend(pieces)
        for j, members in enumerate(sorted(done, key=lambda x: int(x[0]))):
            nid = first + j
            key = int(nid).to_bytes(8, "big")
            head = V[nearest_member(V, members)]
            nk.append(b"H" + key)
            nv.append(head.tobytes())
            mk.append(b"P" + key)
            mv.append(whole[members].tobytes())  # whole records: pad bytes zero, not garbage
            new_ids.append(nid)
            new_vecs.append(head)
            new_sizes.append(len(members))
    t1, c1 = lap("hub_split", t1, c1)
    hw = _SstSink(os.path.join(out, "sst", f"postings-H-{task:06d}.sst"), "postings")
    pw = _SstSink(os.path.join(out, "sst", f"postings-P-{task:06d}.sst"), "postings")
    written = []
    if nk:  # the parts of split lists: keys above every original id, ascending
        hn = _SstSink(os.path.join(out, "sst", f"postings-HS-{task:06d}.sst"), "postings")
        pn = _SstSink(os.path.join(out, "sst", f"postings-PS-{task:06d}.sst"), "postings")
        hn.put_many(nk, nv)
        pn.put_many(mk, mv)
        written += [hn.finish(), pn.finish()]
        del nk, nv, mk, mv
    # each list's records straight from the record array: one copy per list into the bytes the
    # writer takes (was: the whole array to one bytes object, then a slice copy of it per list);
    # keys, heads and list bounds made per 4096 lists in bulk (a memory-mapped head row and an
    # int() per bound cost more than the copies at ~25 records per list)
    cuts = bounds.tolist()
    raw = memoryview(rec.view(np.uint8)) if len(rec) else memoryview(b"")
    isz = rec.itemsize
    hsz = heads.shape[1] * heads.dtype.itemsize
    for c in range(lo, hi, 4096):
        e = min(hi, c + 4096)
        keys = codec.be_keys(np.arange(c, e, dtype=np.int64))
        hbuf = np.ascontiguousarray(heads[c - lo:e - lo]).tobytes()
        todo = range(e - c) if not split else [i for i in range(e - c) if c + i not in split]
        hk = [b"H" + keys[i] for i in todo]
        hv = [hbuf[i * hsz:(i + 1) * hsz] for i in todo]
        pk = [b"P" + keys[i] for i in todo]
        pv = [bytes(raw[cuts[c - lo + i] * isz:cuts[c - lo + i + 1] * isz]) for i in todo]
        if pk:
            anon = max(anon, anon_rss())
            hw.put_many(hk, hv)
            pw.put_many(pk, pv)
        del hk, hv, pk, pv, hbuf
    del raw
    del rec
    sizes = size.astype(np.int64)
    sizes[[h - lo for h in split]] = -1  # replaced by their parts
    res = {"files": [f for f in (hw.finish(), pw.finish(), *written) if f],
           "records": int(bounds[-1]), "lo": lo, "sizes": sizes,
           "new_ids": np.array(new_ids, dtype=np.int64), "new_sizes": np.array(new_sizes),
           "new_heads": np.array(new_vecs, dtype=np.float32).reshape(-1, dim),
           "dropped": int(dropped), "rows": int(rows), "rss": _rss(), "rss_anon": anon,
           "seconds": time.perf_counter() - t0}
    lap("write_sst", t1, c1)
    res["split"], res["split_cpu"] = tm, tc
    return res


def _ranges(hist: np.ndarray, max_rows: int, min_ranges: int) -> list[tuple[int, int]]:
    """Cut list ids [0, H) into contiguous ranges of at most ``max_rows`` assignments each
    (a single list bigger than that is its own range) and at least ``min_ranges`` ranges."""
    H = len(hist)
    target = max(1, min(max_rows, int(np.ceil(hist.sum() / max(1, min_ranges)))))
    out, lo, acc = [], 0, 0
    for h in range(H):
        if acc and acc + hist[h] > target:
            out.append((lo, h))
            lo, acc = h, 0
        acc += int(hist[h])
    out.append((lo, H))
    return out


def _groups(hist: np.ndarray, ranges: list[tuple[int, int]], tasks: int
            ) -> list[list[tuple[int, int, int]]]:
    """``ranges`` numbered and cut into at most ``tasks`` runs of consecutive ranges with about
    the same number of assignments each (one reduce task per run)."""
    rows = np.array([int(hist[lo:hi].sum()) for lo, hi in ranges], dtype=np.int64)
    ends = np.cumsum(rows)
    tasks = max(1, min(tasks, len(ranges)))
    cut = np.searchsorted(ends, ends[-1] * np.arange(1, tasks) / tasks, side="right")
    cut = np.unique(np.concatenate([[0], cut, [len(ranges)]]))
    numbered = [(lo, hi, i) for i, (lo, hi) in enumerate(ranges)]
    return [numbered[a:b] for a, b in zip(cut[:-1], cut[1:], strict=True) if b > a]


def _reduce_group_task(ranges: list[tuple[int, int, int]], runs: list[str], heads_path: str,
                       dim: int, cap: int, vec_files: list[tuple[int, str]], out: str,
                       split: dict[int, tuple[int, int]] | None, balance: float, seed: int,
                       limit: int, new_heads_path: str
                       ) -> tuple[list[dict[str, Any]], str | None]:
    """``_reduce_task`` for the driver: the split hub lists' new heads (the ranges' ``new_heads``,
    in range order, as their ``new_ids``) go to ``new_heads_path`` (None when there are none)
    instead of back to the driver, which gets sizes, ids and file names only."""
    res = _reduce_task(ranges, runs, heads_path, dim, cap, vec_files, out, split, balance,
                       seed, limit)
    new = [r.pop("new_heads") for r in res]
    if not sum(len(x) for x in new):
        return res, None
    np.save(new_heads_path, np.concatenate(new).astype(np.float32, copy=False))
    return res, new_heads_path


# -- the driver ---------------------------------------------------------------------------------
def bulk_build_spann(source: str | Sequence[str], out: str, *, dim: int | None = None,
                     metric: str = "l2", tenant: str = "default", id_start: int = 0,
                     params: dict[str, Any] | None = None, columns: Columns = DEFAULT_COLUMNS,
                     sample_rows: int | None = None, batch_rows: int = 20_000,
                     memory_bytes: int = 256 << 20, reduce_tasks: int | None = None,
                     ray_address: str | None = None, num_cpus: int | None = None,
                     fill: float | None = None, search_ef: int | None = None,
                     split_hubs: bool = True, head_vectors: str = "member",
                     head_search: str = "groups", probes: int = 8,
                     train_rows: int = TRAIN_ROWS, progress: bool = True) -> dict[str, Any]:
    """Build a SPANN collection's files from ``source`` into folder ``out`` (see module doc).

    ``params``: SPANN creation knobs (head_ratio, replica_count, posting_limit, eps1, candidates,
    balance, head_index, ...), the same as ``create_collection(index="spann", params=...)``.
    Slots are global row numbers; ids the Parquet id column or ``id_start`` + row number; owner
    the Parquet tenant column or ``tenant``. ``memory_bytes`` bounds a reduce task's rows;
    ``batch_rows`` a map task's batch; ``sample_rows`` the training sample (it should hold at
    least ``2 x head_ratio x rows`` vectors, else there are fewer heads than SPANN would make;
    it stays in files under ``out``); ``train_rows`` the sample rows any one process holds to
    train heads (``train_heads_file``: bigger parts are split further).
    ``fill``: lists are capped at ``fill x posting_limit`` records (a vector's nearest list
    always keeps it), leaving room for online appends before the first split; default the
    collection's ``build_fill`` (SPANN's own build cap, 0.8 unless ``params`` says otherwise).
    ``head_search``: how the map tasks find each vector's candidate heads when SPANN would
    index the heads with a graph (more than 4096 heads; fewer are scanned exactly): ``"groups"``
    (default; ``HeadGroups``: batched GEMMs over the ``probes`` nearest groups of heads,
    near-exact: at 235k heads probes 8 found the exact nearest head of 96% of vectors, 6 of 94%,
    at the same cost, bench/results/heads.json) or ``"graph"`` (the head HNSW with beam
    ``search_ef``, default the collection's ``head_ef``, as SPANN's own build).
    ``head_vectors``: ``"member"`` (default; SPANN's nearest-member heads) or ``"centroid"``
    (see ``train_heads_file``).
    ``split_hubs``: lists whose
    nearest-list records alone exceed ``posting_limit`` are split into ``cap``-sized parts with
    new heads before import (see ``_reduce_task``).
    Writes ``out/manifest.json`` (what ``import_bulk`` reads) and returns it.
    """
    import ray

    from vecdb.ingest.online import init_ray
    from vecdb.kernels import check_metric, metric_code

    metric = check_metric(metric)
    params = dict(params or {})
    if fill is not None and (not isinstance(fill, int | float) or not 0 < fill <= 1):
        raise InvalidArgument(f"fill must be in (0, 1], got {fill!r}")
    if search_ef is not None and (not isinstance(search_ef, int) or search_ef < 1):
        raise InvalidArgument(f"search_ef must be a positive int, got {search_ef!r}")
    if head_search not in ("groups", "graph"):
        raise InvalidArgument(f"head_search must be 'groups' or 'graph', got {head_search!r}")
    if not isinstance(probes, int) or probes < 1:
        raise InvalidArgument(f"probes must be a positive int, got {probes!r}")
    if head_vectors not in ("centroid", "member"):
        raise InvalidArgument(f"head_vectors must be 'centroid' or 'member', "
                              f"got {head_vectors!r}")
    if not isinstance(train_rows, int) or train_rows < 1000:
        raise InvalidArgument(f"train_rows must be an int >= 1000, got {train_rows!r}")
    t_start = time.perf_counter()
    files = discover(source)
    shards, rejected = plan(files, columns)
    dim = check_dim(dim, shards)
    cfg = _spann_config(dim, metric, params)
    if fill is None:  # the collection's own build cap (SPANN's build_fill, default 0.8)
        fill = float(cfg.get("build_fill", 0.8))
    fresh_out(out, ("sst", "runs", "vecs", "sample", "ids"))
    init_ray(ray_address, num_cpus)
    stages: dict[str, dict[str, Any]] = {}
    total = sum(s.rows for s in shards)

    def log(msg: str) -> None:
        if progress:
            print(f"bulk: {msg}", flush=True)

    # (1) sample (to files) + heads (Ray tasks write heads.npy; the driver gets counts only)
    t0 = time.perf_counter()
    c0 = cpu.snapshot()
    reset_peak_rss()
    with DriverMemory() as dmem:  # each stage's driver peak split into anon / file / shmem
        if sample_rows is None:
            sample_rows = sample_rows_for(cfg, total)
        p = min(1.0, sample_rows / max(1, total))
        sample_dir = os.path.join(out, "sample")
        sample, n_good, errors, failed, names, sample_rss = sample_stage(
            shards, dim, metric, p, cfg["seed"], batch_rows, columns, rejected, tenant,
            folder=sample_dir)
        n_sample = sum(n for _, n in sample)
        sample_driver_rss = _rss()
        sample_driver_mem = dmem.lap()
        reset_peak_rss()
        t1 = time.perf_counter()
        c1 = cpu.snapshot()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        heads_path = os.path.join(out, "heads.npy")  # every later stage's tasks memory-map it
        train = train_heads_file(sample, n_good, cfg, sample_dir, heads_path,
                                 head_vectors=head_vectors, groups=4 * cpus, train_rows=train_rows)
        shutil.rmtree(sample_dir, ignore_errors=True)
        n_heads = train.pop("heads")  # the driver knows how many heads, never their vectors
        t2 = time.perf_counter()
        # the head graph and the head groups: Ray tasks (in parallel) reading heads.npy, so their
        # build transients (~1-2 KB per head) never sit in the driver
        graph_path = groups_path = None
        index_tasks = {}
        if head_kind(cfg, n_heads) == "hnsw":
            graph_path = os.path.join(out, "heads.hnsw")
            index_tasks["graph"] = ray.remote(num_cpus=1)(_head_graph_task).remote(
                heads_path, metric, cfg, graph_path, cpus)
            if head_search == "groups":  # (a flat head set is scanned exactly)
                groups_path = os.path.join(out, "heads.groups")
                index_tasks["groups"] = ray.remote(num_cpus=1)(_head_groups_task).remote(
                    heads_path, metric_code(metric), group_size(n_heads, probes), probes,
                    cfg["balance"], cfg["seed"], groups_path)
        index_res = {k: ray.get(v) for k, v in index_tasks.items()}
        t3 = time.perf_counter()
        c2 = cpu.snapshot()
        stages["sample"] = {"seconds": t1 - t0, "rows": n_sample, "files": len(sample),
                            "cpu_seconds": cpu.cpu_between(c0, c1),
                            "worker_peak_rss": sample_rss, "driver_peak_rss": sample_driver_rss,
                            "driver_memory": sample_driver_mem}
        stages["heads"] = {"seconds": time.perf_counter() - t1, "heads": int(n_heads),
                           "cluster_seconds": t2 - t1, "index_seconds": t3 - t2,
                           "graph_seconds": index_res.get("graph", {}).get("seconds", 0.0),
                           "groups_seconds": index_res.get("groups", {}).get("seconds", 0.0),
                           "index_task_peak_rss": max((r["rss"] for r in index_res.values()),
                                                      default=0),
                           "cpu_seconds": cpu.cpu_between(c1, c2),
                           "driver_peak_rss": _rss(), "driver_memory": dmem.lap(),
                           "heads_bytes": int(n_heads) * dim * 4, **train}
        reset_peak_rss()
        log(f"{n_heads} heads from a {stages['sample']['rows']}-row sample "
            f"({stages['sample']['seconds'] + stages['heads']['seconds']:.1f}s)")
        tenant_ids = {t: i for i, t in enumerate(sorted(names))}

        # (2) map: assign + vectors/acl/payload SSTs + runs
        t0 = time.perf_counter()
        c0 = cpu.snapshot()
        todo = [s for s in shards if s.path not in failed]
        hist = np.zeros(n_heads, dtype=np.int64)
        prim = np.zeros(n_heads, dtype=np.int64)

        agg: dict[str, Any] = {"split": {}, "seconds": 0.0, "rss": 0, "mem": {}}

        def fold(r: dict[str, Any]) -> dict[str, Any]:
            """Add a batch's list-size counts and its timings/memory to the totals as it arrives
            (the driver keeps O(H), not one sparse histogram per batch) and keep only what later
            steps read (file names, counts, the id-check sample: ~1-2 KB per batch)."""
            if "hist" in r:  # empty and failed batches have none
                _fold_hist(r.pop("hist"), hist, prim)
            for k, v in r.pop("split").items():
                agg["split"][k] = agg["split"].get(k, 0.0) + v
            agg["seconds"] += r.pop("seconds")
            agg["rss"] = max(agg["rss"], r.pop("rss"))
            # the worker memory sampled after the search (a worker's first batch of a build,
            # then every MEMORY_EVERY_S)
            for k, v in r.pop("mem", {}).items():
                agg["mem"][k] = max(agg["mem"].get(k, 0), v)
            return r

        res, rd = map_shards(todo, dim, _map_block, {
            "offsets": [s.offset for s in todo], "dim": dim, "metric": metric, "cfg": cfg,
            "tenant_ids": tenant_ids, "tenant": tenant, "id_start": id_start, "out": out,
            "graph_path": graph_path, "search_ef": search_ef or cfg["head_ef"],
            "groups_path": groups_path}, batch_rows=batch_rows, columns=columns, on_result=fold)
        res.sort(key=lambda r: r.get("offset", -1))  # key order of the SST files
        runs, sst = [], {f: [] for f in FAMILIES}
        maps = [r["maps"] for r in res if "maps" in r]
        rows = 0
        for r in res:
            if "failed" in r:  # unreadable now though it sampled: reported like the Curator build
                errors += r["errors"][-1:]
                continue
            runs += r["runs"]
            rows += r["good"]
            for f, path in r["sst"].items():
                sst[f].append(path)
        ids_check = check_unique_ids(res, memory_bytes)
        shutil.rmtree(os.path.join(out, "ids"), ignore_errors=True)
        vec_files = sorted((r["offset"], r["vec_file"]) for r in res if "vec_file" in r)
        stages["map"] = {"seconds": time.perf_counter() - t0, "rows": rows,
                         "cpu_seconds": cpu.cpu_between(c0, cpu.snapshot()),
                         "assignments": int(hist.sum()), "tasks": len(todo), "batches": len(res),
                         "task_seconds": agg["seconds"], "task_split": agg["split"],
                         "worker_peak_rss": agg["rss"],
                         # the worker memory sampled after the search (a worker's first batch
                         # of a build, then every MEMORY_EVERY_S): largest per field
                         "worker_memory": agg["mem"],
                         "ray_data": {"operators": rd["operators"], "fused": rd["fused"]},
                         "id_check": ids_check}
        log(f"map: {rows} rows -> {int(hist.sum())} assignments in {len(runs)} runs "
            f"({stages['map']['seconds']:.1f}s)")
        del res

        # (3) reduce: group by list id, cap, postings SSTs
        stages["map"]["driver_peak_rss"] = _rss()
        stages["map"]["driver_memory"] = dmem.lap()
        reset_peak_rss()
        t0 = time.perf_counter()
        c0 = cpu.snapshot()
        # per assignment: the run slice, its sorted copy, the mask; the record and its bytes
        rowbytes = run_dtype().itemsize * 3 + 2 * (12 + 4 * dim)
        cap = max(1, int(fill * cfg["posting_limit"]))
        ranges = _ranges(hist, max(1, memory_bytes // rowbytes), reduce_tasks or max(2, cpus))
        # hub lists: more nearest-list records than posting_limit -> split into ~cap-sized parts
        over = np.flatnonzero(prim > cfg["posting_limit"]) if split_hubs else np.zeros(0, np.int64)
        parts = 4 * (-(-prim[over] // cap)) + 4  # ids reserved per hub list (unused ones: gaps)
        first = n_heads + np.cumsum(parts) - parts  # new ids, after every original id
        plan_all = {int(h): (int(f), int(k)) for h, f, k in zip(over, first, parts, strict=True)}
        # consecutive ranges per task (each task maps the files once for all of its ranges)
        groups = _groups(hist, ranges, reduce_tasks or 2 * cpus)
        hist = prim = np.zeros(0, np.int64)  # the per-head counts (16 B/head) end with the plan
        red_t = ray.remote(num_cpus=1)(_reduce_group_task)
        res, added = [], []  # added: the files of the split hub lists' new heads (one per task)
        for rs, f in ray.get([
                red_t.remote(g, runs, heads_path, dim, cap, vec_files, out,
                             {h: v for h, v in plan_all.items() if g[0][0] <= h < g[-1][1]},
                             cfg["balance"], cfg["seed"], cfg["posting_limit"],
                             os.path.join(out, "runs", f"new-heads-{i:06d}.npy"))
                for i, g in enumerate(groups)]):
            res += rs
            if f is not None:
                added.append(f)
        del plan_all
        sizes = np.zeros(n_heads, dtype=np.int64)  # records per list: SPANN's list sizes
        new_ids, new_sizes = [], []
        for r in res:
            sst["postings"] += r["files"]
            sizes[r["lo"]:r["lo"] + len(r["sizes"])] = r["sizes"]
            new_ids.append(r["new_ids"])
            new_sizes.append(r["new_sizes"])
            del r["sizes"]  # folded into ``sizes``
        keep_ids = np.flatnonzero(sizes >= 0)
        list_ids = np.concatenate([keep_ids, *new_ids]).astype(np.int64)
        np.save(os.path.join(out, "list_ids.npy"), list_ids)
        n_heads = len(list_ids)
        del list_ids
        sizes = np.concatenate([sizes[keep_ids], *new_sizes]).astype(np.int64)
        del keep_ids
        np.save(os.path.join(out, "list_sizes.npy"), sizes)
        del sizes
        added_ids = np.concatenate(new_ids) if new_ids else np.zeros(0, np.int64)
        t2 = time.perf_counter()
        if head_kind(cfg, n_heads) != "hnsw":
            graph_path = None
        elif graph_path is not None and len(over):  # the head graph of the final heads (a task)
            ray.get(ray.remote(num_cpus=1)(_head_graph_update_task).remote(
                graph_path, over.astype(np.int64), added, added_ids))

        stages["reduce"] = {"seconds": time.perf_counter() - t0, "tasks": len(groups),
                            "ranges": len(ranges),
                            "cpu_seconds": cpu.cpu_between(c0, cpu.snapshot()),
                            "hub_lists_split": int(len(over)), "parts_made": int(len(added_ids)),
                            "graph_update_seconds": time.perf_counter() - t2,
                            "records": sum(r["records"] for r in res),
                            "dropped_by_cap": sum(r["dropped"] for r in res),
                            "max_task_rows": max((r["rows"] for r in res), default=0),
                            "task_split": {k: sum(r["split"][k] for r in res)
                                           for k in (res[0]["split"] if res else {})},
                            "task_split_cpu": {k: sum(r["split_cpu"][k] for r in res)
                                               for k in (res[0]["split_cpu"] if res else {})},
                            "worker_peak_rss": max((r["rss"] for r in res), default=0),
                            # without the mapped run/vector file pages (shared page cache)
                            "worker_peak_rss_anon": max((r["rss_anon"] for r in res), default=0)}
        stages["reduce"]["driver_peak_rss"] = _rss()
        stages["reduce"]["driver_memory"] = dmem.lap()
    log(f"reduce: {stages['reduce']['records']} records in {len(ranges)} ranges, "
        f"{len(groups)} tasks "
        f"({stages['reduce']['seconds']:.1f}s)")
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
    shutil.rmtree(os.path.join(out, "vecs"), ignore_errors=True)
    manifest = {"format": 1, "kind": "spann", "dim": dim, "metric": metric, "params": params,
                "config": cfg, "fill": fill, "cap": cap, "head_search": head_search,
                "probes": probes, "head_vectors": head_vectors,
                "head_graph": os.path.basename(graph_path) if graph_path else None,
                "rows": rows, "slots": total, "heads": int(n_heads),
                "tenants": sorted(tenant_ids, key=tenant_ids.get), "sst": sst, "maps": maps,
                "errors": errors, "stages": stages, "metric_code": metric_code(metric),
                "seconds": time.perf_counter() - t_start,
                "sst_bytes": sum(os.path.getsize(f) for fs in sst.values() for f in fs)}
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


# -- import -------------------------------------------------------------------------------------
def import_bulk(data: str, collection: str, out: str, **options: Any) -> dict[str, Any]:
    """Import the bulk build in folder ``out`` as new collection ``collection`` of the *stopped*
    data folder ``data`` (its lock is taken: a running server makes this FailedPrecondition).

    The engine does the work (``Database.import_sst``): all or nothing, assembled in a temporary
    folder (SST files moved in by ``ingest_external_file``, the engine maps built from the map
    tasks' (slot, id, owner) files, checked against the ``vectors`` family, or without them
    (older builds) from that family, grants from ``acl``; a checkpoint written, reopened and
    counted) and renamed into place. Every per-slot structure is built once, chunk by chunk:
    the driver holds the collection's index state plus bounded chunks. The
    SPANN index is adopted, not rebuilt: its postings and heads are already in the files, and
    the head graph the map tasks searched becomes the collection's saved head graph. A Curator
    build (``manifest["kind"] == "curator"``, ``bulk_curator.bulk_build_curator``) is adopted
    from its trained tree and the map tasks' leaves (``bulk_curator.curator_adopter``).
    ``options``: engine options. Returns {"rows", "seconds", "disk_bytes", "cpu_seconds",
    "driver_peak_rss", "driver_memory", "phases"} (CPU of this process and its children during
    the import; this process's peak RSS during it, and split into anon/file/shmem (each part's
    own peak, ``DriverMemory``); for SPANN, the peak of each phase -- SST ingest + maps scan,
    adopt, checkpoint + reopen -- and the RSS between them).
    """
    import vecdb
    from vecdb.engine.database import check_collection_name
    from vecdb.storage.rocks import folder_bytes

    t0 = time.perf_counter()
    c0 = cpu.snapshot()
    reset_peak_rss()
    dmem: DriverMemory | None = None
    phases: dict[str, int] = {"start_rss": current_rss()}
    check_collection_name(collection)
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            man = json.load(f)
    except OSError as e:
        raise FailedPrecondition(f"{out}: no bulk build manifest ({e})") from None
    db = vecdb.open(data, **options)
    try:
        dmem = DriverMemory()  # closed below however the import ends
        if db.has_collection(collection):
            raise AlreadyExists(f"collection {collection!r} already exists in {data}")
        kind = man.get("kind", "spann")
        if kind == "curator":  # the Curator bulk build (vecdb.ingest.bulk_curator)
            from vecdb.ingest.bulk_curator import curator_adopter

            adopt = curator_adopter(man, out)
        else:
            adopt = spann_adopter(man, out, phases)
        db.import_sst(collection, dim=man["dim"], metric=man["metric"], index=kind,
                      params=man["params"], tenants=man["tenants"],
                      sst={f: man["sst"][f] for f in FAMILIES if man["sst"].get(f)},
                      adopt=adopt, expected_rows=man["rows"], keep_open=False,
                      maps=man.get("maps") or None)
        size = folder_bytes(os.path.join(db.path, "collections", collection))
    finally:
        db.close()
        if dmem is not None:
            dmem.close()
    phases["checkpoint_reopen_peak_rss"] = _rss()
    phases["end_rss"] = current_rss()
    return {"rows": man["rows"], "seconds": time.perf_counter() - t0, "disk_bytes": size,
            "cpu_seconds": cpu.cpu_between(c0, cpu.snapshot()),
            "driver_peak_rss": max(v for k, v in phases.items() if k.endswith("peak_rss")),
            "driver_memory": dmem.lap(), "phases": phases}


def spann_adopter(man: dict[str, Any], bulk_dir: str, phases: dict[str, int] | None = None):
    """The ``adopt`` hook of ``Database.import_sst`` for a bulk build: a ``SPANNIndex`` over
    the ingested postings (heads and lists are read from the store by SPANN's own loader, the
    head graph from the build's file), with every imported slot live at version 1 and the
    tenant bitmaps of the engine's maps. Everything per slot is built once, in its final form,
    chunk by chunk from the engine's slot owners: no whole-N temporary.
    ``phases``: gets the peak RSS before the hook (SST ingest + maps scan) and during it, and the
    RSS after each."""
    def build(store, st):
        from collections.abc import Iterator

        from vecdb.engine.state import CHUNK
        from vecdb.index.acl import AccessLists
        from vecdb.index.spann import _VCHUNK, SPANNIndex
        from vecdb.storage import WriteBatch

        high = st.high
        cap = 1024  # SPANN's slot capacity: a power of two, as its own growth makes it
        while cap < max(high, int(man["slots"])):
            cap *= 2
        own = st.slot_owner

        def live() -> Iterator[np.ndarray]:
            for a in range(0, high, CHUNK):
                yield np.flatnonzero(own[a:min(high, a + CHUNK)] >= 0) + a

        # the index's ACL owner array, filled from the engine's (one tenant per slot, or -2
        # with the slot's list in multi when it has grants), then taken over by the lists
        wide = bool(len(st.owned)) and max(st.owned) > np.iinfo(np.int16).max
        acl_own = np.full(cap, -1, dtype=np.int32 if wide else np.int16)
        for a in range(0, high, CHUNK):
            acl_own[a:min(high, a + CHUNK)] = own[a:min(high, a + CHUNK)]
        ms = np.array(sorted(st.grants), dtype=np.int64)
        lists = [sorted({int(own[x]), *st.grants[x]}) for x in ms.tolist()]
        ms = ms[[len(x) > 1 for x in lists]] if len(ms) else ms
        lists = [x for x in lists if len(x) > 1]
        acl_own[ms] = -2
        indptr = np.zeros(len(ms) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=indptr[1:])
        acl = AccessLists.from_owner(acl_own, ms, indptr,
                                     np.array([t for x in lists for t in x], dtype=np.int32),
                                     cap)
        del acl_own
        # durable versions (SPANN reads them back over the checkpoint's): 1 for live slots,
        # written a few MB at a time
        per = max(1, CHUNK // _VCHUNK)
        for c0 in range(0, (high + _VCHUNK - 1) // _VCHUNK, per):
            b = WriteBatch()
            for c in range(c0, min(c0 + per, (high + _VCHUNK - 1) // _VCHUNK)):
                chunk = np.zeros(_VCHUNK, dtype=np.uint8)
                o = own[c * _VCHUNK:min(high, (c + 1) * _VCHUNK)]
                chunk[: len(o)] = o >= 0
                b.put("postings", b"V" + int(c).to_bytes(8, "big"), chunk.tobytes())
            store.write(b)
        meta = {"kind": "spann", "dim": man["dim"], "metric": man["metric"],
                "config": man["config"], "capacity": cap,
                "head_kind": head_kind(man["config"], man["heads"])}
        arrays: dict[str, Any] = {}
        sizes = os.path.join(bulk_dir, "list_sizes.npy")
        if os.path.exists(sizes):  # SPANN then reads no posting list to learn its size
            arrays["list_sizes"] = np.load(sizes)
            arrays["list_ids"] = np.load(os.path.join(bulk_dir, "list_ids.npy"))
        if man.get("head_graph"):  # the graph the map tasks searched, loaded from its file
            arrays["head_graph"] = os.path.join(bulk_dir, man["head_graph"])
        return SPANNIndex._from_state(meta, arrays, store, live=live(), acl=acl)

    def adopt(store, st):
        if phases is None:
            return build(store, st)
        phases["ingest_scan_peak_rss"] = _rss()
        phases["scan_end_rss"] = current_rss()
        reset_peak_rss()
        idx = build(store, st)
        phases["adopt_peak_rss"] = _rss()
        phases["adopt_end_rss"] = current_rss()
        reset_peak_rss()
        return idx

    return adopt
