"""Ingestion at scale (issue 8): the offline SPANN bulk build on Ray vs the online path.

    python -m bench.bulk --smoke                  # seconds-to-a-minute; what CI runs
    python -m bench.bulk --n 10000000 --shard 250000 --head-ratio 0.02   # the issue's run
    python -m bench.bulk --index curator --n 1000000   # Curator: serial upserts vs bulk path

Measured in one run, on the same synthetic clustered data (``bench.datasets.clustered_stream``,
written to disk shard by shard as .npy, never all in memory):

* offline path: time and peak RSS per stage (sample, heads, map, reduce, import), vectors/s end
  to end (build + import), on-disk bytes per vector of the imported collection, recall@10 of the
  result against exact ground truth (computed by streaming the shards, top-k merged per shard);
* the online path (embedded engine behind a Ray actor, upserts by id) with 1 and 2 workers:
  ``--into-n`` new rows into the bulk-imported N-vector collection (the steady state of a
  collection of realistic size: appends, splits and reassignments included, nothing deferred:
  the collection is created with ``background=False``), and, for reference, ``--online-n`` rows
  into a fresh collection (its first batch runs SPANN's in-memory build);
* the ratio offline per core / online single stream into the imported collection (goal >= 10x)
  and an extrapolation table to 100M and 1B vectors from the measured per-stage rates.

Ray runs locally with 2 CPUs; BLAS is pinned to one thread per process. The machine is shared with
other jobs, so prefer the ratios. Writes bench/results/bulk.json and bulk.png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import vecdb  # noqa: E402
from bench.common import peak_rss_bytes, plot_curves, recall_at_k, write_results  # noqa: E402
from bench.datasets import clustered_stream  # noqa: E402


def write_shards(folder: str, n: int, dim: int, shard_rows: int, seed: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, X in enumerate(clustered_stream(n, dim, chunk=shard_rows, seed=seed)):
        p = os.path.join(folder, f"part-{i:05d}.npy")
        np.save(p, X)
        paths.append(p)
    return paths


def queries_from(paths: list[str], nq: int, seed: int = 7) -> np.ndarray:
    """Queries near random base rows (read from the memory-mapped shards)."""
    rng = np.random.default_rng(seed)
    per = max(1, nq // len(paths) + 1)
    Q = []
    for p in paths:
        a = np.load(p, mmap_mode="r")
        Q.append(np.array(a[np.sort(rng.choice(len(a), min(per, len(a)), replace=False))]))
    Q = np.concatenate(Q)[:nq]
    return (Q + 0.05 * rng.standard_normal(Q.shape)).astype(np.float32)


def streaming_gt(paths: list[str], Q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (= global row numbers) by scanning the shards one at a time."""
    from vecdb.kernels import search

    best_d = np.full((len(Q), k), np.inf, dtype=np.float32)
    best_i = np.full((len(Q), k), -1, dtype=np.int64)
    off = 0
    for p in paths:
        X = np.load(p)
        i, d = search(Q, X, k, "l2")
        d = np.where(i >= 0, d, np.inf)
        D = np.concatenate([best_d, d], axis=1)
        Ix = np.concatenate([best_i, np.where(i >= 0, i + off, -1)], axis=1)
        o = np.argsort(D, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(D, o, 1), np.take_along_axis(Ix, o, 1)
        off += len(X)
    return best_i


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def snapshot_dir(src: str, dst: str) -> None:
    """A private copy of the closed data folder ``src`` at ``dst``: RocksDB's SST files are
    hard-linked (RocksDB never rewrites one; a compaction in the copy writes new files and unlinks
    its own names only), everything else (MANIFEST, WAL, OPTIONS, the engine's files) is copied.
    Each baseline repetition streams into such a copy of the pristine imported collection, so
    repetitions measure the same starting state (and a 10M copy costs seconds, not 25 GB)."""
    for root, _dirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for f in files:
            s_, d_ = os.path.join(root, f), os.path.join(out, f)
            if f.endswith(".sst"):
                os.link(s_, d_)
            else:
                shutil.copy2(s_, d_)


def io_snapshot() -> dict[int, tuple[int, int]]:
    """(read_bytes, write_bytes) from /proc/<pid>/io of this process tree (Ray's processes and
    the embedded sink actor included): bytes that really went to or came from the disk, as
    opposed to reads the page cache served."""
    from vecdb.ingest import cpu

    out = {}
    for pid, _ in cpu.snapshot():
        try:
            with open(f"/proc/{pid}/io") as f:
                kv = dict(line.split(": ") for line in f.read().splitlines())
            out[pid] = (int(kv["read_bytes"]), int(kv["write_bytes"]))
        except (OSError, KeyError, ValueError):
            pass
    return out


def io_between(a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]) -> dict:
    rd = sum(v[0] - a.get(k, (0, 0))[0] for k, v in b.items())
    wr = sum(v[1] - a.get(k, (0, 0))[1] for k, v in b.items())
    return {"disk_read_bytes": rd, "disk_write_bytes": wr}


def stream_result(r: dict, el: float, io: dict) -> dict:
    """One online stream's figures: vectors/s, CPU-seconds of the whole process tree (Ray
    driver, workers and the embedded sink actor, i.e. client + server), per-batch sink times."""
    sb = np.array([t[2] for t in r.get("sink_batches", [])], dtype=np.float64)
    return {"workers": r["workers"], "rows": r["rows_written"], "seconds": el,
            "vectors_per_s": r["rows_written"] / el, "errors": len(r["errors"]),
            "cpu_seconds": r["cpu_s"], "vectors_per_cpu_s": r["rows_written"] / r["cpu_s"],
            "batches": len(sb),
            "sink_batch_seconds": {"sum": float(sb.sum()),
                                   **({"min": float(sb.min()), "median": float(np.median(sb)),
                                       "max": float(sb.max())} if len(sb) else {})},
            "sink_batch_seconds_each": [round(float(x), 4) for x in sb], **io}


