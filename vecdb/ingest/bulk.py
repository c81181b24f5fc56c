"""Offline bulk build of a SPANN collection on Ray, written as RocksDB SST files, then imported
atomically into a stopped data folder.

::

    shards --(1) sample tasks--> sample --hierarchical_balanced_clusters--> heads   (driver)
    shards --(2) map tasks (one per shard)-->
               vectors/acl/payload SST (keys = slots, one disjoint range per task)
               runs: (list id, primary?, dist, slot, vector) sorted by list id, one per batch
               histogram of list sizes
    runs --(3) reduce tasks (one per list-id range, sized by the histogram to the memory budget)-->
               postings SST: b"H"+list -> head vector, b"P"+list -> packed records (capped)
    import_bulk: new collection in a temp folder, ingest_external_file per column family,
               engine state + SPANN checkpoint, verify by reopening, rename into place.

The SPANN parts are SPANN's own (``vecdb.index._spann_parts``): the same balanced hierarchical
clustering and nearest-member heads, the same candidate search (``HeadIndex``) and RNG replica rule
(``rng_select``), the same posting cap rule (a vector's nearest list always keeps it) and the same
record format and keys (``b"H"``/``b"P"``/``b"V"`` + list id in the ``postings`` family). The
engine's ``vectors``/``acl``/``payload`` values use the engine's codec. So the imported collection
is exactly what ``SPANNIndex`` + the engine would have written, and it takes online updates
afterwards (splits, merges) like any other SPANN collection.

Memory: every stage streams. A map task holds one batch (``batch_rows``) plus the heads; a reduce
task holds one list-id range whose rows fit ``memory_bytes``; the driver holds the sample
(``sample_rows``), the heads and the histogram. Heads are a sample of ``head_ratio`` x N real
vectors: at 1B vectors that is the one O(N) in-memory piece, as in SPANN itself.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from vecdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument
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
    """Peak RSS of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _heads(dim: int, code: int, cfg: dict[str, Any], H: np.ndarray):
    from vecdb.index._spann_parts import HeadIndex

    kind = cfg["head_index"] if cfg["head_index"] != "auto" else ("hnsw" if len(H) > 4096
                                                                    else "flat")
    h = HeadIndex(dim, code, kind, M=cfg["head_M"], ef=cfg["head_ef"], threads=1,
                  seed=cfg["seed"])
    h.add(np.arange(len(H), dtype=np.int64), H)
    return h


def run_dtype(dim: int) -> np.dtype:
    """One assignment in a run file: list id, not-nearest flag, distance, slot, vector."""
    return np.dtype([("lid", "<i8"), ("sec", "u1"), ("d", "<f4"), ("slot", "<i8"),
                     ("vec", "<f4", (dim,))])


# -- stage 1: sample ----------------------------------------------------------------------------
def _sample_task(shard: Shard, dim: int, metric: str, p: float, seed: int, batch_rows: int,
                 columns: Columns) -> dict[str, Any]:
    from vecdb.kernels import prepare

    rng = np.random.default_rng((seed, shard.offset))
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
    return {"shard": shard.path, "sample": S, "good": good, "errors": errors,
            "tenants": sorted(tenants), "rss": _rss()}


def train_heads(sample: np.ndarray, n_total: int, cfg: dict[str, Any]) -> np.ndarray:
    """Heads [H, dim] from ``sample`` (of ``n_total`` valid rows) with SPANN's build functions:
    balanced hierarchical k-means down to leaves of SPANN's leaf size (``round(1/head_ratio)``)
    scaled by the sampling rate, so H ~ what the serial build makes on all rows; each leaf's
    member nearest its centroid becomes a head."""
    from vecdb.index._spann_parts import hierarchical_balanced_clusters, nearest_member

    if len(sample) == 0:
        raise FailedPrecondition("no valid vectors to train heads on")
    leaf_full = max(2, int(round(1 / cfg["head_ratio"])))
    leaf = max(2, int(round(leaf_full * len(sample) / max(1, n_total))))
    clusters = hierarchical_balanced_clusters(sample, leaf, cfg["balance"], cfg["seed"])
    rows = np.array([nearest_member(sample, c) for c in clusters], dtype=np.int64)
    return np.ascontiguousarray(sample[rows])


