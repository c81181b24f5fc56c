"""SPANN on disk vs faiss IVF-Flat (OnDiskInvertedLists), DiskANN (diskannpy) and an in-memory HNSW.

Question: how much recall per millisecond does vecdb's SPANN give when only a small fraction of
the raw vector bytes may stay in RAM (<= 15% and <= 30%), and what does it read from disk per
query? Also: build time and peak build memory, update throughput, and search latency while a
stream of inserts/deletes (with background splits) runs.

- Every system is measured in the same run, on the same data, single-threaded search, one query
  per call (latency = one query). The machine is shared with other jobs: compare ratios.
- SPANN's posting lists live in a RocksDB (``RocksKVStore``) opened with O_DIRECT reads and a small
  block cache (counted in its RAM), so list reads really go to the device (SSD/virtual disk).
  faiss's on-disk lists and DiskANN read through mmap/their own readers (page cache not bypassed).
- DiskANN runs in its own virtualenv (its wheel pins numpy < 2): ``--diskann-python`` (default
  ``bench/data/diskann-venv``: ``python3.11 -m venv bench/data/diskann-venv &&
  bench/data/diskann-venv/bin/pip install diskannpy numpy``). Its disk
  index takes ~20+ minutes to build on 2 cores, so it can be built once (``--diskann-index DIR``
  holding a prebuilt index: only the searches run in the benchmark). It reads with O_DIRECT and
  ``beam_width`` reads in flight per step; SPANN's ``io_threads`` rows are the comparable setting
  (posting reads in flight), its ``io_threads=1`` rows read strictly one list after another.
- vecdb's in-memory HNSW is the unconstrained-memory reference (hnswlib with ``--parts hnswlib``).

    python -m bench.spann --smoke                 # seconds: tiny synthetic set, CI
    python -m bench.spann                         # GloVe-50 (390k x 50, ip) + synthetic stream
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_bytes, plot_curves, recall_at_k, write_results
from bench.datasets import clustered_stream, load
from vecdb.index.flat import exact_topk
from vecdb.index.spann import SPANNIndex
from vecdb.kernels import metric_code
from vecdb.storage.rocks import RocksKVStore

HERE = Path(__file__).resolve().parent
DISKANN_PY = os.environ.get("VECDB_DISKANN_PYTHON", "bench/data/diskann-venv/bin/python")
BLOCK_CACHE = 1 << 20  # SPANN's RocksDB block cache (bytes, counted in its RAM)
# Swept on GloVe-50 (recall@10 vs lists read; 500-1000 queries): a read costs ~85 us up to
# ~40 KB and ~136 us at 128 KB, so fewer, larger lists win. SQ8 records (62 bytes vs 112 for
# float16) put ~1.8x the records in a read; with them, lists needed for 0.90: head_ratio 0.015
# (5k lists, 22 KB) 24, 0.0075 (42 KB) 17, 0.005 (1.7k lists, 59 KB) 14, 0.0035 (1.2k lists,
# 84 KB) 11; float16 at 0.015 (40 KB) needed 20. SQ8 alone costs ~1.5 points of recall at the
# same lists (distances of the decoded vectors, no re-rank: a re-rank would need extra reads).
# The index's RAM is ~2% of raw; the rest of the budget is RocksDB block cache, which then
# holds ~9% of the posting bytes (the most recently read lists). reassign="nearest": a split
# re-inserts only members that the list of their nearest head lacks (the default "all"
# re-places every replica: ~8x slower updates).
SPANN_KW: dict = {"posting_dtype": "sq8", "reassign": "nearest"}


def spann_kw(head_ratio: float, build_fill: float) -> dict:
    """SPANN_KW plus the list limits: the build caps lists at 6/head_ratio records (the size
    the search sweeps above were measured at) and ``posting_limit`` = cap / ``build_fill``, so
    the update stream has ``1/build_fill - 1`` room to append before a list splits
    (``build_fill`` 1.0: the earlier configuration, lists split at the build's cap)."""
    return {**SPANN_KW, "build_fill": build_fill,
            "posting_limit": int(round(6 / head_ratio / build_fill))}


# the 5M x 128 set (``--sets synthetic-stream``): SQ8 records, built by build_stream
STREAM_KW: dict = {"posting_dtype": "sq8", "reassign": "nearest"}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def latencies(fn, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn(q) -> ids[k]`` one query at a time; returns (ids [nq, k], seconds [nq])."""
    out, t = [], np.zeros(len(Q))
    for i, q in enumerate(Q):
        t0 = time.perf_counter()
        out.append(fn(q))
        t[i] = time.perf_counter() - t0
    return np.stack(out), t


def row(system: str, knob: str, I: np.ndarray, t: np.ndarray, gt: np.ndarray, ram: int,
        raw: int, **extra) -> dict:
    r = {"system": system, "knob": knob, "recall": recall_at_k(I, gt, 10),
         "mean_ms": float(t.mean() * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
         "qps": float(1 / t.mean()), "ram_bytes": int(ram), "ram_frac": ram / raw, **extra}
    print(f"  {system:24s} {knob:18s} recall {r['recall']:.3f}  mean {r['mean_ms']:.3f} ms  "
          f"p99 {r['p99_ms']:.3f} ms  ram {r['ram_frac']:.3f}"
          + "".join(f"  {k} {v:.4g}" for k, v in extra.items() if isinstance(v, float)), flush=True)
    return r


# -- SPANN ----------------------------------------------------------------------------------------


def spann_build(X: np.ndarray, metric: str, path: Path, head_ratio: float, threads: int,
                chunk: int | None = None, direct: bool = True, **kw
                ) -> tuple[SPANNIndex, RocksKVStore, dict]:
    if path.exists():
        shutil.rmtree(path)
    store = RocksKVStore(path, block_cache_bytes=BLOCK_CACHE, direct_reads=direct)
    r0, t0 = rss(), time.perf_counter()
    idx = SPANNIndex(X.shape[1], metric, store, head_ratio=head_ratio, threads=threads, **kw)
    if chunk is None:
        idx.add(X)
    else:  # streaming build: the first chunk bulk-builds, the rest goes through the update path
        for s in range(0, len(X), chunk):
            idx.add(X[s:s + chunk])
    idx.flush()
    build_s = time.perf_counter() - t0
    store.flush()
    info = {"build_s": build_s, "build_rss_growth": max(0, rss() - r0),
            "peak_rss_after_build": peak_rss_bytes(), "lists": idx.num_lists(),
            "disk_bytes": store.disk_bytes()}
    return idx, store, info


def spann_sweep(idx: SPANNIndex, Q, gt, raw: int, label: str, grid, io_threads: int = 1,
                cache: int = BLOCK_CACHE) -> list[dict]:
    rows = []
    ram = idx.memory_bytes() + cache
    for ml, eps in grid:
        p = {"max_lists": ml, "eps": eps, "io_threads": io_threads}
        stats = []

        def one(q, p=p, stats=stats):
            i, _ = idx.search(q[None, :], 10, params=p)
            stats.append(idx.last_search_stats())
            return i[0]

        I, t = latencies(one, Q)
        lists = np.mean([s["lists_read"][0] for s in stats])
        byts = np.mean([s["bytes_read"][0] for s in stats])
        ram_lists = np.mean([s["lists_from_ram"][0] for s in stats])
        rows.append(row(label, f"lists={ml},eps={eps}", I, t, gt, ram, raw,
                        lists_per_q=float(lists), kb_per_q=float(byts / 1024),
                        store_lists_per_q=float(lists - ram_lists), io_threads=io_threads))
    return rows


# -- faiss IVF-Flat with on-disk inverted lists ---------------------------------------------------


def _ivf_rows(ivf, nprobes, Q, gt, ram: int, raw: int, build_s: float) -> list[dict]:
    """One result row per nprobe: single-query latencies of the on-disk IVF index."""
    rows = []
    for npb in nprobes:
        ivf.nprobe = npb

        def one(q):
            _, i = ivf.search(q[None, :], 10)
            return i[0]

        I, t = latencies(one, Q)
        rows.append(row("faiss-ivf-ondisk", f"nprobe={npb}", I, t, gt, ram, raw,
                        build_s=build_s))
    return rows


def faiss_ivf_ondisk(X, Q, gt, metric, raw, nlist: int, tmp: Path, nprobes) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(1)
    d = X.shape[1]
    mt = faiss.METRIC_INNER_PRODUCT if metric != "l2" else faiss.METRIC_L2
    quant = faiss.IndexFlat(d, mt)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, mt)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    ivf.train(X[rng.choice(len(X), min(len(X), nlist * 64), replace=False)])
    ivf.add(X)
    invl = faiss.OnDiskInvertedLists(nlist, ivf.code_size, str(tmp / "ivf.ondisk"))
    src = ivf.invlists  # move the lists to disk, list by list
    for li in range(nlist):
        n = src.list_size(li)
        if n:
            invl.add_entries(li, n, src.get_ids(li), src.get_codes(li))
    ivf.replace_invlists(invl, True)
    invl.this.disown()  # the index owns the on-disk lists now (no double free)
    build_s = time.perf_counter() - t0
    ram = nlist * d * 4
    return _ivf_rows(ivf, nprobes, Q, gt, ram, raw, build_s)


# -- in-memory references: vecdb HNSW (and hnswlib) -----------------------------------------------


def vecdb_hnsw_ref(X, Q, gt, metric, raw, threads: int, efs) -> list[dict]:
    from vecdb.index.hnsw import HNSWIndex

    g = HNSWIndex(X.shape[1], metric, M=16, ef_construction=100, seed=0, num_threads=threads,
                  max_elements=len(X))
    t0 = time.perf_counter()
    g.add(X)
    build_s = time.perf_counter() - t0
    ram = g.memory_bytes()
    rows = []
    for ef in efs:
        p = {"ef": ef, "num_threads": 1}

        def one(q, p=p):
            return g.search(q[None, :], 10, params=p)[0][0]

        I, t = latencies(one, Q)
        rows.append(row("vecdb-hnsw-in-memory", f"ef={ef}", I, t, gt, ram, raw, build_s=build_s))
    return rows



def hnsw_ref(X, Q, gt, metric, raw, threads: int, efs) -> list[dict]:
    import hnswlib

    g = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=X.shape[1])
    t0 = time.perf_counter()
    g.init_index(len(X), M=16, ef_construction=100, random_seed=0)
    g.add_items(X, num_threads=threads)
    build_s = time.perf_counter() - t0
    g.set_num_threads(1)
    ram = len(X) * (4 * X.shape[1] + 8 * 16 + 12)
    rows = []
    for ef in efs:
        g.set_ef(ef)

        def one(q):
            return g.knn_query(q[None, :], k=10)[0][0].astype(np.int64)

        I, t = latencies(one, Q)
        rows.append(row("hnswlib-in-memory", f"ef={ef}", I, t, gt, ram, raw, build_s=build_s))
    return rows


# -- DiskANN (separate venv) ----------------------------------------------------------------------

_DISKANN_SCRIPT = r"""
import json, sys, time, numpy as np, diskannpy as dap
X = np.load(sys.argv[1]); Q = np.load(sys.argv[2]); out = sys.argv[3]
metric, mem_gb, threads = sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
Ls = [int(x) for x in sys.argv[7].split(",")]
t0 = time.perf_counter()
dap.build_disk_index(X, metric, out, complexity=100, graph_degree=32,
                     search_memory_maximum=mem_gb, build_memory_maximum=4.0,
                     num_threads=threads)
build_s = time.perf_counter() - t0
idx = dap.StaticDiskIndex(out, num_threads=2, num_nodes_to_cache=0)  # 1 hangs (#462)
res = []
for L in Ls:
    ids, ts = [], []
    for q in Q:
        t = time.perf_counter()
        r = idx.search(q, 10, L, beam_width=4)
        ts.append(time.perf_counter() - t)
        ids.append(np.asarray(r.identifiers, dtype=np.int64))
    res.append({"L": L, "ids": np.stack(ids).tolist(), "t": ts})
json.dump({"build_s": build_s, "runs": res}, open(out + "/result.json", "w"))
"""


_DISKANN_SEARCH = r"""
import json, sys, time, numpy as np, diskannpy as dap
Q = np.load(sys.argv[1]); d = sys.argv[2]; Ls = [int(x) for x in sys.argv[3].split(",")]
W = int(sys.argv[4])
# num_threads=2: with 1 its search never returns (DiskANN issue #462, reproduced here with
# diskannpy 0.7.0); queries still go one at a time from this one thread
idx = dap.StaticDiskIndex(d, num_threads=2, num_nodes_to_cache=0)
res = []
for L in Ls:
    ids, ts = [], []
    for q in Q:
        t = time.perf_counter()
        r = idx.search(q, 10, L, beam_width=W)
        ts.append(time.perf_counter() - t)
        ids.append(np.asarray(r.identifiers, dtype=np.int64))
    res.append({"L": L, "ids": np.stack(ids).tolist(), "t": ts})
json.dump({"runs": res}, open(sys.argv[5], "w"))
"""


def diskann_prebuilt(Q, gt, raw, d: Path, tmp: Path, Ls, beam: int, py: str) -> tuple[list, str]:
    """Searches (1 thread, O_DIRECT, ``beam`` reads in flight) on an index built beforehand in
    ``d`` (build parameters and time in ``d/build.json``, written by the build step)."""
    if not os.path.exists(py):
        return [], f"diskannpy venv not found at {py}"
    info = json.loads((d / "build.json").read_text()) if (d / "build.json").exists() else {}
    np.save(tmp / "Q.npy", Q)
    (tmp / "dks.py").write_text(_DISKANN_SEARCH)
    out = tmp / "diskann-result.json"
    p = subprocess.run([py, str(tmp / "dks.py"), str(tmp / "Q.npy"), str(d),
                        ",".join(map(str, Ls)), str(beam), str(out)],
                       capture_output=True, text=True, timeout=3000)
    if p.returncode != 0:
        return [], f"diskannpy failed: {p.stderr[-800:]}"
    res = json.loads(out.read_text())
    # RAM: what its search keeps in memory (PQ codes + pivots; no node cache)
    ram = sum(f.stat().st_size for f in d.glob("*pq_compressed.bin")) + sum(
        f.stat().st_size for f in d.glob("*pq_pivots.bin"))
    rows = [row(f"diskann-W{beam}", f"L={r['L']}", np.array(r["ids"]), np.array(r["t"]), gt,
                ram, raw, build_s=float(info.get("build_s", float("nan"))), beam_width=beam)
            for r in res["runs"]]
    return rows, f"ok: prebuilt {d} {info}"


def diskann(X, Q, gt, metric, raw, budget, tmp: Path, threads: int, Ls) -> tuple[list, str]:
    if not os.path.exists(DISKANN_PY):
        return [], f"diskannpy venv not found at {DISKANN_PY}"
    d = tmp / f"diskann-{budget}"
    d.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "X.npy", X)
    np.save(tmp / "Q.npy", Q)
    (tmp / "dk.py").write_text(_DISKANN_SCRIPT)
    mem_gb = budget * raw / 2**30
    p = subprocess.run([DISKANN_PY, str(tmp / "dk.py"), str(tmp / "X.npy"), str(tmp / "Q.npy"),
                        str(d), "mips" if metric != "l2" else "l2", f"{mem_gb:.6f}",
                        str(threads), ",".join(map(str, Ls))],
                       capture_output=True, text=True, timeout=3000)
    if p.returncode != 0:
        return [], f"diskannpy failed: {p.stderr[-800:]}"
    res = json.loads((d / "result.json").read_text())
    ram = sum(f.stat().st_size for f in d.glob("*pq_compressed.bin")) + sum(
        f.stat().st_size for f in d.glob("*pq_pivots.bin"))
    rows = [row(f"diskann-{int(budget * 100)}%", f"L={r['L']}", np.array(r["ids"]),
                np.array(r["t"]), gt, ram, raw, build_s=res["build_s"]) for r in res["runs"]]
    return rows, "ok"


# -- update stream --------------------------------------------------------------------------------


def update_stream(idx: SPANNIndex, X_new: np.ndarray, new_slots: np.ndarray, dead: np.ndarray,
                  Q: np.ndarray, batch: int, max_lists: int = 32) -> dict:
    """Insert ``X_new`` and delete ``dead`` in batches in a writer thread while this thread runs
    single-query searches; returns throughput and search latencies during the stream.

    Also checks, for every search during the stream, that no slot whose ``remove`` had returned
    before the search started comes back (``deleted_returned_during``)."""
    done = threading.Event()
    t_upd: dict = {}
    # batch index after which each dead slot's removal was acknowledged (big = not removed)
    top = int(max(new_slots.max(initial=0), dead.max(initial=0))) + 1
    dead_at = np.full(top, np.iinfo(np.int64).max, dtype=np.int64)
    acked = [0]  # removal batches acknowledged so far
    timeline: list[tuple[float, int]] = []  # per batch: (seconds since start, splits so far)

    def writer():
        t0 = time.perf_counter()
        nb = -(-len(X_new) // batch)
        for b in range(nb):
            s = slice(b * batch, (b + 1) * batch)
            idx.add(X_new[s], new_slots[s])
            gone = dead[b * len(dead) // nb:(b + 1) * len(dead) // nb]
            idx.remove(gone)
            dead_at[gone] = b
            acked[0] = b + 1
            timeline.append((round(time.perf_counter() - t0, 3), idx.stats["splits"]))
            if (b + 1) % 10 == 0:
                el = time.perf_counter() - t0
                print(f"    batch {b + 1}/{nb}: {el:.0f} s, "
                      f"{(b + 1) * (2 * batch) / el:.0f} updates/s (ingest)", flush=True)
        t_upd["ingest_s"] = time.perf_counter() - t0
        idx.flush()
        t_upd["with_maintenance_s"] = time.perf_counter() - t0
        done.set()

    th = threading.Thread(target=writer)
    lat = []
    bad = 0
    th.start()
    i = 0
    while not done.is_set():
        q = Q[i % len(Q)]
        g = acked[0]
        t0 = time.perf_counter()
        ids, _ = idx.search(q[None, :], 10, params={"max_lists": max_lists})
        lat.append(time.perf_counter() - t0)
        r = ids[0][(ids[0] >= 0) & (ids[0] < top)]
        bad += int((dead_at[r] < g).sum())
        i += 1
    th.join()
    lat = np.array(lat)
    n = len(X_new) + len(dead)
    return {"updates": n, "batch": batch, "ingest_s": t_upd["ingest_s"],
            "with_maintenance_s": t_upd["with_maintenance_s"],
            "updates_per_s": n / t_upd["with_maintenance_s"],
            "searches_during": len(lat), "search_max_lists": max_lists,
            "search_mean_ms": float(lat.mean() * 1e3),
            "search_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "search_p99_ms": float(np.percentile(lat, 99) * 1e3),
            "deleted_returned_during": bad, "batch_timeline": timeline, **idx.stats}


# -- the 5M x 128 synthetic set, built streaming ---------------------------------------


def faiss_ivf_ondisk_stream(paths: list[str], sample: np.ndarray, Q, gt, raw, nlist: int,
                            tmp: Path, nprobes) -> list[dict]:
    """faiss IVF-Flat whose inverted lists are ``OnDiskInvertedLists`` from the start: trained on
    ``sample``, then the shards are added one at a time straight into the on-disk lists (never
    all vectors in memory)."""
    import faiss

    faiss.omp_set_num_threads(2)  # build only; searches below run with 1 thread
    d = sample.shape[1]
    quant = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_L2)
    t0 = time.perf_counter()
    ivf.train(sample)
    invl = faiss.OnDiskInvertedLists(nlist, ivf.code_size, str(tmp / "ivf5m.ondisk"))
    ivf.replace_invlists(invl, True)
    invl.this.disown()
    off = 0
    for p in paths:
        X = np.load(p)
        ivf.add_with_ids(X, np.arange(off, off + len(X), dtype=np.int64))
        off += len(X)
        del X
    build_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    ram = nlist * d * 4
    return _ivf_rows(ivf, nprobes, Q, gt, ram, raw, build_s)


def run_stream_set(args, tmp: Path, budgets) -> tuple[list, dict]:
    """The issue's synthetic 5M x 128 (``--stream-n``): shards written by ``bench.bulk``'s
    generator (``clustered_stream``, never all in memory), exact ground truth by streaming over
    the shards, SPANN built by ``SPANNIndex.build_stream`` (run files, no full copy in the
    heap), then SPANN at each RAM budget and faiss IVF-Flat on disk, in this one run."""
    from bench.bulk import queries_from, streaming_gt, write_shards

    n, d = args.stream_n, 128
    name = f"synthetic-{n // 1_000_000}Mx{d}" if n >= 1_000_000 else f"synthetic-{n}x{d}"
    shard_dir = Path(args.shards or tmp / f"shards-{n}")
    paths = sorted(str(p) for p in shard_dir.glob("part-*.npy"))
    if sum(np.load(p, mmap_mode="r").shape[0] for p in paths) != n:
        shutil.rmtree(shard_dir, ignore_errors=True)
        paths = write_shards(str(shard_dir), n, d, min(250_000, n), seed=0)
    raw = n * d * 4
    Q = queries_from(paths, args.stream_nq)
    t0 = time.perf_counter()
    gt = streaming_gt(paths, Q, 10)
    extra: dict = {"set": name, "n": n, "dim": d, "raw_bytes": raw,
                   "gt_s": time.perf_counter() - t0, "nq": len(Q)}
    rng = np.random.default_rng(0)
    hr = args.stream_head_ratio
    # ~10 sample rows per head, at least 200k (bench.bulk's rule: fewer make hub heads)
    per = int(min(250_000, max(10 * hr * n, 200_000) / len(paths) + 1))
    shards = [np.load(p, mmap_mode="r") for p in paths]
    sample = np.concatenate([a[np.sort(rng.choice(len(a), min(per, len(a)), replace=False))]
                             for a in shards])
    del shards
    rows: list[dict] = []
    if "spann" in args.parts:
        path = tmp / "spann-stream"
        shutil.rmtree(path, ignore_errors=True)
        store = RocksKVStore(path, block_cache_bytes=BLOCK_CACHE, direct_reads=True)
        r0, t0 = rss(), time.perf_counter()
        idx = SPANNIndex(d, "l2", store, head_ratio=hr, threads=args.threads, **STREAM_KW)
        stages = idx.build_stream((np.load(p) for p in paths), n, sample, tmp, search_ef=64)
        build_s = time.perf_counter() - t0
        idx.save(path / "index.npz")
        t0 = time.perf_counter()
        store.compact("postings")  # one sorted run: no background compaction during searches
        compact_s = time.perf_counter() - t0
        info = {"build_s": build_s, "compact_s": compact_s, **stages,
                "build_rss_growth": max(0, rss() - r0),
                "peak_rss_after_build": peak_rss_bytes(), "lists": idx.num_lists(),
                "disk_bytes": store.disk_bytes(), "index_ram": idx.memory_bytes(),
                "head_ratio": hr, **STREAM_KW}
        print("  build", info, flush=True)
        extra["spann_build"] = info
        mem = idx.memory_bytes()
        store.close()
        del idx
        for budget, _ in budgets:
            cache = max(BLOCK_CACHE, int(budget * raw * 0.99) - mem)
            store = RocksKVStore(path, block_cache_bytes=cache, direct_reads=True)
            idx = SPANNIndex.load(path / "index.npz", store)
            extra[f"spann_{budget}"] = {"block_cache_bytes": cache,
                                        "ram_frac": (idx.memory_bytes() + cache) / raw}
            grid = [(ml, args.eps) for ml in args.stream_lists]
            for io in args.io_threads:
                lab = f"spann-{int(budget * 100)}%" + (f"-io{io}" if io > 1 else "")
                rows += [{**r, "budget": budget}
                         for r in spann_sweep(idx, Q, gt, raw, lab, grid, io, cache)]
            store.close()
            del idx
    if "faiss" in args.parts and not args.no_peers:
        print(f"[{name}] faiss IVF-Flat on-disk (streamed in)", flush=True)
        nlist = int(np.clip(4 * np.sqrt(n), 16, 4096))
        fs = sample[rng.choice(len(sample), min(len(sample), nlist * 40), replace=False)]
        rows += faiss_ivf_ondisk_stream(paths, fs, Q, gt, raw, nlist, tmp, args.stream_nprobes)
    extra["diskann"] = ("not run: its disk index build on GloVe-50 (390k x 50) took ~13 min "
                        "here; scaled by rows and dimension (x12.8, ~x2.6) that is ~7 h for "
                        "5M x 128 on these 2 cores")
    return [{**r, "set": name} for r in rows], extra


# -- main -----------------------------------------------------------------------------------------


def run_set(name: str, X, Q, gt, metric, args, tmp: Path, budgets, stream_chunk=None) -> list:
    raw = X.nbytes
    rows: list[dict] = []
    extra: dict = {"set": name, "n": len(X), "dim": X.shape[1], "raw_bytes": raw}
    grid = [(ml, eps) for ml in args.lists for eps in (args.eps,)]
    built: dict[float, tuple[Path, dict]] = {}  # head_ratio -> (folder, build info)
    for budget, hr in budgets if "spann" in args.parts else ():
        print(f"[{name}] SPANN head_ratio={hr} (RAM budget {budget:.0%})", flush=True)
        path = tmp / f"spann-hr{hr}"
        if hr not in built:
            idx, store, info = spann_build(X, metric, path, hr, args.threads,
                                           chunk=stream_chunk, direct=not args.page_cache,
                                           **spann_kw(hr, args.build_fill))
            idx.save(path / "index.npz")
            store.close()
            built[hr] = (path, info)
        path, info = built[hr]
        # the RAM the index does not need becomes RocksDB block cache (counted in the RAM), so
        # each row uses its budget; reopening is also the path a restarted server takes
        probe = SPANNIndex.load(path / "index.npz", RocksKVStore(
            path, block_cache_bytes=BLOCK_CACHE, direct_reads=not args.page_cache))
        free = int(budget * raw * 0.99) - probe.memory_bytes()
        probe.store.close()
        # --pin: most of the free RAM holds the most-probed lists (chosen with base vectors as
        # proxy queries, never the test queries), the rest is RocksDB's LRU block cache
        pin = max(0, free - BLOCK_CACHE) if args.pin else 0
        cache = max(BLOCK_CACHE, free - pin)
        store = RocksKVStore(path, block_cache_bytes=cache, direct_reads=not args.page_cache)
        idx = SPANNIndex.load(path / "index.npz", store)
        if pin:
            proxy = X[np.random.default_rng(1).choice(len(X), min(len(X), 20_000),
                                                      replace=False)]
            idx.pin_lists(pin, proxy, max_lists=int(np.median(args.lists)))
        info = {**info, "block_cache_bytes": cache, "pinned_lists": len(idx._pinned),
                "pinned_bytes": sum(len(v) for v in idx._pinned.values()),
                "index_ram": idx.memory_bytes(),
                "ram_frac": (idx.memory_bytes() + cache) / raw}
        print("  build", {k: round(v, 3) if isinstance(v, float) else v
                          for k, v in info.items()}, flush=True)
        extra[f"spann_build_{budget}"] = info
        label = f"spann-{int(budget * 100)}%" + ("-pagecache" if args.page_cache else "")
        for io in args.io_threads:
            lab = label + (f"-io{io}" if io > 1 else "")
            for r in spann_sweep(idx, Q, gt, raw, lab, grid, io, cache):
                rows.append({**r, "budget": budget})
        store.close()
    if not args.no_peers:
        if "faiss" in args.parts:
            print(f"[{name}] faiss IVF-Flat on-disk", flush=True)
            nlist = args.nlist or int(np.clip(4 * np.sqrt(len(X)), 16, 4096))
            rows += faiss_ivf_ondisk(X, Q, gt, metric, raw, nlist, tmp, args.nprobes)
        if "hnsw" in args.parts:
            print(f"[{name}] vecdb HNSW in-memory reference", flush=True)
            rows += vecdb_hnsw_ref(X, Q, gt, metric, raw, args.threads, args.efs)
        if "hnswlib" in args.parts:
            print(f"[{name}] hnswlib in-memory reference", flush=True)
            rows += hnsw_ref(X, Q, gt, metric, raw, args.threads, args.efs)
        if not args.no_diskann and "diskann" in args.parts and args.diskann_index:
            print(f"[{name}] diskann (prebuilt {args.diskann_index})", flush=True)
            for beam in args.diskann_beams:
                r, status = diskann_prebuilt(Q, gt, raw, Path(args.diskann_index), tmp,
                                             args.Ls, beam, args.diskann_python)
                extra[f"diskann_W{beam}"] = status
                print("  ", status[:300], flush=True)
                rows += r
        elif not args.no_diskann and "diskann" in args.parts:
            for budget, _ in budgets:
                print(f"[{name}] diskann at {budget:.0%}", flush=True)
                r, status = diskann(X, Q, gt, metric, raw, budget, tmp, args.threads, args.Ls)
                extra[f"diskann_{budget}"] = status
                print("  ", status[:300], flush=True)
                rows += r
    return rows, extra


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sets", default="glove-50,synthetic")
    ap.add_argument("--synthetic-n", type=int, default=200_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--lists", type=lambda s: [int(x) for x in s.split(",")],
                    default=[6, 8, 10, 11, 12, 14, 16, 20])
    ap.add_argument("--eps", type=float, default=10.0)
    ap.add_argument("--nprobes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[4, 8, 16, 32, 64])
    ap.add_argument("--efs", type=lambda s: [int(x) for x in s.split(",")],
                    default=[16, 32, 64, 128])
    ap.add_argument("--Ls", type=lambda s: [int(x) for x in s.split(",")],
                    default=[20, 30, 40, 60, 80, 160])
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="build threads (search is 1 thread)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-diskann", action="store_true")
    ap.add_argument("--diskann-index", default="",
                    help="folder of a prebuilt diskannpy disk index (search only)")
    ap.add_argument("--diskann-python", default=DISKANN_PY)
    ap.add_argument("--diskann-beams", type=lambda s: [int(x) for x in s.split(",")],
                    default=[4])
    ap.add_argument("--io-threads", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 4, 8],
                    help="SPANN posting reads in flight (one sweep per value)")
    ap.add_argument("--tmp", default=str(HERE / "data" / "spann-tmp"))
    ap.add_argument("--budgets", default="0.15,0.30", help="RAM budgets (fractions of raw)")
    ap.add_argument("--page-cache", action="store_true",
                    help="RocksDB without O_DIRECT (reads may hit the OS page cache, like mmap)")
    ap.add_argument("--no-updates", action="store_true")
    ap.add_argument("--build-fill", type=float, default=0.8,
                    help="SPANN (GloVe): posting_limit = build cap / this (room for appends)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="SPANN: hold the most-probed lists in the RAM budget (pin_lists)")
    ap.add_argument("--parts", type=lambda s: set(s.split(",")),
                    default={"spann", "faiss", "hnsw", "diskann", "updates"},
                    help="which measurements to run (spann,faiss,hnsw,hnswlib,diskann,updates)")
    ap.add_argument("--name", default="spann", help="results file name")
    ap.add_argument("--update-n", type=int, default=0,
                    help="update stream: rows inserted (and as many deleted); 0 = 10%% of the set")
    ap.add_argument("--stream-n", type=int, default=5_000_000,
                    help="rows of the streamed synthetic set (--sets synthetic-stream)")
    ap.add_argument("--stream-nq", type=int, default=500)
    # 0.001: ~5k lists of ~1k vectors (~20 per generator cluster of ~20k); 0.01 (57k lists)
    # needed 96 lists for 0.81 (the RNG rule leaves ~1.2 replicas per vector on this data)
    ap.add_argument("--stream-head-ratio", type=float, default=0.001)
    ap.add_argument("--stream-lists", type=lambda s: [int(x) for x in s.split(",")],
                    default=[8, 12, 16, 24, 32, 48])
    ap.add_argument("--stream-nprobes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[8, 16, 32, 64, 128])
    ap.add_argument("--shards", default="", help="folder of the streamed set's .npy shards "
                    "(written there if missing)")
    args = ap.parse_args(argv)
    tmp = Path(args.tmp if not args.smoke else tempfile.mkdtemp(prefix="spann-smoke-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    extra: dict = {"block_cache_bytes": BLOCK_CACHE}
    ratio = {0.15: 0.0035, 0.30: 0.0035}  # RAM budget -> head_ratio (GloVe-50; see SPANN_KW)
    budgets = [(b, ratio[b]) for b in map(float, args.budgets.split(","))]
    if args.smoke:
        args.lists, args.nprobes, args.efs, args.Ls = [8, 32], [4, 16], [16, 64], [20, 40]
        args.no_diskann = True  # its index build alone takes longer than the whole smoke run
        X = np.concatenate(list(clustered_stream(4000, 32, chunk=1000, seed=1)))
        Q = X[:50] + 0.05
        gt, _ = exact_topk(Q, X, 10, metric_code("l2"))
        r, e = run_set("smoke", X, Q, gt, "l2", args, tmp, budgets)
        rows += r
        extra["smoke"] = e
        st = SPANNIndex(32, "l2", background=True, head_ratio=0.1, posting_limit=40)
        st.add(X[:3000])
        extra["smoke_updates"] = update_stream(st, X[3000:], np.arange(3000, 4000),
                                               np.arange(0, 500), Q, 200)
        print("  updates", extra["smoke_updates"], flush=True)
        # the streamed set's path (shards, streaming ground truth, build_stream, faiss streamed)
        args.stream_n, args.stream_nq, args.stream_head_ratio = 6000, 30, 0.05
        args.stream_lists, args.stream_nprobes, args.io_threads = [8, 32], [4, 16], [1, 4]
        r, e = run_stream_set(args, tmp, budgets)
        rows += r
        extra["smoke_stream"] = e
        write_results("spann-smoke", rows, extra)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for name in args.sets.split(","):
        if name == "glove-50":
            ds = load("glove-50")
            X, Q, gt, metric = ds.base, ds.queries[: args.nq], ds.gt[: args.nq], ds.metric
            r, e = run_set(name, X, Q, gt, metric, args, tmp, budgets)
            rows += [{**x, "set": name} for x in r]
            extra[name] = e
            if args.no_updates or "updates" not in args.parts:
                continue
            # updates: built on all but the last --update-n rows, then insert those while
            # deleting as many old ones (default 10% of the set)
            n0 = len(X) - (args.update_n or len(X) // 10)
            up0 = os.getloadavg()
            store = RocksKVStore(tmp / "spann-upd", block_cache_bytes=BLOCK_CACHE,
                                 direct_reads=True)
            upd = SPANNIndex(X.shape[1], metric, store, head_ratio=ratio[0.15],
                             threads=args.threads, **spann_kw(ratio[0.15], args.build_fill))
            upd.add(X[:n0])
            sizes = np.array(list(upd._sizes.values()))
            at_limit = float(np.mean(sizes >= upd.posting_limit))
            rng = np.random.default_rng(0)
            dead = rng.choice(n0, len(X) - n0, replace=False)
            u = update_stream(upd, X[n0:], np.arange(n0, len(X)), dead, Q, 1000)
            alive = np.setdiff1d(np.arange(len(X)), dead)
            g, _ = exact_topk(Q, X[alive], 10, metric_code(metric))
            I, _ = upd.search(Q, 10, params={"max_lists": 64, "eps": args.eps})
            u["recall_after_lists64"] = recall_at_k(I, alive[g], 10)
            u["deleted_returned"] = int(np.isin(I, dead).sum())
            u["lists_after"] = upd.num_lists()
            u.update(build_fill=args.build_fill, posting_limit=upd.posting_limit,
                     lists_at_limit_after_build=at_limit, lists_after_build=len(sizes))
            u["loadavg_stream"] = [list(up0), list(os.getloadavg())]
            store.close()
            print("  updates", u, flush=True)
            # the same configuration built fresh on the surviving set (in RAM: recall only)
            fresh = SPANNIndex(X.shape[1], metric, None, head_ratio=ratio[0.15],
                               threads=args.threads, **spann_kw(ratio[0.15], args.build_fill))
            fresh.add(X[alive], alive)
            If, _ = fresh.search(Q, 10, params={"max_lists": 64, "eps": args.eps})
            u["fresh_recall_lists64"] = recall_at_k(If, alive[g], 10)
            u["fresh_lists"] = fresh.num_lists()
            fresh.close()
            print("  updates", u, flush=True)
            extra[f"{name}_updates"] = u
        elif name == "synthetic-stream":
            r, e = run_stream_set(args, tmp, budgets)
            rows += r
            extra[e["set"]] = e
        elif name == "synthetic":
            n, d = args.synthetic_n, 128
            chunks = list(clustered_stream(n, d, chunk=50_000, seed=7))
            X = np.concatenate(chunks)
            del chunks
            rng = np.random.default_rng(1)
            Q = X[rng.choice(n, args.nq, replace=False)] + rng.standard_normal(
                (args.nq, d)).astype(np.float32) * 0.05
            gt, _ = exact_topk(Q, X, 10, metric_code("l2"))
            r, e = run_set(f"synthetic-{n}x{d}", X, Q, gt, "l2", args, tmp, budgets,
                           stream_chunk=50_000)
            rows += [{**x, "set": f"synthetic-{n}x{d}"} for x in r]
            extra[f"synthetic-{n}x{d}"] = e
    write_results(args.name, rows, extra)
    for s in sorted({r["set"] for r in rows}):
        sub = [r for r in rows if r["set"] == s]
        plot_curves(f"{args.name}-{s}", sub,
                    title=f"{s}: recall@10 vs QPS (1 thread, 1 query/call)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