def spread(reps: list[dict]) -> dict:
    """Median, min, max and relative spread ((max - min) / median) of each repetition's rates."""
    out: dict = {"reps": len(reps)}
    if not reps:
        return out
    for k in ("vectors_per_s", "vectors_per_cpu_s"):
        v = np.array([r[k] for r in reps], dtype=np.float64)
        med = float(np.median(v))
        out[k] = {"median": med, "min": float(v.min()), "max": float(v.max()),
                  "spread": float((v.max() - v.min()) / med) if med else 0.0,
                  "each": [float(x) for x in v]}
    return out


def warm_up(tmp: str, dim: int) -> float:
    """One tiny online job (2 workers, a throwaway flat collection) before the measured streams:
    Ray starts its worker processes and they import Ray Data and vecdb once (10-20 s on this
    machine), which no measured stream should pay (with --baselines-only nothing ran before)."""
    from vecdb.ingest.online import run_online

    src, data = os.path.join(tmp, "warm-src"), os.path.join(tmp, "warm-db")
    os.makedirs(src, exist_ok=True)
    for i in range(4):
        np.save(os.path.join(src, f"w{i}.npy"), np.zeros((10, dim), np.float32))
    t = time.perf_counter()
    run_online(src, "w", data=data, tenant="t", workers=2, batch_rows=5,
               create={"dim": dim, "index": "flat"}, progress=False)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    return time.perf_counter() - t


def settle() -> float:
    """Flush every dirty page to disk before a measured stream (``os.sync``), so no stream pays
    for the previous one's write-back: in the 15:28 10M run the fresh-collection streams ran
    right after ~40 GB of into-imported writes and slowed down rep after rep (1,444 -> 1,055 ->
    891 vectors/s). Returns the seconds it took."""
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