# -- stage 2: map -------------------------------------------------------------------------------
class _SstSink:
    """A lazily opened ``SstFileWriter`` (a task that has no ACLs writes no ACL file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.w = None
        self.n = 0

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        if self.w is None:
            import rocksdict

            self.w = rocksdict.SstFileWriter(options=rocksdict.Options(raw_mode=True))
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


def _map_task(shard: Shard, task: int, dim: int, metric: str, heads: np.ndarray,
              cfg: dict[str, Any], tenant_ids: dict[str, int], tenant: str, id_start: int,
              columns: Columns, out: str, batch_rows: int) -> dict[str, Any]:
    from vecdb.engine import codec
    from vecdb.index._spann_parts import rng_select
    from vecdb.kernels import metric_code, prepare

    code = metric_code(metric)
    t0 = time.perf_counter()
    hidx = _heads(dim, code, cfg, heads)
    H = len(heads)
    C = min(cfg["candidates"], H)
    rdt = run_dtype(dim)
    sst = {f: _SstSink(os.path.join(out, "sst", f"{f}-{task:06d}.sst"))
           for f in ("vectors", "acl", "payload")}
    hist = np.zeros(H, dtype=np.int64)
    runs, errors = [], []
    good = 0
    ids_seen: list[np.ndarray] = []
    try:
        for k, b in enumerate(read_batches(shard, dim, batch_rows, 0, columns)):
            errors += b.errors
            if not len(b):
                continue
            X = prepare(b.vectors, dim, metric)
            slots = shard.offset + b.rows
            ids = b.ids if b.ids is not None else (id_start + slots).astype(np.uint64)
            owners = np.full(len(b), tenant_ids[tenant] if b.tenants is None else 0, np.int32)
            if b.tenants is not None:
                owners = np.array([tenant_ids[t] for t in b.tenants], dtype=np.int32)
            keys = codec.be_keys(slots)
            sst["vectors"].put_many(keys, codec.pack_vectors(ids, owners, X))
            ids_seen.append(ids)
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
            good += len(b)
            cand, cdist = hidx.search(X, C)
            keep = rng_select(X, cand, cdist, hidx.vectors, code, cfg["replica_count"],
                              cfg["eps1"])
            pts, cols = np.nonzero(keep)
            run = np.empty(len(pts), dtype=rdt)
            run["lid"] = cand[pts, cols]
            run["sec"] = cols > 0
            run["d"] = cdist[pts, cols]
            run["slot"] = slots[pts]
            run["vec"] = X[pts]
            run = run[np.lexsort((run["d"], run["sec"], run["lid"]))]
            hist += np.bincount(run["lid"], minlength=H)
            path = os.path.join(out, "runs", f"run-{task:06d}-{k:06d}.npy")
            np.save(path, run)
            runs.append(path)
    except ShardError as e:
        errors.append({"file": shard.path, "row": 0, "error": str(e)})
        for s in sst.values():
            s.finish()
        return {"shard": shard.path, "failed": str(e), "errors": errors, "good": 0, "runs": [],
                "hist": np.zeros(H, dtype=np.int64), "sst": {}, "rss": _rss(),
                "seconds": time.perf_counter() - t0, "ids": np.zeros(0, np.uint64)}
    files = {f: s.finish() for f, s in sst.items()}
    return {"shard": shard.path, "good": good, "errors": errors, "runs": runs, "hist": hist,
            "sst": {f: p for f, p in files.items() if p}, "rss": _rss(),
            "seconds": time.perf_counter() - t0,
            "ids": np.unique(np.concatenate(ids_seen)) if ids_seen else np.zeros(0, np.uint64)}


# -- stage 3: reduce ----------------------------------------------------------------------------
def _reduce_task(lo: int, hi: int, task: int, runs: list[str], heads: np.ndarray, dim: int,
                 posting_limit: int, out: str) -> dict[str, Any]:
    from vecdb.index._spann_parts import pack_records, record_dtype

    t0 = time.perf_counter()
    parts = []
    for p in runs:
        a = np.load(p, mmap_mode="r")
        i, j = np.searchsorted(a["lid"], [lo, hi])
        if j > i:
            parts.append(np.array(a[i:j]))
        del a
    rdt = run_dtype(dim)
    cat = np.concatenate(parts) if parts else np.zeros(0, dtype=rdt)
    del parts
    cat = cat[np.lexsort((cat["d"], cat["sec"], cat["lid"]))]
    bounds = np.searchsorted(cat["lid"], np.arange(lo, hi + 1))
    rec = record_dtype(dim)
    kept = dropped = 0
    hw = _SstSink(os.path.join(out, "sst", f"postings-H-{task:06d}.sst"))
    pw = _SstSink(os.path.join(out, "sst", f"postings-P-{task:06d}.sst"))
    hk, hv, pk, pv = [], [], [], []
    for h in range(lo, hi):
        a, b = int(bounds[h - lo]), int(bounds[h - lo + 1])
        sel = cat[a:b]
        if len(sel) > posting_limit:
            primary = int((sel["sec"] == 0).sum())
            n = max(primary, posting_limit)
            dropped += len(sel) - n
            sel = sel[:n]
        kept += len(sel)
        key = int(h).to_bytes(8, "big")
        hk.append(b"H" + key)
        hv.append(heads[h - lo].tobytes())
        pk.append(b"P" + key)
        pv.append(pack_records(rec, sel["slot"], np.ones(len(sel), np.uint8), sel["vec"]))
        if len(pk) >= 4096:
            hw.put_many(hk, hv)
            pw.put_many(pk, pv)
            hk, hv, pk, pv = [], [], [], []
    if pk:
        hw.put_many(hk, hv)
        pw.put_many(pk, pv)
    return {"files": [f for f in (hw.finish(), pw.finish()) if f], "records": kept,
            "dropped": dropped, "rows": int(len(cat)), "rss": _rss(),
            "seconds": time.perf_counter() - t0}


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


# -- the driver ---------------------------------------------------------------------------------
def bulk_build_spann(source: str | Sequence[str], out: str, *, dim: int | None = None,
                     metric: str = "l2", tenant: str = "default", id_start: int = 0,
                     params: dict[str, Any] | None = None, columns: Columns = DEFAULT_COLUMNS,
                     sample_rows: int = 200_000, batch_rows: int = 20_000,
                     memory_bytes: int = 256 << 20, reduce_tasks: int | None = None,
                     ray_address: str | None = None, num_cpus: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Build a SPANN collection's files from ``source`` into folder ``out`` (see module doc).

    ``params``: SPANN creation knobs (head_ratio, replica_count, posting_limit, eps1, candidates,
    balance, head_index, ...), the same as ``create_collection(index="spann", params=...)``.
    Slots are global row numbers; ids the Parquet id column or ``id_start`` + row number; owner
    the Parquet tenant column or ``tenant``. ``memory_bytes`` bounds a reduce task's rows;
    ``batch_rows`` a map task's batch; ``sample_rows`` the training sample.
    Writes ``out/manifest.json`` (what ``import_bulk`` reads) and returns it.
    """
    import ray

    from vecdb.ingest.online import init_ray
    from vecdb.kernels import check_metric, metric_code

    metric = check_metric(metric)
    params = dict(params or {})
    t_start = time.perf_counter()
    files = discover(source)
    shards, rejected = plan(files, columns)
    dim = check_dim(dim, shards)
    cfg = _spann_config(dim, metric, params)
    if os.path.exists(os.path.join(out, "manifest.json")):
        raise AlreadyExists(f"{out} already holds a bulk build (manifest.json); use a new folder")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "sst"))
    os.makedirs(os.path.join(out, "runs"))
    init_ray(ray_address, num_cpus)
    stages: dict[str, dict[str, Any]] = {}
    total = sum(s.rows for s in shards)

    def log(msg: str) -> None:
        if progress:
            print(f"bulk: {msg}", flush=True)

    # (1) sample + heads
    t0 = time.perf_counter()
    p = min(1.0, sample_rows / max(1, total))
    sample_t = ray.remote(num_cpus=1)(_sample_task)
    res = ray.get([sample_t.remote(s, dim, metric, p, cfg["seed"], batch_rows, columns)
                   for s in shards])
    errors = list(rejected)
    failed = set()
    names = {tenant}
    for r in res:
        errors += r["errors"]
        if "failed" in r:
            failed.add(r["shard"])
        else:
            names.update(r["tenants"])
    sample = np.concatenate([r["sample"] for r in res if "sample" in r]) if res else \
        np.zeros((0, dim), np.float32)
    n_good = sum(r.get("good", 0) for r in res)
    t1 = time.perf_counter()
    heads = train_heads(sample, n_good, cfg)
    stages["sample"] = {"seconds": t1 - t0, "rows": int(len(sample)),
                        "worker_peak_rss": max((r.get("rss", 0) for r in res), default=0)}
    stages["heads"] = {"seconds": time.perf_counter() - t1, "heads": int(len(heads)),
                       "driver_peak_rss": _rss()}
    del sample, res
    log(f"{len(heads)} heads from a {stages['sample']['rows']}-row sample "
        f"({stages['sample']['seconds'] + stages['heads']['seconds']:.1f}s)")
    tenant_ids = {t: i for i, t in enumerate(sorted(names))}

    # (2) map: assign + vectors/acl/payload SSTs + runs
    t0 = time.perf_counter()
    heads_ref = ray.put(heads)
    map_t = ray.remote(num_cpus=1)(_map_task)
    todo = [s for s in shards if s.path not in failed]
    res = ray.get([map_t.remote(s, i, dim, metric, heads_ref, cfg, tenant_ids, tenant, id_start,
                                columns, out, batch_rows) for i, s in enumerate(todo)])
    hist = np.zeros(len(heads), dtype=np.int64)
    runs, sst = [], {f: [] for f in FAMILIES}
    rows = 0
    for r in res:
        hist += r["hist"]
        runs += r["runs"]
        rows += r["good"]
        if "failed" not in r:  # sample-stage errors are already in ``errors``
            pass
        for f, path in r["sst"].items():
            sst[f].append(path)
    ids = np.concatenate([r["ids"] for r in res]) if res else np.zeros(0, np.uint64)
    u, c = np.unique(ids, return_counts=True)
    if (c > 1).any():
        raise InvalidArgument(f"duplicate ids across shards (first: {u[c > 1][:5].tolist()}); "
                              f"bulk build needs unique ids")
    del ids, u, c
    stages["map"] = {"seconds": time.perf_counter() - t0, "rows": rows,
                     "assignments": int(hist.sum()), "tasks": len(todo),
                     "worker_peak_rss": max((r["rss"] for r in res), default=0)}
    log(f"map: {rows} rows -> {int(hist.sum())} assignments in {len(runs)} runs "
        f"({stages['map']['seconds']:.1f}s)")
    del res

    # (3) reduce: group by list id, cap, postings SSTs
    t0 = time.perf_counter()
    rowbytes = run_dtype(dim).itemsize * 3  # the slice, the sorted copy, the packed value
    ranges = _ranges(hist, max(1, memory_bytes // rowbytes),
                     reduce_tasks or max(2, int(ray.available_resources().get("CPU", 2))))
    red_t = ray.remote(num_cpus=1)(_reduce_task)
    res = ray.get([red_t.remote(lo, hi, i, runs, heads[lo:hi], dim, cfg["posting_limit"], out)
                   for i, (lo, hi) in enumerate(ranges)])
    for r in res:
        sst["postings"] += r["files"]
    stages["reduce"] = {"seconds": time.perf_counter() - t0, "tasks": len(ranges),
                        "records": sum(r["records"] for r in res),
                        "dropped_by_cap": sum(r["dropped"] for r in res),
                        "max_task_rows": max((r["rows"] for r in res), default=0),
                        "worker_peak_rss": max((r["rss"] for r in res), default=0)}
    log(f"reduce: {stages['reduce']['records']} records in {len(ranges)} tasks "
        f"({stages['reduce']['seconds']:.1f}s)")
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
    np.save(os.path.join(out, "heads.npy"), heads)
    manifest = {"format": 1, "kind": "spann", "dim": dim, "metric": metric, "params": params,
                "config": cfg, "rows": rows, "slots": total, "heads": int(len(heads)),
                "tenants": sorted(tenant_ids, key=tenant_ids.get), "sst": sst,
                "errors": errors, "stages": stages, "metric_code": metric_code(metric),
                "seconds": time.perf_counter() - t_start,
                "sst_bytes": sum(os.path.getsize(f) for fs in sst.values() for f in fs)}
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


# -- import -------------------------------------------------------------------------------------
def import_bulk(data: str, collection: str, out: str, **options: Any) -> dict[str, Any]:
    """Import the bulk build in folder ``out`` as new collection ``collection`` of the *stopped*
    data folder ``data`` (its lock is taken: a running server makes this FailedPrecondition).

    All or nothing: the collection is assembled in a temporary folder (SST files ingested with
    ``ingest_external_file``, hard-linked where possible; engine state and a SPANN checkpoint
    written; reopened and counted) and renamed into place; a crash leaves no collection, and the
    next open of the folder removes the leftovers. ``options``: engine options.
    Returns {"rows", "seconds", "disk_bytes"}.
    """
    import rocksdict

    import vecdb
    from vecdb.engine import codec
    from vecdb.engine.collection import Collection
    from vecdb.engine.database import check_collection_name
    from vecdb.engine.state import CollectionState
    from vecdb.index.acl import AccessLists
    from vecdb.index.spann import SPANNIndex
    from vecdb.storage import WriteBatch
    from vecdb.storage.rocks import RocksKVStore

    t0 = time.perf_counter()
    check_collection_name(collection)
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            man = json.load(f)
    except OSError as e:
        raise FailedPrecondition(f"{out}: no bulk build manifest ({e})") from None
    db = vecdb.open(data, **options)
    try:
        if db.has_collection(collection):
            raise AlreadyExists(f"collection {collection!r} already exists in {data}")
        root = os.path.join(db.path, "collections")
        tmp = os.path.join(root, f".tmp-{collection}-{uuid.uuid4().hex[:8]}")
        try:
            Collection.create(tmp, collection, man["dim"], man["metric"], "spann", man["params"],
                              db.options)
            col = Collection(tmp, db.options, collection)
            for i, name in enumerate(man["tenants"]):
                if col.create_tenant(name) != i:
                    raise FailedPrecondition("tenant ids of a fresh collection are not dense")
            col.close(checkpoint=False)
            store = RocksKVStore(os.path.join(tmp, "store"), create=False,
                                 block_cache_bytes=db.options.block_cache_bytes)
            try:
                io = rocksdict.IngestExternalFileOptions()
                io.set_move_files(True)  # hard links: the bulk folder keeps its copy
                for fam in FAMILIES:
                    if man["sst"][fam]:
                        store._cfs[fam].ingest_external_file(list(man["sst"][fam]), io)
                _adopt(store, tmp, man, codec, CollectionState, AccessLists, SPANNIndex,
                       WriteBatch)
            finally:
                store.close()
            col = Collection(tmp, db.options, collection)
            n = len(col)
            col.close(checkpoint=False)
            if n != man["rows"]:
                raise FailedPrecondition(f"imported {n} vectors, the build has {man['rows']}")
            os.replace(tmp, os.path.join(root, collection))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in
                   os.walk(os.path.join(root, collection)) for f in fs)
    finally:
        db.close()
    return {"rows": man["rows"], "seconds": time.perf_counter() - t0, "disk_bytes": size}


