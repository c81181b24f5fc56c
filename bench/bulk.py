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


def online_rate(src_paths: list[str], n: int, dim: int, workers: int, params: dict, tmp: str,
                batch: int) -> dict:
    """vectors/s of the online path (embedded SPANN collection) on the first ``n`` rows."""
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
    t0 = time.perf_counter()
    r = run_online(sub, "on", data=data, tenant="t", workers=workers, batch_rows=batch,
                   create={"dim": dim, "index": "spann", "params": params}, progress=False)
    el = r["elapsed_s"]  # streaming only: excludes Ray actor start and opening the database
    print(f"online ({workers} worker(s), fresh collection): {time.perf_counter() - t0:.0f}s "
          f"with start-up")
    shutil.rmtree(sub, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    return {"workers": workers, "rows": r["rows_written"], "seconds": el,
            "vectors_per_s": r["rows_written"] / el, "errors": len(r["errors"]),
            "cpu_seconds": r["cpu_s"], "vectors_per_cpu_s": r["rows_written"] / r["cpu_s"]}


def online_into(data: str, n: int, dim: int, workers: int, tmp: str, batch: int, id_start: int,
                seed: int) -> dict:
    """vectors/s of the online path adding ``n`` new vectors to the bulk-imported collection."""
    from vecdb.ingest.online import run_online

    sub = os.path.join(tmp, f"into-src-{workers}")
    write_shards(sub, n, dim, max(1, -(-n // (2 * workers))), seed=seed)
    t0 = time.perf_counter()
    r = run_online(sub, "bulk", data=data, tenant="t", workers=workers, batch_rows=batch,
                   id_start=id_start, progress=False)
    el = r["elapsed_s"]  # streaming only: excludes Ray actor start and opening the database
    print(f"online ({workers} worker(s), into the imported collection): "
          f"{time.perf_counter() - t0:.0f}s with start-up")
    shutil.rmtree(sub, ignore_errors=True)
    return {"workers": workers, "rows": r["rows_written"], "seconds": el,
            "vectors_per_s": r["rows_written"] / el, "errors": len(r["errors"]),
            "cpu_seconds": r["cpu_s"], "vectors_per_cpu_s": r["rows_written"] / r["cpu_s"],
            "into": "bulk-imported collection"}


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


STAGE_STATE = {"sample": "none", "heads": "heads", "map": "heads", "reduce": "heads",
               "import": "all"}  # the index state a stage's driver holds (the rest is overhead)


def memory_summary(stages: dict, state: dict) -> dict:
    """Per-stage peak RSS of the driver and of the tasks, and the driver's peak minus the index
    state it holds in that stage (heads + head graph from the heads stage on; the whole
    collection's state during the import): the overhead that must not grow with N."""
    held = {"none": 0, "heads": state["heads_bytes"], "all": state["bytes"]}
    drv = {k: v["driver_peak_rss"] for k, v in stages.items() if v.get("driver_peak_rss")}
    over = {k: v - held.get(STAGE_STATE.get(k, "all"), 0) for k, v in drv.items()}
    return {"driver_peak_rss": drv,
            "worker_peak_rss": {k: v["worker_peak_rss"] for k, v in stages.items()
                                if v.get("worker_peak_rss")},
            "index_state": state, "driver_peak_minus_index_state": over,
            "driver_overhead_max": max(over.values(), default=0)}


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
                    "task_peak_GB": max(memory["worker_peak_rss"].values(), default=0) / 1e9})
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shard", type=int, default=100_000)
    ap.add_argument("--online-n", type=int, default=100_000)
    ap.add_argument("--into-n", type=int, default=20_000,
                    help="rows the online path adds to the imported collection per worker "
                         "setting (the single-stream baseline)")
    ap.add_argument("--into-batch", type=int, default=1000)
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
                    help="results name under bench/results (default bulk, bulk-smoke)")
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
        a.into_n, a.into_batch = 1_000, 250
    from vecdb.ingest.bulk import bulk_build_spann, import_bulk
    from vecdb.ingest.online import init_ray

    init_ray(num_cpus=2)
    tmp = tempfile.mkdtemp(prefix="bench-bulk-", dir=a.tmp)
    params = {"head_ratio": a.head_ratio, "replica_count": a.replicas, "background": False,
              "threads": a.threads}
    load_start = os.getloadavg()
    try:
        t0 = time.perf_counter()
        paths = write_shards(os.path.join(tmp, "src"), a.n, a.dim, a.shard)
        gen_s = time.perf_counter() - t0
        print(f"generated {a.n:,} x {a.dim} in {len(paths)} shards ({gen_s:.0f}s)")
        Q = queries_from(paths, a.nq)
        gt = streaming_gt(paths, Q, 10)
        man = bulk_build_spann(os.path.join(tmp, "src"), os.path.join(tmp, "out"), dim=a.dim,
                               tenant="t", params=params, sample_rows=a.sample_rows,
                               memory_bytes=a.memory_mb << 20, batch_rows=20_000,
                               fill=a.fill, search_ef=a.search_ef,
                               head_vectors=a.head_vectors, head_search=a.head_search,
                               probes=a.probes,
                               **({"train_rows": a.train_rows} if a.train_rows else {}))
        imp = import_bulk(os.path.join(tmp, "data"), "bulk", os.path.join(tmp, "out"))
        stages = dict(man["stages"])
        stages["import"] = {"seconds": imp["seconds"], "driver_peak_rss": imp["driver_peak_rss"],
                            "cpu_seconds": imp["cpu_seconds"], "phases": imp["phases"]}
        offline_cpu = sum(v.get("cpu_seconds", 0.0) for v in stages.values())
        build_s = man["seconds"] + imp["seconds"]
        t1 = time.perf_counter()
        db = vecdb.open(os.path.join(tmp, "data"))
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
        disk = dir_bytes(os.path.join(tmp, "data", "collections", "bulk"))
        shutil.rmtree(os.path.join(tmp, "out"), ignore_errors=True)
        batch = min(5000, max(500, a.online_n // 20))
        # the baseline: more vectors into the imported N-vector collection, one stream then two
        into = [online_into(os.path.join(tmp, "data"), a.into_n, a.dim, w, tmp, a.into_batch,
                            id_start=a.n + i * a.into_n, seed=100 + w)
                for i, w in enumerate((1, 2))]
        online = [online_rate(paths, min(a.online_n, a.n), a.dim, w, params, tmp, batch)
                  for w in (1, 2)]
        offline_vps = man["rows"] / build_s
        per_core_ratio = (offline_vps / 2) / online[0]["vectors_per_s"]
        per_core_ratio_into = (offline_vps / 2) / into[0]["vectors_per_s"]
        offline_vpc = man["rows"] / offline_cpu
        cpu_ratio_into = offline_vpc / into[0]["vectors_per_cpu_s"]
        cpu_ratio_fresh = offline_vpc / online[0]["vectors_per_cpu_s"]
        summary = {"n": a.n, "dim": a.dim, "shards": len(paths), "heads": man["heads"],
                   "offline_seconds": build_s, "offline_vectors_per_s": offline_vps,
                   "offline_vectors_per_s_per_core": offline_vps / 2,
                   "online_1_worker_vectors_per_s": online[0]["vectors_per_s"],
                   "online_2_workers_vectors_per_s": online[1]["vectors_per_s"],
                   "offline_per_core_over_online_single_stream": per_core_ratio,
                   "online_into_imported_1_worker_vectors_per_s": into[0]["vectors_per_s"],
                   "online_into_imported_2_workers_vectors_per_s": into[1]["vectors_per_s"],
                   "offline_per_core_over_online_into_imported": per_core_ratio_into,
                   "goal_ratio_baseline": "online single stream into the imported collection",
                   "offline_cpu_seconds": offline_cpu,
                   "offline_vectors_per_cpu_s": offline_vpc,
                   "online_into_imported_1_worker_vectors_per_cpu_s":
                       into[0]["vectors_per_cpu_s"],
                   "online_1_worker_vectors_per_cpu_s": online[0]["vectors_per_cpu_s"],
                   "offline_over_online_into_imported_per_cpu_s": cpu_ratio_into,
                   "offline_over_online_fresh_per_cpu_s": cpu_ratio_fresh,
                   "disk_bytes_per_vector": disk / man["rows"],
                   "sst_bytes_per_vector": man["sst_bytes"] / man["rows"],
                   "recall_at_10": {f"{r['max_lists']}/eps={r['eps']:g}": r["recall"]
                                    for r in rec_rows},
                   "driver_peak_rss": peak_rss_bytes(), "memory": memory, "params": params,
                   "fill": a.fill, "search_ef": a.search_ef, "reopen_seconds": open_s,
                   "sample_rows": man["stages"]["sample"]["rows"], "memory_mb": a.memory_mb,
                   "train_rows": man["stages"]["heads"].get("train_rows"),
                   "head_vectors": a.head_vectors, "head_search": a.head_search,
                   "probes": a.probes,
                   "online_into_rows": a.into_n, "online_into_batch": a.into_batch,
                   "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
        table = extrapolate(stages, man["rows"], a.dim, disk / man["rows"], a.head_ratio, 2,
                            memory, man["heads"])
        st = memory["index_state"]
        print("\nstage        seconds  CPU-seconds   peak RSS (MB): driver  driver-state  tasks")
        for k, v in stages.items():
            print(f"{k:<12} {v['seconds']:8.1f} {v.get('cpu_seconds', 0):11.1f}   "
                  f"{v.get('driver_peak_rss', 0) / 2**20:21.0f} "
                  f"{memory['driver_peak_minus_index_state'].get(k, 0) / 2**20:13.0f} "
                  f"{v.get('worker_peak_rss', 0) / 2**20:6.0f}")
        print(f"index state of the open collection: {st['bytes'] / 2**20:.0f} MB = "
              f"{st['bytes_per_head']:.0f} B x {st['lists']:,} heads + "
              f"{st['bytes_per_vector']:.1f} B x {man['rows']:,} vectors (maps "
              f"{st['maps_bytes'] / 2**20:.0f} MB); driver overhead above it at most "
              f"{memory['driver_overhead_max'] / 2**20:.0f} MB")
        print("import phases (MB): " + ", ".join(f"{k} {v / 2**20:.0f}"
                                                  for k, v in imp["phases"].items()))
        print(f"\noffline: {offline_vps:,.0f} vectors/s end to end ({build_s:.0f}s), "
              f"{disk / man['rows']:.0f} B/vector on disk, recall@10 "
              + ", ".join(f"{r['recall']:.3f}@{r['max_lists']}" + ("(eps off)" if r["eps"] > 1e3
                                                                   else "") for r in rec_rows))
        print(f"offline CPU: {offline_cpu:,.0f} CPU-seconds, {offline_vpc:,.0f} vectors per "
              f"CPU-second")
        for o in online:
            print(f"online {o['workers']} worker(s): {o['vectors_per_s']:,.0f} vectors/s, "
                  f"{o['vectors_per_cpu_s']:,.0f} per CPU-second ({o['rows']:,} rows)")
        for o in into:
            print(f"online {o['workers']} worker(s) into the imported collection: "
                  f"{o['vectors_per_s']:,.0f} vectors/s, {o['vectors_per_cpu_s']:,.0f} per "
                  f"CPU-second ({o['rows']:,} rows)")
        print(f"offline / online single stream, per CPU-second: {cpu_ratio_into:.1f}x (into the "
              f"imported collection), {cpu_ratio_fresh:.1f}x (fresh collection)")
        print(f"offline per core / online single stream: {per_core_ratio_into:.1f}x (into the "
              f"imported collection: the baseline), {per_core_ratio:.1f}x (fresh collection)")
        for t in table:
            print(f"extrapolated {t['vectors']:>13,} on {t['cores']:>3} cores: "
                  f"{t['hours']:7.1f} h, disk {t['disk_TB']:.2f} TB, driver "
                  f"{t['driver_GB']:.1f} GB RAM (index state {t['index_state_GB']:.1f} GB), "
                  f"each task <= {t['task_peak_GB']:.1f} GB")
        name = a.name or ("bulk-smoke" if a.smoke else "bulk")
        write_results(name, rec_rows, {"summary": summary, "stages": stages,
                                       "online": online, "online_into_imported": into,
                                       "extrapolation": table})
        rows = [{"system": "stage seconds", "recall": i, "qps": v["seconds"]}
                for i, v in enumerate(stages.values())]
        if not a.smoke:
            plot_curves(name, rec_rows + rows, title=f"bulk build {a.n:,} x {a.dim}",
                        logy=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