def online_rate(src_paths: list[str], n: int, dim: int, workers: int, params: dict, tmp: str,
                batch: int, rep: int = 0) -> dict:
    """vectors/s of the online path into a fresh embedded SPANN collection (its first batch
    runs SPANN's in-memory build) on the first ``n`` rows of the data set."""
    from vecdb.ingest.online import run_online

    sub = os.path.join(tmp, f"online-src-{workers}")
    os.makedirs(sub, exist_ok=True)
    left = n
    for i, p in enumerate(src_paths):  # split the rows into 2 shards per worker for balance
        if left <= 0:
            break
        a = np.load(p, mmap_mode="r")
        take = min(left, len(a))
        parts = np.array_split(np.arange(take), max(1, 2 * workers))
        for j, rows in enumerate(parts):
            np.save(os.path.join(sub, f"o-{i:04d}-{j}.npy"), np.asarray(a[rows]))
        left -= take
    data = os.path.join(tmp, f"online-db-{workers}")
    sync_s = settle()
    t0 = time.perf_counter()
    io0 = io_snapshot()
    r = run_online(sub, "on", data=data, tenant="t", workers=workers, batch_rows=batch,
                   create={"dim": dim, "index": "spann", "params": params}, progress=False)
    io = io_between(io0, io_snapshot())
    el = r["elapsed_s"]  # streaming only: excludes Ray actor start and opening the database
    out = stream_result(r, el, io)
    out["sync_seconds"] = sync_s
    print(f"online ({workers} worker(s), fresh collection, rep {rep}): "
          f"{out['vectors_per_s']:,.0f} vectors/s, {out['vectors_per_cpu_s']:,.0f} per "
          f"CPU-second ({time.perf_counter() - t0:.0f}s with start-up)")
    shutil.rmtree(sub, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    return out


def online_into(data: str, n: int, dim: int, workers: int, tmp: str, batch: int, id_start: int,
                seed: int, rep: int = 0) -> dict:
    """vectors/s of the online path adding ``n`` new vectors (``seed``: new rows each
    repetition) to a private copy (``snapshot_dir``) of the bulk-imported collection ``data``."""
    from vecdb.ingest.online import run_online

    sub = os.path.join(tmp, f"into-src-{workers}")
    write_shards(sub, n, dim, max(1, -(-n // (2 * workers))), seed=seed)
    copy = os.path.join(tmp, f"into-db-{workers}")
    shutil.rmtree(copy, ignore_errors=True)
    t0 = time.perf_counter()
    snapshot_dir(data, copy)
    snap_s = time.perf_counter() - t0
    sync_s = settle()
    io0 = io_snapshot()
    r = run_online(sub, "bulk", data=copy, tenant="t", workers=workers, batch_rows=batch,
                   id_start=id_start, progress=False)
    io = io_between(io0, io_snapshot())
    el = r["elapsed_s"]  # streaming only: excludes Ray actor start and opening the database
    out = stream_result(r, el, io)
    out.update({"into": "bulk-imported collection (a private copy)", "seed": seed,
                "copy_seconds": snap_s, "sync_seconds": sync_s})
    print(f"online ({workers} worker(s), into the imported collection, rep {rep}): "
          f"{out['vectors_per_s']:,.0f} vectors/s, {out['vectors_per_cpu_s']:,.0f} per "
          f"CPU-second, disk read {io['disk_read_bytes'] / 2**20:,.0f} MiB "
          f"({time.perf_counter() - t0:.0f}s with copy and start-up)")
    shutil.rmtree(sub, ignore_errors=True)
    shutil.rmtree(copy, ignore_errors=True)
    return out


def index_state(col, n: int) -> dict:
    """What the imported collection holds in RAM once open (what a server holds for it too): the
    engine's maps (id map, slot arrays) and SPANN's state (heads + head graph, versions, live
    flags, list sizes, tenant bitmaps), split into the part per head and the part per vector."""
    idx = col._index
    heads = idx._heads.memory_bytes()
    maps = col._state.memory_bytes()
    total = maps + idx.memory_bytes()
    lists = idx.num_lists()
    return {"bytes": total, "maps_bytes": maps, "heads_bytes": heads, "lists": lists,
            "bytes_per_head": heads / max(1, lists),
            "bytes_per_vector": (total - heads) / max(1, n)}


def private_peak(st: dict) -> int:
    """A stage's largest task memory of its own: anonymous RSS where the stage records it (map
    workers: ``worker_memory.anon``; reduce tasks: ``worker_peak_rss_anon``), else RSS. The
    rest of a map or reduce task's RSS is memory-mapped files (heads, head groups, runs, vector
    files): clean page cache, shared by the machine's workers and reclaimable."""
    anon = st.get("worker_peak_rss_anon") or (st.get("worker_memory") or {}).get("anon")
    return int(anon or st.get("worker_peak_rss", 0))


def memory_summary(stages: dict, state: dict) -> dict:
    """Per-stage peak RSS of the driver (also split into anon / file / shmem where the stage
    records ``driver_memory``) and of the tasks, and the driver's peak minus the index state it
    holds in that stage: none before the import (the driver holds no head vectors, neither in
    memory nor mapped: tasks write and read heads.npy, and build the head graph and groups),
    the whole collection's state during the import. That difference is the overhead that must
    not grow with N."""
    drv = {k: v["driver_peak_rss"] for k, v in stages.items() if v.get("driver_peak_rss")}
    over = {k: v - (state["bytes"] if k == "import" else 0) for k, v in drv.items()}
    return {"driver_peak_rss": drv,
            # each part's own peak in the stage (sampled every 20 ms by the driver): anon is
            # the driver's heap, file its mapped files (page cache), shmem Ray's object store
            "driver_memory": {k: v["driver_memory"] for k, v in stages.items()
                              if v.get("driver_memory")},
            "worker_peak_rss": {k: v["worker_peak_rss"] for k, v in stages.items()
                                if v.get("worker_peak_rss")},
            "worker_private_peak": {k: private_peak(v) for k, v in stages.items()
                                    if v.get("worker_peak_rss")},
            "map_worker_shared": (stages.get("map", {}).get("worker_memory") or {}).get(
                "shared", 0),
            "index_state": state, "driver_peak_minus_index_state": over,
            "driver_overhead_max": max(over.values(), default=0)}


def results_name(a: argparse.Namespace) -> str:
    """The results name under bench/results: ``--name``, else bulk[-smoke], or
    bulk-nobaselines[-smoke] with ``--no-baselines`` (whose JSON has no online figures: it must
    not overwrite bulk.json, which the README quotes)."""
    if a.name:
        return a.name
    base = "bulk-nobaselines" if a.no_baselines else "bulk"
    return f"{base}-smoke" if a.smoke else base


def extrapolate(stages: dict, n: int, dim: int, bytes_per_vec: float, head_ratio: float,
                cores_used: int, memory: dict | None = None, n_heads: int = 0) -> list[dict]:
    """Measured per-vector CPU-seconds per stage, scaled to 100M and 1B vectors; memory per
    machine from the measured index state per vector and per head, the driver's overhead above
    it (less the process's base, its sample-stage peak) scaled *linearly* with N (an upper
    bound: measured at 1M/3M/10M it grows with the heads and the import's transients), and the
    task peaks (bounded by the settings).

    Assumptions (stated in the README): sample, map and reduce are embarrassingly parallel
    (CPU-seconds per vector flat in N: the map's head search grows ~sqrt(heads) in the centroid
    GEMM, ignored); head training scales with its sample (10 rows per head, so ~N) and runs on
    all cores (the hierarchy's levels are split over tasks; the head graph build is
    multi-threaded); the import is one process per collection (its seconds per vector flat).
    Without CPU figures (old runs) the stage's wall seconds x ``cores_used`` stand in."""
    def cpu(k: str) -> float:
        v = stages.get(k, {})
        c = v.get("cpu_seconds")
        return (c if c else v.get("seconds", 0) * cores_used) / n
    par = cpu("sample") + cpu("map") + cpu("reduce")
    heads = cpu("heads")
    imp = stages.get("import", {}).get("seconds", 0) / n
    out = []
    for N in (100_000_000, 1_000_000_000):
        for cores in (32, 256):
            p_h = (par + heads) * N / cores
            s_h = imp * N
            out.append({"vectors": N, "cores": cores, "hours": (p_h + s_h) / 3600,
                        "parallel_hours": p_h / 3600, "import_hours": s_h / 3600,
                        "cpu_us_per_vector": {"sample+map+reduce": par * 1e6,
                                              "heads": heads * 1e6, "import": imp * 1e6},
                        "disk_TB": bytes_per_vec * N / 1e12})
            if memory:
                st = memory["index_state"]
                base = memory["driver_peak_rss"].get("sample", 0)
                H = n_heads * N / n  # heads ~ head_ratio x N
                out[-1].update({
                    "heads": int(H),
                    "index_state_GB": (st["bytes_per_head"] * H + st["bytes_per_vector"] * N)
                    / 1e9,
                    "driver_GB": (st["bytes_per_head"] * H + st["bytes_per_vector"] * N
                                  + base + max(0, memory["driver_overhead_max"] - base) * N / n)
                    / 1e9,
                    # private task memory (bounded by the settings), and the page cache a
                    # machine's map workers share for the mapped heads + head groups (~heads)
                    "task_peak_GB": max(memory.get("worker_private_peak",
                                                   memory["worker_peak_rss"]).values(),
                                        default=0) / 1e9,
                    "map_shared_page_cache_GB": memory.get("map_worker_shared", 0) * N / n / 1e9})
    return out


def curator_bench(a: argparse.Namespace) -> None:
    """``--index curator``: serial ``Collection.upsert`` ingest of a Curator collection vs the
    Curator bulk path (``bulk_build_curator`` + ``import_bulk``) on the same shards, one tenant.

    Serial: one embedded collection, upserts of ``--upsert-batch`` rows shard by shard (the tree
    trains at ``train_size`` rows and retrains in the background as the data grows, as a user
    gets it), then a checkpoint (the import writes one too). Bulk: per-stage seconds and
    CPU-seconds (sample, train, route with its read/engine-rows/route split, import with the
    adopt part timed separately). Recall@10 of both against exact ground truth at a few
    ``gamma2``. Writes bench/results/bulk-curator[-smoke].json."""
    from vecdb.ingest import bulk_curator, cpu
    from vecdb.ingest.bulk import import_bulk
    from vecdb.ingest.online import init_ray

    if a.smoke:
        a.n, a.dim, a.shard, a.nq = 20_000, 32, 5_000, 100
    init_ray(num_cpus=2)
    tmp = tempfile.mkdtemp(prefix="bench-bulkcur-", dir=a.tmp)
    params = {"train_sample": a.sample_rows or 100_000}
    if a.smoke:
        params["train_sample"] = 8_000
    load_start = os.getloadavg()
    gammas = (16.0, 96.0, 400.0)
    try:
        paths = write_shards(os.path.join(tmp, "src"), a.n, a.dim, a.shard)
        Q = queries_from(paths, a.nq)
        gt = streaming_gt(paths, Q, 10)
        print(f"generated {a.n:,} x {a.dim} in {len(paths)} shards")

        def recalls(col) -> list[dict]:
            out = []
            for g in gammas:
                t1 = time.perf_counter()
                res = col.search(Q, 10, tenant="t", params={"gamma2": g})
                out.append({"gamma2": g, "recall": recall_at_k(res.ids, gt, 10),
                            "qps": len(Q) / (time.perf_counter() - t1)})
            return out

        # serial: Collection.upsert, one process
        db = vecdb.open(os.path.join(tmp, "serial"))
        col = db.create_collection("s", dim=a.dim, index="curator", params=params)
        col.create_tenant("t")
        c0 = cpu.snapshot()
        t0 = time.perf_counter()
        off = 0
        for p in paths:
            X = np.load(p)
            for s in range(0, len(X), a.upsert_batch):
                part = X[s:s + a.upsert_batch]
                col.upsert(np.arange(off + s, off + s + len(part)), part, tenant="t")
            off += len(X)
        up_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        col.checkpoint()
        ck_s = time.perf_counter() - t1
        ser_cpu = cpu.cpu_between(c0, cpu.snapshot())
        ser_rec = recalls(col)
        trained_on = col._index._trained_on
        db.close()
        serial = {"seconds": up_s + ck_s, "upsert_seconds": up_s, "checkpoint_seconds": ck_s,
                  "cpu_seconds": ser_cpu, "vectors_per_s": a.n / (up_s + ck_s),
                  "vectors_per_cpu_s": a.n / ser_cpu, "tree_trained_on": trained_on,
                  "recall": ser_rec}
        shutil.rmtree(os.path.join(tmp, "serial"), ignore_errors=True)
        print(f"serial upsert: {up_s:.1f}s + checkpoint {ck_s:.1f}s, {ser_cpu:.1f} CPU-s, "
              f"recall " + ", ".join(f"{r['recall']:.3f}@g{r['gamma2']:g}" for r in ser_rec))

        # bulk: build on Ray + import (the adopt step timed through a wrapper)
        adopt_t: dict[str, float] = {}
        orig = bulk_curator.curator_adopter

        def timed(man, out):
            f = orig(man, out)

            def adopt(store, st):
                t = time.perf_counter()
                r = f(store, st)
                adopt_t["seconds"] = time.perf_counter() - t
                return r
            return adopt

        bulk_curator.curator_adopter = timed
        try:
            man = bulk_curator.bulk_build_curator(os.path.join(tmp, "src"),
                                                  os.path.join(tmp, "out"), dim=a.dim,
                                                  tenant="t", params=params,
                                                  batch_rows=20_000)
            imp = import_bulk(os.path.join(tmp, "data"), "bulk", os.path.join(tmp, "out"))
        finally:
            bulk_curator.curator_adopter = orig
        stages = dict(man["stages"])
        stages["import"] = {"seconds": imp["seconds"], "cpu_seconds": imp["cpu_seconds"],
                            "adopt_place_seconds": adopt_t.get("seconds", 0.0),
                            "driver_peak_rss": peak_rss_bytes()}
        bulk_cpu = sum(v.get("cpu_seconds", 0.0) for v in stages.values())
        bulk_s = man["seconds"] + imp["seconds"]
        db = vecdb.open(os.path.join(tmp, "data"))
        t1 = time.perf_counter()
        bcol = db.collection("bulk")  # what the import's own reopen from its checkpoint costs
        stages["import"]["reopen_seconds"] = time.perf_counter() - t1
        bulk_rec = recalls(bcol)
        db.close()
        bulk = {"seconds": bulk_s, "cpu_seconds": bulk_cpu, "vectors_per_s": man["rows"] / bulk_s,
                "vectors_per_cpu_s": man["rows"] / bulk_cpu, "recall": bulk_rec,
                "stages": stages, "sample_rows": man["stages"]["sample"]["rows"]}
        print("\nstage        seconds  CPU-seconds")
        for k, v in stages.items():
            print(f"{k:<12} {v['seconds']:8.1f} {v.get('cpu_seconds', 0):11.1f}")
        print(f"route task split (task-seconds): {stages['route']['task_split']}; "
              f"import: adopt/place {stages['import']['adopt_place_seconds']:.1f}s, a reopen "
              f"from the checkpoint {stages['import']['reopen_seconds']:.1f}s")
        print(f"serial: {serial['vectors_per_s']:,.0f} vectors/s, "
              f"{serial['vectors_per_cpu_s']:,.0f} per CPU-second")
        print(f"bulk:   {bulk['vectors_per_s']:,.0f} vectors/s, "
              f"{bulk['vectors_per_cpu_s']:,.0f} per CPU-second; recall "
              + ", ".join(f"{r['recall']:.3f}@g{r['gamma2']:g}" for r in bulk_rec))
        rows = [{"system": sys_, "gamma2": r["gamma2"], "recall": r["recall"], "qps": r["qps"]}
                for sys_, rr in (("serial upsert", ser_rec), ("bulk", bulk_rec)) for r in rr]
        summary = {"n": a.n, "dim": a.dim, "shards": len(paths), "params": params,
                   "upsert_batch": a.upsert_batch, "serial": serial, "bulk": bulk,
                   "speedup_wall": serial["seconds"] / bulk_s,
                   "speedup_cpu": bulk["vectors_per_cpu_s"] / serial["vectors_per_cpu_s"],
                   "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
        print(f"bulk / serial: {summary['speedup_wall']:.2f}x wall, "
              f"{summary['speedup_cpu']:.2f}x per CPU-second")
        write_results(a.name or ("bulk-curator-smoke" if a.smoke else "bulk-curator"), rows,
                      {"summary": summary})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def trace_into(data: str, n: int, dim: int, batch: int, id_start: int, seed: int,
               tmp: str) -> list[dict]:
    """In-process (no Ray) per-batch trace of ``n`` new rows upserted into a private copy of the
    imported collection: what each batch costs and why (list reads and bytes, write bytes and
    seconds, splits, disk reads the page cache did not serve, RocksDB's L0 files, pending
    compaction bytes and write stalls). Used to explain the into-imported baseline's spread."""
    from vecdb.storage.kv import WriteBatch

    copy = os.path.join(tmp, "trace-db")
    shutil.rmtree(copy, ignore_errors=True)
    snapshot_dir(data, copy)
    db = vecdb.open(copy)
    col = db.collection("bulk")
    idx = col._index
    store = idx.store
    acc = {"fetch_s": 0.0, "lists_read": 0, "read_bytes": 0, "write_s": 0.0, "written": 0}
    fetch0, write0 = idx._fetch, store.write

    def fetch(keys, io):
        t = time.perf_counter()
        out = fetch0(keys, io)
        acc["fetch_s"] += time.perf_counter() - t
        acc["lists_read"] += len(keys)
        acc["read_bytes"] += sum(len(v) for v in out if v)
        return out

    def write(b: WriteBatch):
        t = time.perf_counter()
        write0(b)
        acc["write_s"] += time.perf_counter() - t
        acc["written"] += sum(len(v) for _, _, v in b.ops if v)

    idx._fetch, store.write = fetch, write
    cf = store._cfs.get("postings")

    def prop(name: str) -> int | None:
        try:
            return cf.property_int_value(name) if cf is not None else None
        except Exception:  # noqa: BLE001 - a property this RocksDB build does not know
            return None

    def disk_read() -> int:
        with open("/proc/self/io") as f:
            return int(dict(line.split(": ") for line in f.read().splitlines())["read_bytes"])

    out = []
    try:
        col.create_tenant("t") if "t" not in col.list_tenants() else None
        nid = id_start
        for X in clustered_stream(n, dim, chunk=batch, seed=seed):
            for k in acc:
                acc[k] = 0 if isinstance(acc[k], int) else 0.0
            sp0, d0 = dict(idx.stats), disk_read()
            t, c = time.perf_counter(), time.process_time()
            col.upsert(np.arange(nid, nid + len(X)), X, tenant="t")
            row = {"rows": len(X), "seconds": time.perf_counter() - t,
                   "cpu_seconds": time.process_time() - c, **acc,
                   "splits": idx.stats["splits"] - sp0["splits"],
                   "reassigned": idx.stats["reassigned"] - sp0["reassigned"],
                   "disk_read_bytes": disk_read() - d0,
                   "l0_files": prop("rocksdb.num-files-at-level0"),
                   "pending_compaction_bytes": prop("rocksdb.estimate-pending-compaction-bytes"),
                   "running_compactions": prop("rocksdb.num-running-compactions"),
                   "delayed_write_rate": prop("rocksdb.actual-delayed-write-rate"),
                   "write_stopped": prop("rocksdb.is-write-stopped")}
            out.append(row)
            nid += len(X)
            print(f"trace batch {len(out):3d}: {row['seconds']:6.2f}s "
                  f"(CPU {row['cpu_seconds']:5.2f}) lists {row['lists_read']:5d} read "
                  f"{row['read_bytes'] / 2**20:6.0f} MiB in "
                  f"{row['fetch_s']:5.2f}s (disk {row['disk_read_bytes'] / 2**20:5.0f} MiB) "
                  f"write {row['written'] / 2**20:6.0f} MiB in {row['write_s']:5.2f}s splits "
                  f"{row['splits']:3d} L0 {row['l0_files']} pending "
                  f"{(row['pending_compaction_bytes'] or 0) / 2**20:,.0f} MiB", flush=True)
    finally:
        db.close()
        shutil.rmtree(copy, ignore_errors=True)
    return out


def build_offline(a: argparse.Namespace, work: str, params: dict) -> dict:
    """Generate the shards, run the offline build + import, measure recall, memory and disk;
    returns the offline figures (also saved as ``<work>/offline.json`` for --baselines-only)."""
    from vecdb.ingest.bulk import bulk_build_spann, import_bulk

    t0 = time.perf_counter()
    paths = write_shards(os.path.join(work, "src"), a.n, a.dim, a.shard)
    gen_s = time.perf_counter() - t0
    print(f"generated {a.n:,} x {a.dim} in {len(paths)} shards ({gen_s:.0f}s)")
    Q = queries_from(paths, a.nq)
    gt = streaming_gt(paths, Q, 10)
    man = bulk_build_spann(os.path.join(work, "src"), os.path.join(work, "out"), dim=a.dim,
                           tenant="t", params=params, sample_rows=a.sample_rows,
                           memory_bytes=a.memory_mb << 20, batch_rows=20_000,
                           fill=a.fill, search_ef=a.search_ef,
                           head_vectors=a.head_vectors, head_search=a.head_search,
                           probes=a.probes,
                           **({"train_rows": a.train_rows} if a.train_rows else {}))
    imp = import_bulk(os.path.join(work, "data"), "bulk", os.path.join(work, "out"))
    stages = dict(man["stages"])
    stages["import"] = {"seconds": imp["seconds"], "driver_peak_rss": imp["driver_peak_rss"],
                        "driver_memory": imp.get("driver_memory", {}),
                        "cpu_seconds": imp["cpu_seconds"], "phases": imp["phases"]}
    t1 = time.perf_counter()
    db = vecdb.open(os.path.join(work, "data"))
    col = db.collection("bulk")
    open_s = time.perf_counter() - t1
    memory = memory_summary(stages, index_state(col, man["rows"]))
    rec_rows = []
    # SPANN's default eps (1.0) prunes lists whose head is > 2x the nearest head's distance;
    # "eps off" probes max_lists lists whatever their distance
    for eps, ml_list in ((1.0, (8, 16, 32, 64, 128)), (1e6, (32, 64, 128, 256))):
        for ml in ml_list:
            t1 = time.perf_counter()
            res = col.search(Q, 10, tenant="t", params={"max_lists": ml, "eps": eps})
            qs = len(Q) / (time.perf_counter() - t1)
            rec_rows.append({"system": "bulk-imported SPANN" + (", eps off" if eps > 1e3
                                                                 else ""),
                             "max_lists": ml, "eps": eps,
                             "recall": recall_at_k(res.ids, gt, 10), "qps": qs})
    db.close()
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    off = {"n": a.n, "dim": a.dim, "shards": len(paths), "paths": paths, "rows": man["rows"],
           "heads": man["heads"], "sst_bytes": man["sst_bytes"],
           "seconds": man["seconds"] + imp["seconds"], "stages": stages,
           "cpu_seconds": sum(v.get("cpu_seconds", 0.0) for v in stages.values()),
           "disk_bytes": dir_bytes(os.path.join(work, "data", "collections", "bulk")),
           "reopen_seconds": open_s, "memory": memory, "recall_rows": rec_rows,
           "import_phases": imp["phases"], "driver_peak_rss": peak_rss_bytes(),
           "sample_rows": man["stages"]["sample"]["rows"],
           "train_rows": man["stages"]["heads"].get("train_rows"),
           "params": params, "loadavg_start": os.getloadavg(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(work, "offline.json"), "w") as f:
        json.dump(off, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                  else float(o))
    return off


def ratios(offline_vps: float, offline_vpc: float, base: dict) -> dict:
    """Offline over one single-stream baseline, per CPU-second and per wall-clock core (the
    offline path's vectors/s over 2 cores vs the stream's vectors/s), from the baseline's
    median repetition and its worst/best (the range the spread allows)."""
    w, c = base["vectors_per_s"], base["vectors_per_cpu_s"]
    return {"per_cpu_s": offline_vpc / c["median"],
            "per_cpu_s_range": [offline_vpc / c["max"], offline_vpc / c["min"]],
            "per_wall_core": (offline_vps / 2) / w["median"],
            "per_wall_core_range": [(offline_vps / 2) / w["max"], (offline_vps / 2) / w["min"]]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shard", type=int, default=100_000)
    ap.add_argument("--online-n", type=int, default=50_000,
                    help="rows of each online stream into a fresh collection")
    ap.add_argument("--into-n", type=int, default=50_000,
                    help="rows of each online stream into (a copy of) the imported collection")
    ap.add_argument("--into-batch", type=int, default=1000)
    ap.add_argument("--online-batch", type=int, default=None,
                    help="rows per batch of the fresh-collection streams (default: "
                         "online-n / 20 within 500..5000)")
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of each single-stream (1 worker) baseline; the spread is "
                         "recorded")
    ap.add_argument("--reps2", type=int, default=1,
                    help="repetitions of the 2-worker streams (0: none)")
    ap.add_argument("--workdir", default=None,
                    help="keep the shards, the imported collection and offline.json here (for "
                         "--baselines-only); default: a temporary folder under --tmp, removed")
    ap.add_argument("--no-baselines", action="store_true",
                    help="run only the offline build + import + recall (memory runs at several "
                         "N); the online baselines' fields are null")
    ap.add_argument("--baselines-only", action="store_true",
                    help="reuse --workdir's imported collection and offline figures: run only "
                         "the online baselines")
    ap.add_argument("--trace", action="store_true",
                    help="also trace one into-imported stream batch by batch, in process")
    ap.add_argument("--head-ratio", type=float, default=0.12)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--fill", type=float, default=0.8,
                    help="bulk lists filled to this fraction of posting_limit")
    ap.add_argument("--search-ef", type=int, default=None,
                    help="head search beam of the map tasks (default: the collection's head_ef)")
    ap.add_argument("--threads", type=int, default=2, help="SPANN head-graph build threads")
    ap.add_argument("--sample-rows", type=int, default=None,
                    help="default: the builder's (10 rows per head: max(200k, 10 x head_ratio x "
                         "n), at most n)")
    ap.add_argument("--head-vectors", default="member", choices=("centroid", "member"))
    ap.add_argument("--train-rows", type=int, default=None,
                    help="sample rows one process holds to train heads (default: the builder's)")
    ap.add_argument("--memory-mb", type=int, default=256)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--name", default=None,
                    help="results name under bench/results (default bulk, bulk-smoke; "
                         "bulk-nobaselines[-smoke] with --no-baselines)")
    ap.add_argument("--probes", type=int, default=8, help="HeadGroups probes of the map stage")
    ap.add_argument("--head-search", default="groups", choices=("groups", "graph"))
    ap.add_argument("--index", default="spann", choices=("spann", "curator"),
                    help="curator: serial upserts vs the Curator bulk path (curator_bench)")
    ap.add_argument("--upsert-batch", type=int, default=10_000,
                    help="--index curator: rows per serial Collection.upsert")
    a = ap.parse_args(argv)
    if a.index == "curator":
        curator_bench(a)
        return
    if a.smoke:
        a.n, a.dim, a.shard, a.online_n, a.nq, a.sample_rows = 20_000, 32, 5_000, 4_000, 100, 10_000
        a.into_n, a.into_batch, a.reps = 1_000, 250, 2
    if a.baselines_only and a.no_baselines:
        ap.error("--baselines-only and --no-baselines exclude each other")
    if a.baselines_only and not (a.workdir and os.path.exists(os.path.join(a.workdir,
                                                                            "offline.json"))):
        ap.error("--baselines-only needs --workdir with a previous run's offline.json")
    for k in ("reps", "into_n", "online_n", "into_batch"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    from vecdb.ingest.online import init_ray

    init_ray(num_cpus=2)
    params = {"head_ratio": a.head_ratio, "replica_count": a.replicas, "background": False,
              "threads": a.threads}
    load_start = os.getloadavg()
    keep = a.workdir is not None
    work = a.workdir or tempfile.mkdtemp(prefix="bench-bulk-", dir=a.tmp)
    os.makedirs(work, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-bulk-online-", dir=a.tmp or None)
    try:
        if a.baselines_only:
            with open(os.path.join(work, "offline.json")) as f:
                off = json.load(f)
            params = off["params"]
            a.n, a.dim = off["n"], off["dim"]
            print(f"reusing the {off['rows']:,}-vector imported collection in {work} "
                  f"(built {off['when']})")
        else:
            off = build_offline(a, work, params)
        data, paths = os.path.join(work, "data"), off["paths"]
        rows = off["rows"]
        reps, reps2 = (0, 0) if a.no_baselines else (a.reps, a.reps2)
        warm_s = None if a.no_baselines else warm_up(scratch, a.dim)
        if warm_s is not None:
            print(f"online warm-up job: {warm_s:.1f}s")
        trace = trace_into(data, a.into_n, a.dim, a.into_batch, id_start=rows, seed=99,
                           tmp=scratch) if a.trace and not a.no_baselines else None
        # the baselines: new rows into a private copy of the imported N-vector collection, and
        # the first rows of the data set into a fresh collection; one stream (repeated), then two
        into1 = [online_into(data, a.into_n, a.dim, 1, scratch, a.into_batch, id_start=rows,
                             seed=100 + r, rep=r) for r in range(reps)]
        into2 = [online_into(data, a.into_n, a.dim, 2, scratch, a.into_batch, id_start=rows,
                             seed=200 + r, rep=r) for r in range(reps2)]
        batch = a.online_batch or min(5000, max(500, a.online_n // 20))
        fresh1 = [online_rate(paths, min(a.online_n, rows), a.dim, 1, params, scratch, batch,
                              rep=r) for r in range(reps)]
        fresh2 = [online_rate(paths, min(a.online_n, rows), a.dim, 2, params, scratch, batch,
                              rep=r) for r in range(reps2)]
        stages, memory, rec_rows = off["stages"], off["memory"], off["recall_rows"]
        offline_vps = rows / off["seconds"]
        offline_vpc = rows / off["cpu_seconds"]
        base = {"into_imported_1": spread(into1), "into_imported_2": spread(into2),
                "fresh_1": spread(fresh1), "fresh_2": spread(fresh2)}
        none = dict.fromkeys(("per_cpu_s", "per_cpu_s_range", "per_wall_core",
                              "per_wall_core_range"))  # no baselines run
        r_into = ratios(offline_vps, offline_vpc, base["into_imported_1"]) if reps else none
        r_fresh = ratios(offline_vps, offline_vpc, base["fresh_1"]) if reps else none
        med = {k: v["vectors_per_s"]["median"] if v["reps"] else None for k, v in base.items()}
        medc = {k: v["vectors_per_cpu_s"]["median"] if v["reps"] else None
                for k, v in base.items()}
        summary = {
            "n": a.n, "dim": a.dim, "shards": off["shards"], "heads": off["heads"],
            "offline_seconds": off["seconds"], "offline_vectors_per_s": offline_vps,
            "offline_vectors_per_s_per_core": offline_vps / 2,
            "offline_cpu_seconds": off["cpu_seconds"], "offline_vectors_per_cpu_s": offline_vpc,
            "offline_built": off["when"], "offline_reused": bool(a.baselines_only),
            "baselines": {
                "single stream into the imported collection": {
                    "what": f"1 Ray worker upserting {a.into_n:,} new rows in batches of "
                            f"{a.into_batch:,} into a copy of the bulk-imported {rows:,}-vector "
                            f"SPANN collection (embedded sink actor), {reps} repetitions, new "
                            f"rows each", **base["into_imported_1"],
                    "offline_over": r_into},
                "single stream into a fresh collection": {
                    "what": f"1 Ray worker upserting the first {min(a.online_n, rows):,} rows "
                            f"in batches of {batch:,} into a new SPANN collection (its first "
                            f"batch runs SPANN's in-memory build), {reps} repetitions",
                    **base["fresh_1"], "offline_over": r_fresh}},
            "online_1_worker_vectors_per_s": med["fresh_1"],
            "online_2_workers_vectors_per_s": med["fresh_2"],
            "online_1_worker_vectors_per_cpu_s": medc["fresh_1"],
            "online_into_imported_1_worker_vectors_per_s": med["into_imported_1"],
            "online_into_imported_2_workers_vectors_per_s": med["into_imported_2"],
            "online_into_imported_1_worker_vectors_per_cpu_s": medc["into_imported_1"],
            "offline_per_core_over_online_single_stream": r_fresh["per_wall_core"],
            "offline_per_core_over_online_into_imported": r_into["per_wall_core"],
            "offline_over_online_into_imported_per_cpu_s": r_into["per_cpu_s"],
            "offline_over_online_fresh_per_cpu_s": r_fresh["per_cpu_s"],
            "disk_bytes_per_vector": off["disk_bytes"] / rows,
            "sst_bytes_per_vector": off["sst_bytes"] / rows,
            "recall_at_10": {f"{r['max_lists']}/eps={r['eps']:g}": r["recall"]
                             for r in rec_rows},
            "driver_peak_rss": off["driver_peak_rss"], "memory": memory, "params": params,
            "fill": a.fill, "search_ef": a.search_ef, "reopen_seconds": off["reopen_seconds"],
            "sample_rows": off["sample_rows"], "memory_mb": a.memory_mb,
            "train_rows": off["train_rows"], "head_vectors": a.head_vectors,
            "head_search": a.head_search, "probes": a.probes,
            "online_into_rows": a.into_n, "online_into_batch": a.into_batch,
            "online_fresh_rows": min(a.online_n, rows), "online_fresh_batch": batch,
            "reps": reps, "reps2": reps2, "baselines_run": not a.no_baselines,
            "online_warm_up_seconds": warm_s,
            "map_worker_memory": stages.get("map", {}).get("worker_memory"),
            "reduce_tasks": stages.get("reduce", {}).get("tasks"),
            "loadavg_offline_start": off["loadavg_start"],
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
        table = extrapolate(stages, rows, a.dim, off["disk_bytes"] / rows, a.head_ratio, 2,
                            memory, off["heads"])
        st = memory["index_state"]
        print("\nstage        seconds  CPU-seconds   peak RSS (MB): driver  driver-state  tasks")
        for k, v in stages.items():
            print(f"{k:<12} {v['seconds']:8.1f} {v.get('cpu_seconds', 0):11.1f}   "
                  f"{v.get('driver_peak_rss', 0) / 2**20:21.0f} "
                  f"{memory['driver_peak_minus_index_state'].get(k, 0) / 2**20:13.0f} "
                  f"{v.get('worker_peak_rss', 0) / 2**20:6.0f}")
        if memory.get("driver_memory"):
            print("driver peak per stage (MB): " + "; ".join(
                f"{k} anon {v.get('anon', 0) / 2**20:.0f} file {v.get('file', 0) / 2**20:.0f} "
                f"shmem {v.get('shmem', 0) / 2**20:.0f}"
                for k, v in memory["driver_memory"].items()))
        wm = stages.get("map", {}).get("worker_memory")
        if wm:  # red's map-worker split: anon is what a worker adds, pss its share of the maps
            print("map worker memory (MB, largest over the batches): " + ", ".join(
                f"{k} {v / 2**20:.0f}" for k, v in wm.items()))
        idc = stages.get("map", {}).get("id_check")
        if idc:
            print(f"duplicate-id check: {idc.get('ids', 0):,} ids in {idc.get('tasks', 0)} "
                  f"tasks, task peak RSS {idc.get('worker_peak_rss', 0) / 2**20:.0f} MB")
        print(f"index state of the open collection: {st['bytes'] / 2**20:.0f} MB = "
              f"{st['bytes_per_head']:.0f} B x {st['lists']:,} heads + "
              f"{st['bytes_per_vector']:.1f} B x {rows:,} vectors (maps "
              f"{st['maps_bytes'] / 2**20:.0f} MB); driver overhead above it at most "
              f"{memory['driver_overhead_max'] / 2**20:.0f} MB")
        print("import phases (MB): " + ", ".join(f"{k} {v / 2**20:.0f}"
                                                  for k, v in off["import_phases"].items()))
        print(f"\noffline: {offline_vps:,.0f} vectors/s end to end ({off['seconds']:.0f}s), "
              f"{off['disk_bytes'] / rows:.0f} B/vector on disk, recall@10 "
              + ", ".join(f"{r['recall']:.3f}@{r['max_lists']}" + ("(eps off)" if r["eps"] > 1e3
                                                                   else "") for r in rec_rows))
        print(f"offline CPU: {off['cpu_seconds']:,.0f} CPU-seconds, {offline_vpc:,.0f} vectors "
              f"per CPU-second")
        for k, v in base.items():
            if not v["reps"]:
                continue
            w, c = v["vectors_per_s"], v["vectors_per_cpu_s"]
            print(f"online {k:<16} x{v['reps']}: {w['median']:7,.0f} vectors/s (min "
                  f"{w['min']:,.0f}, max {w['max']:,.0f}, spread {100 * w['spread']:.0f}%), "
                  f"{c['median']:6,.0f} per CPU-second (min {c['min']:,.0f}, max "
                  f"{c['max']:,.0f})")
        for label, r in (("into the imported collection", r_into),
                         ("into a fresh collection", r_fresh)):
            if r["per_cpu_s"] is None:
                continue
            print(f"offline / single stream {label}: {r['per_cpu_s']:.1f}x per CPU-second "
                  f"({r['per_cpu_s_range'][0]:.1f}-{r['per_cpu_s_range'][1]:.1f}x over the "
                  f"repetitions), {r['per_wall_core']:.1f}x per wall-clock core "
                  f"({r['per_wall_core_range'][0]:.1f}-{r['per_wall_core_range'][1]:.1f}x)")
        for t in table:
            print(f"extrapolated {t['vectors']:>13,} on {t['cores']:>3} cores: "
                  f"{t['hours']:7.1f} h, disk {t['disk_TB']:.2f} TB, driver "
                  f"{t['driver_GB']:.1f} GB RAM (index state {t['index_state_GB']:.1f} GB), "
                  f"each task <= {t['task_peak_GB']:.1f} GB")
        name = results_name(a)
        write_results(name, rec_rows, {"summary": summary, "stages": stages,
                                       "online": fresh1 + fresh2,
                                       "online_into_imported": into1 + into2,
                                       "into_trace": trace, "extrapolation": table})
        srows = [{"system": "stage seconds", "recall": i, "qps": v["seconds"]}
                 for i, v in enumerate(stages.values())]
        if not a.smoke:
            plot_curves(name, rec_rows + srows, title=f"bulk build {a.n:,} x {a.dim}",
                        logy=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
