"""The engine's id -> slot map: native ``vecdb._idmap.IdMap`` vs the Python dict it replaced.

Per size N (random distinct int62 ids, shuffled), in a fresh subprocess per (system, N) so RSS
deltas are clean: resident bytes per id after a bulk build, bulk build ns/id, incremental inserts
in batches of 1000 (what upserts do; growth included), lookups in one batch of 1M and in batches of
1000. Writes ``bench/results/idmap.json``.

    python -m bench.idmap                  # N = 1M and 10M
    python -m bench.idmap --sizes 1000000  # one size
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import numpy as np

from bench.common import write_results


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _ids(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 1 << 62, size=int(n * 1.001) + 16, dtype=np.uint64))
    ids = ids[rng.permutation(len(ids))[:n]]
    if len(ids) < n:
        raise RuntimeError("not enough distinct ids drawn")
    return ids


def measure(system: str, n: int, nlookup: int) -> dict:
    """One (system, n) measurement in this process."""
    from vecdb._idmap import IdMap

    rng = np.random.default_rng(2)
    ids = _ids(n)
    slots = np.arange(n, dtype=np.int64)
    q = ids[rng.integers(0, n, size=nlookup)]
    small = [ids[rng.integers(0, n, size=1000)] for _ in range(200)]
    gc.collect()
    r0 = _rss()
    t = time.perf_counter()
    if system == "dict":
        m = dict(zip(ids.tolist(), slots.tolist(), strict=True))
        get = m.get

        def lookup(x: np.ndarray) -> np.ndarray:
            return np.fromiter((get(i, -1) for i in x.tolist()), dtype=np.int64, count=len(x))
    else:
        m = IdMap.from_arrays(ids, slots)
        lookup = m.lookup
    build = time.perf_counter() - t
    gc.collect()
    rss = _rss() - r0
    t = time.perf_counter()
    out = lookup(q)
    big = time.perf_counter() - t
    if not (ids[out] == q).all():
        raise AssertionError(f"{system}: lookup returned wrong slots")
    t = time.perf_counter()
    for x in small:
        lookup(x)
    little = (time.perf_counter() - t) / len(small)
    del m, lookup
    gc.collect()
    t = time.perf_counter()
    if system == "dict":
        m2: dict | IdMap = {}
        for i in range(0, n, 1000):
            m2.update(zip(ids[i:i + 1000].tolist(), slots[i:i + 1000].tolist(), strict=True))
    else:
        m2 = IdMap()
        for i in range(0, n, 1000):
            m2.insert(ids[i:i + 1000], slots[i:i + 1000])
    ins = time.perf_counter() - t
    if len(m2) != n:
        raise AssertionError(f"{system}: {len(m2)} ids after inserting {n}")
    return {"system": system, "n": n, "rss_bytes_per_id": rss / n,
            "build_ns_per_id": build / n * 1e9, "insert_1000_ns_per_id": ins / n * 1e9,
            "lookup_big_ns_per_id": big / nlookup * 1e9,
            "lookup_1000_ns_per_id": little / 1e3 * 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--one", nargs=2, metavar=("SYSTEM", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        n = int(a.one[1])
        print(json.dumps(measure(a.one[0], n, min(n, 1_000_000))))
        return
    sizes = [20_000] if a.smoke else [int(x) for x in a.sizes.split(",")]
    rows = []
    for n in sizes:
        for system in ("idmap", "dict"):
            out = subprocess.run([sys.executable, "-m", "bench.idmap", "--one", system, str(n)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{system:5s} N={n:>11,}: {row['rss_bytes_per_id']:6.1f} B/id, build "
                  f"{row['build_ns_per_id']:6.1f} ns/id, insert(1000) "
                  f"{row['insert_1000_ns_per_id']:6.1f} ns/id, lookup(1M) "
                  f"{row['lookup_big_ns_per_id']:6.1f} ns/id, lookup(1000) "
                  f"{row['lookup_1000_ns_per_id']:6.1f} ns/id", flush=True)
    write_results("idmap-smoke" if a.smoke else "idmap", rows)


if __name__ == "__main__":
    main()
