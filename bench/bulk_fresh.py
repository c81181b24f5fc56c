"""The single-stream online baseline into a fresh SPANN collection, alone (issue 8).

``bench.bulk`` measures it in the same run as the offline path, but after the into-imported
streams, whose tens of GB of writes can still be in write-back; this runs only the fresh stream,
with ``os.sync`` before each repetition, on the same rows and settings as ``bench.bulk`` (the
first ``--n`` rows of its data set, ``--batch``-row batches, SPANN ``head_ratio``/``replica_count``
as given, one Ray worker into an embedded sink, CPU of the whole local Ray process tree).

    python -m bench.bulk_fresh [--n 20000] [--reps 5] [--name bulk-fresh]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from bench.bulk import online_rate, spread, warm_up, write_shards
from bench.common import write_results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--head-ratio", type=float, default=0.02)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--name", default=None, help="default bulk-fresh (bulk-fresh-smoke)")
    ap.add_argument("--smoke", action="store_true", help="2,000 rows, 1 repetition (CI)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.batch, a.reps = 2000, 500, 1
    from vecdb.ingest.online import init_ray

    init_ray(num_cpus=2)
    tmp = tempfile.mkdtemp(prefix="bench-bulk-fresh-", dir=a.tmp)
    try:
        src = write_shards(os.path.join(tmp, "src"), a.n, a.dim, 250_000, seed=0)
        params = {"head_ratio": a.head_ratio, "replica_count": a.replicas, "background": False,
                  "threads": 2}
        load0 = os.getloadavg()
        warm = warm_up(tmp, a.dim)
        reps = [online_rate(src, a.n, a.dim, a.workers, params, tmp, a.batch, r)
                for r in range(a.reps)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"loadavg_start": load0, "loadavg_end": os.getloadavg(), "warm_up_seconds": warm,
           "params": params, "n": a.n, "batch": a.batch, "workers": a.workers,
           "fresh": spread(reps)}
    path = write_results(a.name or ("bulk-fresh-smoke" if a.smoke else "bulk-fresh"), reps, out)
    v, c = out["fresh"]["vectors_per_s"], out["fresh"]["vectors_per_cpu_s"]
    print(f"fresh single stream x{a.reps}: {v['median']:,.0f} vectors/s "
          f"({v['min']:,.0f}-{v['max']:,.0f}), {c['median']:,.0f} per CPU-second "
          f"({c['min']:,.0f}-{c['max']:,.0f}) -> {path}")


if __name__ == "__main__":
    main()
