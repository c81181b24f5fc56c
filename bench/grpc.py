"""gRPC service over loopback vs the same engine in-process.

Questions, answered in one run on the same data:
1. UpsertStream ingestion rate, d=128 into a flat collection (goal >= 100k vectors/s), next to
   the embedded ``Collection.upsert`` rate with the same batches.
2. Search latency p50/p99 with 1, 8, 32, 64 concurrent clients (one query per request, k=10),
   remote vs in-process (threads calling ``Collection.search``); p50 overhead at 1 client
   (goal <= 0.3 ms); max QPS; errors under load (goal: none). Remote results are checked to
   equal in-process results.

    python -m bench.grpc          # full: 200k ingest, 20k-vector search collection, 3 s/level
    python -m bench.grpc --smoke    # seconds

Client threads, the server and (for the in-process rows) the engine share this machine's cores,
so compare ratios; other agents' load moves absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np

import vecdb
from bench.common import Timer, plot_curves, write_results
from vecdb.server.testing import ServerProcess


def _batches(X: np.ndarray, size: int, start: int = 0):
    for lo in range(0, len(X), size):
        yield np.arange(start + lo, start + lo + min(size, len(X) - lo)), X[lo: lo + size]


def _load(fn_factory, clients: int, seconds: float, Q: np.ndarray) -> dict:
    """``clients`` threads each call ``fn(q)`` in a loop for ``seconds``; latencies + QPS."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errs = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        fn = fn_factory()
        rng = np.random.default_rng(i)
        start.wait()
        while not stop.is_set():
            q = Q[rng.integers(len(Q))][None]
            t0 = time.perf_counter()
            try:
                fn(q)
            except Exception:
                errs[i] += 1
                continue
            lat[i].append(time.perf_counter() - t0)

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ths:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ths:
        t.join()
    el = time.perf_counter() - t0
    all_lat = np.concatenate([np.array(x) for x in lat]) * 1e3
    return {"clients": clients, "requests": int(len(all_lat)), "errors": int(sum(errs)),
            "qps": len(all_lat) / el, "p50_ms": float(np.percentile(all_lat, 50)),
            "p99_ms": float(np.percentile(all_lat, 99)), "mean_ms": float(all_lat.mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=200_000, help="vectors streamed for the ingest rate")
    ap.add_argument("--n-search", type=int, default=20_000, help="vectors of the search set")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    ap.add_argument("--clients", default="1,8,32,64")
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.n_search, a.seconds, a.clients, a.batch = 5000, 1000, 0.3, "1,8", 1000
    levels = [int(c) for c in a.clients.split(",")]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((a.n, a.dim)).astype(np.float32)
    S = X[: a.n_search]
    Q = rng.standard_normal((1000, a.dim)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="vecdb-bench-grpc-")
    rows: list[dict] = []
    try:
        srv = ServerProcess(os.path.join(tmp, "srv"), extra_args=("--workers", "32"))
        with srv, vecdb.open(os.path.join(tmp, "emb")) as db:
            client = vecdb.Client(srv.address, api_key=srv.api_key)
            # 1. ingestion
            rcol = client.create_collection("ingest", dim=a.dim, index="flat")
            rcol.create_tenant("t")
            with Timer() as t:
                n = rcol.ingest(_batches(X, a.batch), tenant="t", window=8)
            assert n == a.n and rcol.count() == a.n
            ecol = db.create_collection("ingest", dim=a.dim, index="flat")
            ecol.create_tenant("t")
            with Timer() as te:
                for ids, B in _batches(X, a.batch):
                    ecol.upsert(ids, B, tenant="t")
            rows.append({"system": "grpc UpsertStream", "test": "ingest", "n": a.n,
                         "dim": a.dim, "batch": a.batch, "vectors_per_s": a.n / t.s})
            rows.append({"system": "in-process upsert", "test": "ingest", "n": a.n,
                         "dim": a.dim, "batch": a.batch, "vectors_per_s": a.n / te.s})
            print(f"ingest d={a.dim}: grpc {a.n / t.s:,.0f}/s, in-process {a.n / te.s:,.0f}/s")
            client.drop_collection("ingest")
            db.drop_collection("ingest")
            # 2. search latency
            rs = client.create_collection("lat", dim=a.dim, index="flat")
            rs.create_tenant("t")
            rs.ingest(_batches(S, a.batch), tenant="t")
            es = db.create_collection("lat", dim=a.dim, index="flat")
            es.create_tenant("t")
            for ids, B in _batches(S, a.batch):
                es.upsert(ids, B, tenant="t")
            r1, r2 = rs.search(Q[:50], k=10, tenant="t"), es.search(Q[:50], k=10, tenant="t")
            np.testing.assert_array_equal(r1.ids, r2.ids)  # same answers both ways

            def remote():
                c = vecdb.Client(srv.address, api_key=srv.api_key)
                col = c.collection("lat")
                return lambda q: col.search(q, k=10, tenant="t")

            def local():
                return lambda q: es.search(q, k=10, tenant="t")

            def floor():  # gRPC's own round trip (health check: no vecdb code at all)
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                c = vecdb.Client(srv.address)
                stub, req = health_pb2_grpc.HealthStub(c._channel), health_pb2.HealthCheckRequest()
                return lambda q: stub.Check(req, timeout=10)

            r = _load(floor, 1, a.seconds, Q)
            r.update(system="grpc floor (health check)", test="floor")
            rows.append(r)
            print(f"grpc floor (empty health check), 1 client: p50 {r['p50_ms']:.3f} ms")

            for c in levels:
                for system, fn in (("in-process", local), ("grpc", remote)):
                    r = _load(fn, c, a.seconds, Q)
                    r.update(system=system, test="search", n=a.n_search, dim=a.dim, k=10)
                    rows.append(r)
                    print(f"search {system:10s} clients={c:3d}: p50 {r['p50_ms']:.3f} ms "
                          f"p99 {r['p99_ms']:.3f} ms  {r['qps']:,.0f} QPS  errors {r['errors']}")
            client.close()
        assert srv.proc.returncode == 0, "server did not shut down cleanly"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    srch = [r for r in rows if r["test"] == "search"]
    one = {r["system"]: r for r in srch if r["clients"] == levels[0]}
    summary = {
        "p50_overhead_ms_1_client": one["grpc"]["p50_ms"] - one["in-process"]["p50_ms"],
        "grpc_floor_p50_ms": next(r["p50_ms"] for r in rows if r["test"] == "floor"),
        "max_qps_grpc": max(r["qps"] for r in srch if r["system"] == "grpc"),
        "max_qps_in_process": max(r["qps"] for r in srch if r["system"] == "in-process"),
        "errors_under_load": sum(r["errors"] for r in srch if r["system"] == "grpc"),
        "ingest_ratio_grpc_vs_in_process": rows[0]["vectors_per_s"] / rows[1]["vectors_per_s"],
    }
    print({k: round(v, 3) for k, v in summary.items()})
    name = "grpc-smoke" if a.smoke else "grpc"
    write_results(name, rows, extra={"summary": summary})
    plot_curves(name, srch, title=f"search p50 latency, flat {a.n_search}x{a.dim}, k=10",
                x="clients", y="p50_ms", group="system", logy=False)


if __name__ == "__main__":
    main()
