"""The SPANN bulk build's map stage through Ray Data vs Ray core tasks, in one run (issue 8).

    python -m bench.raydata_map --n 1000000 --shard 100000 --reps 2
    python -m bench.raydata_map --smoke

Same shards (``bench.datasets.clustered_stream``, .npy), same heads and head groups (trained
once, as ``bulk_build_spann`` does), then the map stage run alternately, ``--reps`` times each:

* ``ray-data``: what ``bulk_build_spann`` runs (``dataset.map_shards``: ``ShardDatasource`` read
  fused with ``bulk._map_block``, heads loaded once per worker process);
* ``core-tasks``: the map stage before Ray Data (commit eacc432): one Ray task per shard
  reading its batches itself (``_core_map_task`` below, kept as this benchmark's peer).

Per run: wall seconds, CPU-seconds of the process tree (driver, Ray, workers), the list
histogram (must be identical: the same assignments) and, for Ray Data, the executed operators
(fusion). Ray runs locally with 2 CPUs, BLAS one thread per process. Writes
bench/results/raydata-map[-smoke].json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import write_results  # noqa: E402


def _core_map_task(shard, task: int, dim: int, metric: str, heads: np.ndarray,
                   cfg: dict[str, Any], tenant_ids: dict[str, int], tenant: str, id_start: int,
                   columns, out: str, batch_rows: int, graph_path: str | None, search_ef: int,
                   groups_path: str | None = None) -> dict[str, Any]:
    """The pre-Ray-Data map task (eacc432 ``bulk._map_task``): one shard, read in batches by the
    task itself; the same per-batch work as ``bulk._map_block``."""
    from vecdb import _spann
    from vecdb.ingest.bulk import _rss, _SstSink, run_dtype, write_engine_rows
    from vecdb.ingest.heads import HeadSearch
    from vecdb.ingest.sources import read_batches
    from vecdb.kernels import metric_code, prepare

    code = metric_code(metric)
    heads = np.ascontiguousarray(heads, dtype=np.float32)
    t0 = time.perf_counter()
    search = HeadSearch(heads, code, graph_path, search_ef, groups_path)
    H = len(heads)
    C = min(cfg["candidates"], H)
    rdt = run_dtype()
    sst = {f: _SstSink(os.path.join(out, "sst", f"{f}-{task:06d}.sst"), f)
           for f in ("vectors", "acl", "payload")}
    vec_path = os.path.join(out, "vecs", f"vec-{task:06d}.npy")
    vecs = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32,
                                     shape=(max(1, shard.rows), dim))
    hist = np.zeros(H, dtype=np.int64)
    runs = []
    for k, b in enumerate(read_batches(shard, dim, batch_rows, 0, columns)):
        if not len(b):
            continue
        X = prepare(b.vectors, dim, metric)
        slots = shard.offset + b.rows
        write_engine_rows(sst, b, X, slots, tenant_ids, tenant, id_start,  # as _map_block
                          os.path.join(out, "sst", f"maps-{task:06d}-{k:06d}.npy"))
        vecs[b.rows] = X
        cand, cdist = search.search(X, C)
        keep = np.zeros(cand.shape, dtype=bool)
        _spann.rng_select_heads(None, heads, np.ascontiguousarray(cand, np.int64),
                                np.ascontiguousarray(cdist, np.float32),
                                int(cfg["replica_count"]), float(cfg["eps1"]), code,
                                keep.view(np.uint8))
        pts, cols = np.nonzero(keep)
        lid = cand[pts, cols].astype(np.int32)
        order = np.argsort(lid, kind="stable")
        run = np.empty(len(pts), dtype=rdt)
        run["lid"] = lid[order]
        run["sec"] = (cols > 0)[order]
        run["d"] = cdist[pts, cols][order]
        run["slot"] = slots[pts][order]
        hist += np.bincount(run["lid"], minlength=H)
        path = os.path.join(out, "runs", f"run-{task:06d}-{k:06d}.npy")
        np.save(path, run)
        runs.append(path)
    vecs.flush()
    del vecs
    for s in sst.values():
        s.finish()
    return {"hist": hist, "rss": _rss(), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shard", type=int, default=100_000)
    ap.add_argument("--head-ratio", type=float, default=0.12)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.dim, a.shard, a.reps, a.batch = 20_000, 32, 5_000, 1, 4_000
    import ray

    from bench.bulk import write_shards
    from vecdb.ingest import cpu
    from vecdb.ingest.bulk import (
        _fold_hist,
        _map_block,
        _spann_config,
        sample_rows_for,
        sample_stage,
        train_heads_file,
    )
    from vecdb.ingest.dataset import map_shards
    from vecdb.ingest.heads import HeadGroups, group_size
    from vecdb.ingest.online import init_ray
    from vecdb.ingest.sources import DEFAULT_COLUMNS, discover, plan
    from vecdb.kernels import metric_code

    init_ray(num_cpus=2)
    tmp = tempfile.mkdtemp(prefix="bench-rdmap-", dir=a.tmp)
    load_start = os.getloadavg()
    params = {"head_ratio": a.head_ratio, "replica_count": a.replicas}
    try:
        write_shards(os.path.join(tmp, "src"), a.n, a.dim, a.shard)
        shards, _ = plan(discover(os.path.join(tmp, "src")))
        cfg = _spann_config(a.dim, "l2", params)
        total = sum(s.rows for s in shards)
        p = min(1.0, sample_rows_for(cfg, total) / total)
        sample_dir = os.path.join(tmp, "sample")
        os.makedirs(sample_dir)
        sample, n_good, *_ = sample_stage(shards, a.dim, "l2", p, cfg["seed"], a.batch,
                                          DEFAULT_COLUMNS, [], "t", folder=sample_dir)
        build = os.path.join(tmp, "build")
        os.makedirs(build)
        heads_path = os.path.join(build, "heads.npy")  # copied into each run's out
        train_heads_file(sample, n_good, cfg, sample_dir, heads_path, groups=8)
        del sample
        heads = np.load(heads_path)  # for the head groups and the core-tasks mode's ray.put
        groups_path = os.path.join(build, "heads.groups.npz")
        HeadGroups.build(heads, metric_code("l2"), group_size(len(heads), a.probes), a.probes,
                         cfg["balance"], cfg["seed"]).save(groups_path)
        print(f"{a.n:,} x {a.dim} in {len(shards)} shards, {len(heads):,} heads")
        common = {"dim": a.dim, "metric": "l2", "cfg": cfg, "tenant_ids": {"t": 0},
                  "tenant": "t", "id_start": 0, "graph_path": None,
                  "search_ef": cfg["head_ef"], "groups_path": groups_path}
        rows, hists = [], {}
        for rep in range(a.reps):
            for mode in ("ray-data", "core-tasks"):
                out = os.path.join(tmp, f"out-{mode}-{rep}")
                for d in ("sst", "runs", "vecs"):
                    os.makedirs(os.path.join(out, d))
                shutil.copy(os.path.join(build, "heads.npy"), out)
                c0 = cpu.snapshot()
                t0 = time.perf_counter()
                extra: dict[str, Any] = {}
                if mode == "ray-data":
                    res, rd = map_shards(shards, a.dim, _map_block,
                                         {**common, "out": out,
                                          "offsets": [s.offset for s in shards]},
                                         batch_rows=a.batch)
                    hist = np.zeros(len(heads), np.int64)
                    prim = np.zeros(len(heads), np.int64)
                    for r in res:
                        if "hist" in r:  # the batch's histogram file (empty batches have none)
                            _fold_hist(r["hist"], hist, prim)
                    extra = {"operators": rd["operators"], "fused": rd["fused"],
                             "batches": len(res)}
                else:
                    t = ray.remote(num_cpus=1)(_core_map_task)
                    href = ray.put(heads)
                    res = ray.get([t.remote(s, i, a.dim, "l2", href, cfg, {"t": 0}, "t", 0,
                                            DEFAULT_COLUMNS, out, a.batch, None,
                                            cfg["head_ef"], groups_path)
                                   for i, s in enumerate(shards)])
                    hist = np.sum([r["hist"] for r in res], axis=0)
                el = time.perf_counter() - t0
                cs = cpu.cpu_between(c0, cpu.snapshot())
                hists[mode] = hist
                row = {"mode": mode, "rep": rep, "seconds": el, "cpu_seconds": cs,
                       "task_seconds": sum(r["seconds"] for r in res),
                       "assignments": int(hist.sum()),
                       "worker_peak_rss": max(r["rss"] for r in res), **extra}
                rows.append(row)
                print(f"rep {rep} {mode:<10} {el:6.1f}s wall {cs:6.1f} CPU-s "
                      f"{row['assignments']:,} assignments {extra.get('operators', '')}")
                shutil.rmtree(out, ignore_errors=True)
            assert np.array_equal(hists["ray-data"], hists["core-tasks"]), "different lists"

        def med(mode: str, k: str) -> float:
            return float(np.median([r[k] for r in rows if r["mode"] == mode]))
        summary = {"n": a.n, "dim": a.dim, "shards": len(shards), "heads": int(len(heads)),
                   "batch_rows": a.batch, "reps": a.reps,
                   "wall_ratio_raydata_over_core": med("ray-data", "seconds")
                   / med("core-tasks", "seconds"),
                   "cpu_ratio_raydata_over_core": med("ray-data", "cpu_seconds")
                   / med("core-tasks", "cpu_seconds"),
                   "same_assignments": True, "loadavg_start": load_start,
                   "loadavg_end": os.getloadavg()}
        print(f"Ray Data / core tasks (median of {a.reps}): "
              f"{summary['wall_ratio_raydata_over_core']:.3f}x wall, "
              f"{summary['cpu_ratio_raydata_over_core']:.3f}x CPU; load {load_start} -> "
              f"{summary['loadavg_end']}")
        write_results("raydata-map-smoke" if a.smoke else "raydata-map", rows,
                      {"summary": summary})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
