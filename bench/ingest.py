"""Embedded ingest, recovery and disk footprint of the engine (issue 4).

    python -m bench.ingest                 # full: 1M x 128 flat (sync off/on); 50k HNSW if present
    python -m bench.ingest --smoke         # seconds; what CI runs
    python -m bench.ingest --n 300000 --hnsw-n 100000

Questions, all measured in one run on the same data (clustered synthetic, float32):

* vectors/s of ``Collection.upsert`` (large batches, one tenant) into a flat collection with
  ``sync`` off and on, against the raw ``FlatIndex.add`` rate on the same vectors: the ratio is
  the engine's overhead (validation, RocksDB batch, oplog, maps);
* the same for HNSW (``vecdb.index.hnsw``, when it exists) against raw ``HNSWIndex.add``
  (goal: >= 0.8x, i.e. index-bound);
* reopen time of the collection: from a checkpoint (the normal case after a clean close or a
  background checkpoint) and by oplog replay (no checkpoint: a crash before the first one);
* bytes on disk per vector (RocksDB after a flush, and the checkpoint);
* recall@10 of the ingested collection against exact ground truth, as a sanity check.

Single-threaded Python (BLAS pinned to one thread); RocksDB runs its own background flush and
compaction threads. The machine is shared with other jobs, so prefer the ratios.
Writes bench/results/ingest.json and ingest.png (cumulative rate vs vectors ingested).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import vecdb  # noqa: E402
from bench.common import peak_rss_bytes, plot_curves, recall_at_k, write_results  # noqa: E402
from bench.datasets import clustered_stream, exact_gt  # noqa: E402
from vecdb.storage.rocks import folder_bytes  # noqa: E402


def raw_rate(kind: str, X: np.ndarray, batch: int, params: dict) -> tuple[float, float]:
    """Vectors/s (wall, CPU) of the bare index ``add``, same batches, one-tenant access lists."""
    from vecdb.engine.collection import build_index

    idx = build_index(kind, X.shape[1], "l2", params)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(X), batch):
        b = X[s : s + batch]
        idx.add(b, np.arange(s, s + len(b)),
                (np.arange(len(b) + 1, dtype=np.int64), np.zeros(len(b), dtype=np.int32)))
    return len(X) / (time.perf_counter() - t0), len(X) / (time.process_time() - c0)


def run_engine(root: str, kind: str, X: np.ndarray, batch: int, sync: bool, params: dict,
               Q: np.ndarray, gt: np.ndarray, curve: list[dict], label: str) -> dict:
    """Ingest X into a fresh collection; measure rate, close/checkpoint, reopen, disk, recall."""
    path = os.path.join(root, f"{kind}-{'sync' if sync else 'nosync'}")
    db = vecdb.open(path, sync=sync, background_checkpoints=False, checkpoint_on_close=False)
    col = db.create_collection("c", dim=X.shape[1], metric="l2", index=kind, params=params)
    col.create_tenant("t")
    n = len(X)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, n, batch):
        e = min(n, s + batch)
        col.upsert(np.arange(s, e, dtype=np.uint64), X[s:e], tenant="t")
        curve.append({"system": label, "n": e, "vectors_per_s": e / (time.perf_counter() - t0)})
    ingest_s = time.perf_counter() - t0
    ingest_cpu_s = time.process_time() - c0  # this process's threads (incl. RocksDB's)
    res = col.search(Q, k=10, tenant="t")
    recall = recall_at_k(res.ids, gt, 10)
    col.flush()
    store_bytes = folder_bytes(os.path.join(col.path, "store"))
    row = {"system": label, "index": kind, "sync": sync, "n": n, "dim": X.shape[1],
           "batch": batch, "ingest_s": ingest_s, "vectors_per_s": n / ingest_s,
           "ingest_cpu_s": ingest_cpu_s, "vectors_per_cpu_s": n / ingest_cpu_s,
           "recall_at_10": recall, "store_bytes_per_vector": store_bytes / n}
    # reopen by oplog replay (no checkpoint yet: as after a crash before the first checkpoint)
    db.close()
    t0 = time.perf_counter()
    db = vecdb.open(path, background_checkpoints=False, checkpoint_on_close=False)
    col = db.collection("c")
    row["reopen_replay_s"] = time.perf_counter() - t0
    assert col.recovery["source"] == "empty" and len(col) == n, col.recovery
    # checkpoint, then reopen from it
    t0 = time.perf_counter()
    col.checkpoint()
    row["checkpoint_s"] = time.perf_counter() - t0
    ck = [d for d in os.listdir(col.path) if d.startswith("ckpt-")]
    row["checkpoint_bytes_per_vector"] = folder_bytes(os.path.join(col.path, ck[0])) / n
    db.close()
    t0 = time.perf_counter()
    db = vecdb.open(path, background_checkpoints=False)
    col = db.collection("c")
    row["reopen_checkpoint_s"] = time.perf_counter() - t0
    assert col.recovery["source"] == "checkpoint" and len(col) == n, col.recovery
    res2 = col.search(Q, k=10, tenant="t")
    assert recall_at_k(res2.ids, gt, 10) >= recall - 0.02  # same index after the round trip
    row["disk_bytes_per_vector"] = folder_bytes(col.path) / n
    db.close()
    shutil.rmtree(path, ignore_errors=True)
    return row


def add_ratios(r: dict, raw: float, raw_cpu: float) -> None:
    r["raw_index_vectors_per_s"] = raw
    r["raw_index_vectors_per_cpu_s"] = raw_cpu
    r["ratio_to_raw_index"] = r["vectors_per_s"] / raw
    r["cpu_ratio_to_raw_index"] = r["vectors_per_cpu_s"] / raw_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for flat (default 1M)")
    ap.add_argument("--hnsw-n", type=int, default=50_000,
                    help="vectors for HNSW (default 50k: a 1M build takes too long here)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="where to put the databases (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds) for CI")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.hnsw_n, a.dim, a.batch = 4000, 2000, 32, 1000
    root = tempfile.mkdtemp(prefix="vecdb-ingest-", dir=a.dir)
    n_max = max(a.n, a.hnsw_n)
    X = np.concatenate(list(clustered_stream(n_max, a.dim, chunk=100_000, seed=1)))
    Q = next(iter(clustered_stream(100, a.dim, seed=2)))
    rows: list[dict] = []
    curve: list[dict] = []
    try:
        gt = exact_gt(X[: a.n], Q, 10, "l2")
        for sync in (False, True):
            raw, raw_cpu = raw_rate("flat", X[: a.n], a.batch, {})  # measured next to each run
            r = run_engine(root, "flat", X[: a.n], a.batch, sync, {}, Q, gt, curve,
                           f"flat sync={'on' if sync else 'off'}")
            add_ratios(r, raw, raw_cpu)
            rows.append(r)
            print(r, flush=True)
        try:
            importlib.import_module("vecdb.index.hnsw")
            have_hnsw = True
        except ImportError:
            have_hnsw = False
            print("vecdb.index.hnsw not present: HNSW rows skipped", flush=True)
        if have_hnsw and a.hnsw_n:
            Xh = X[: a.hnsw_n]
            gt_h = exact_gt(Xh, Q, 10, "l2")
            raw, raw_cpu = raw_rate("hnsw", Xh, a.batch, {})
            for sync in (False, True):
                r = run_engine(root, "hnsw", Xh, a.batch, sync, {}, Q, gt_h, curve,
                               f"hnsw sync={'on' if sync else 'off'}")
                add_ratios(r, raw, raw_cpu)
                rows.append(r)
                print(r, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    name = "ingest-smoke" if a.smoke else "ingest"
    write_results(name, rows, {"peak_rss_bytes": peak_rss_bytes(), "curve": curve})
    plot_curves(name, curve, title="engine ingest: cumulative vectors/s", x="n",
                y="vectors_per_s", logy=False)
    for r in rows:
        print(f"{r['system']:>16}: {r['vectors_per_s']:>9.0f} vec/s "
              f"({r['ratio_to_raw_index']:.2f}x raw index), {r['vectors_per_cpu_s']:>9.0f} "
              f"vec/CPU-s ({r['cpu_ratio_to_raw_index']:.2f}x)  "
              f"reopen ckpt {r['reopen_checkpoint_s']:.2f}s  replay "
              f"{r['reopen_replay_s']:.2f}s  disk {r['disk_bytes_per_vector']:.0f} B/vec  "
              f"recall@10 {r['recall_at_10']:.3f}")


if __name__ == "__main__":
    main()
