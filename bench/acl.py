"""Per-slot access lists (``vecdb.index.acl.AccessLists``): memory per slot and the cost of the
operations the indexes call, optionally beside an older version of ``acl.py`` from git.

N slots, T tenants, one owner per slot, then 1% of the slots granted a second tenant. Reports
traced bytes per slot (with and without the per-tenant bitmaps), ``add_csr`` for fresh slots,
for replacing every slot and for batches of 1000 existing slots (an upsert), ``set``, ``grant``,
``clear``, ``to_arrays``/``from_arrays``. Writes ``bench/results/acl.json``.

    python -m bench.acl --baseline 1610785     # this tree vs acl.py at commit 1610785
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench.common import write_results

ROOT = Path(__file__).resolve().parents[1]


def _module(ref: str | None):
    """``vecdb.index.acl`` of this tree, or the file as it was at git ``ref``."""
    if ref is None:
        import vecdb.index.acl as mod
        return mod
    src = subprocess.run(["git", "show", f"{ref}:vecdb/index/acl.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"acl_{ref}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"acl_{ref}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _time(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def measure(mod, n: int, tenants: int) -> dict:
    AL = mod.AccessLists
    rng = np.random.default_rng(0)
    owners = rng.integers(0, tenants, n).astype(np.int32)
    slots = np.arange(n, dtype=np.int64)
    indptr = np.arange(n + 1, dtype=np.int64)
    r: dict = {}
    gc.collect()
    tracemalloc.start()
    a = AL(1024)
    a.add_csr(slots, indptr, owners)
    cur, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    bitmaps = tenants * ((n + 7) // 8)
    r["bytes_per_slot"] = cur / n
    r["bytes_per_slot_beyond_bitmaps"] = (cur - bitmaps) / n
    del a
    gc.collect()
    a = AL(1024)
    r["add_csr_fresh_s"] = _time(lambda: a.add_csr(slots, indptr, owners))
    g = rng.choice(n, n // 100, replace=False)
    r["grant_us"] = _time(lambda: [a.grant(int(s), int((owners[s] + 1) % tenants))
                                   for s in g.tolist()]) / len(g) * 1e6
    new = rng.integers(0, tenants, n).astype(np.int32)
    r["add_csr_replace_all_s"] = _time(lambda: a.add_csr(slots, indptr, new))
    m = min(n, 100_000)
    sub = rng.choice(n, m, replace=False)
    r["set_us"] = _time(lambda: [a.set(s, [int(new[s] + 1) % tenants])
                                 for s in sub.tolist()]) / m * 1e6
    b = rng.choice(n, 1000, replace=False).astype(np.int64)
    ip = np.arange(1001, dtype=np.int64)
    tt = rng.integers(0, tenants, 1000).astype(np.int32)
    r["add_csr_1000_existing_us_per_slot"] = _time(
        lambda: [a.add_csr(b, ip, tt) for _ in range(20)]) / 20 / 1000 * 1e6
    arrs = {}
    r["to_arrays_s"] = _time(lambda: arrs.update(a.to_arrays()))
    r["from_arrays_s"] = _time(lambda: AL.from_arrays(arrs, n))
    c = rng.choice(n, m, replace=False)
    r["clear_us"] = _time(lambda: [a.clear(s) for s in c.tolist()]) / m * 1e6
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--baseline", default=None, help="git ref of an older acl.py to compare")
    a = ap.parse_args()
    n = 20_000 if a.smoke else a.n
    rows = []
    for label, ref in [("this tree", None)] + ([(a.baseline, a.baseline)] if a.baseline else []):
        row = {"system": f"AccessLists ({label})", "n": n, "tenants": a.tenants,
               **measure(_module(ref), n, a.tenants)}
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    write_results("acl-smoke" if a.smoke else "acl", rows)


if __name__ == "__main__":
    sys.exit(main())