def _adopt(store, path: str, man: dict, codec, CollectionState, AccessLists, SPANNIndex,
           WriteBatch) -> None:
    """Engine state + SPANN checkpoint for the ingested column families (streamed by chunks)."""
    dim = man["dim"]
    st = CollectionState()
    grants: dict[int, list[int]] = {}
    for k, v in store.iterate("acl"):
        grants[codec.key_int(k)] = np.frombuffer(v, dtype="<i4").tolist()
    cap = max(1024, int(man["slots"]))
    acl = AccessLists(cap)
    ver = np.zeros(cap, dtype=np.uint8)
    live_parts = []
    keys: list[bytes] = []
    vals: list[bytes] = []

    def flush() -> None:
        if not keys:
            return
        slots = np.array([codec.key_int(x) for x in keys], dtype=np.int64)
        rec = codec.unpack_vectors(vals, dim)
        for owner in np.unique(rec["owner"]).tolist():
            m = rec["owner"] == owner
            st.apply_upsert(slots[m], rec["id"][m], owner)
        for s in slots.tolist():
            for t in grants.get(s, ()):
                st.apply_grant(np.array([s]), t)
        acl.add_csr(slots, *st.acl_csr(slots))
        ver[slots] = 1
        live_parts.append(slots)
        keys.clear()
        vals.clear()

    for k, v in store.iterate("vectors"):
        keys.append(k)
        vals.append(v)
        if len(keys) >= 65536:
            flush()
    flush()
    b = WriteBatch()  # durable versions (SPANN reads them back over the checkpoint's)
    for c in range(0, (int(man["slots"]) + 4095) // 4096):
        b.put("postings", b"V" + int(c).to_bytes(8, "big"), ver[c * 4096:(c + 1) * 4096]
              .tobytes().ljust(4096, b"\0"))
    store.write(b)
    live = np.concatenate(live_parts) if live_parts else np.zeros(0, np.int64)
    meta = {"kind": "spann", "dim": dim, "metric": man["metric"], "config": man["config"],
            "capacity": cap,
            "head_kind": "hnsw" if (man["config"]["head_index"] == "hnsw" or (
                man["config"]["head_index"] == "auto" and man["heads"] > 4096)) else "flat"}
    idx = SPANNIndex._from_state(meta, {"live": live, "ver": ver, **acl.to_arrays()}, store)
    ck = os.path.join(path, f"ckpt-{0:020d}")
    os.makedirs(ck)
    idx.save(os.path.join(ck, "index.npz"))
    idx.close()
    with open(os.path.join(ck, "state.npz"), "wb") as f:
        np.savez(f, **st.to_arrays())
        f.flush()
        os.fsync(f.fileno())
    store.put("meta", b"checkpoint", json.dumps({"seq": 0, "dir": os.path.basename(ck),
                                                  "time": time.time(), "bulk": True}).encode())
    store.flush()
