"""Multi-tenant search: vecdb Curator vs per-tenant HNSW vs shared filtered HNSW / IVF.

    python -m bench.multitenant                       # glove-wordnet + synthetic 200k x 128
    python -m bench.multitenant --n 1000000           # the issue's full synthetic size
    python -m bench.multitenant --smoke               # seconds; what CI runs

Same data, same queries, one run, single thread (BLAS/OpenMP pinned to one thread), one query
per call (latency-style, like a tenant's request), each query's latency the best of 3 passes.
For every system and knob setting: recall@10 against the *filtered* exact ground truth, overall
and per tenant-size bucket (small < 100, medium 100-999, large >= 1000 vectors), QPS, p99
latency, build time, and index memory beyond the raw vectors (per-tenant HNSW copies a vector
into every tenant's graph, so its copies count). Then insert+grant, grant, revoke and delete
latencies (mean of a few hundred operations, after the search measurements so they do not
disturb them).

Systems:
  * ``per-tenant-hnsw``: one hnswlib index per tenant (M=16, ef_construction=100), ef swept;
  * ``faiss-hnsw+bitmap``: one faiss ``IndexHNSWFlat`` (M=32) over all vectors, searched with an
    ``IDSelectorBitmap`` of the tenant (a packed bitmap per tenant), efSearch swept;
  * ``faiss-ivf+bitmap``: faiss ``IndexIVFFlat`` (nlist ~ 4 sqrt(n)) + the same selector, nprobe
    swept;
  * ``vecdb-hnsw``: vecdb's own tenant-filtered HNSW, when ``vecdb.index.hnsw`` exists;
  * ``vecdb-curator``: this package's Curator index, (gamma1, gamma2) swept.
Writes ``bench/results/multitenant.json`` and per-bucket recall-QPS plots
``bench/results/multitenant-<dataset>-<bucket>.png``. The machine is shared with other jobs, so
read ratios between systems (measured in the same run) rather than absolute numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import interpolate_qps, peak_rss_bytes, plot_curves, write_results  # noqa: E402
from bench.datasets import Dataset, load, multitenant  # noqa: E402

K = 10
REPEATS = 3
BUCKETS = (("small", 0, 100), ("medium", 100, 1000), ("large", 1000, 1 << 62))


# ----------------------------------------------------------------------------- systems
class System:
    """One contender: build, search one query for one tenant, and the four update operations."""

    name = "?"

    def build(self, ds: Dataset, members: dict[int, np.ndarray]) -> None: ...
    def settings(self) -> list[dict]: ...
    def search(self, q: np.ndarray, tenant: int, setting: dict) -> np.ndarray: ...
    def memory_beyond_raw(self) -> int: ...
    def insert(self, row: int, vec: np.ndarray, tenants: list[int]) -> None: ...
    def grant(self, row: int, tenant: int) -> None: ...
    def revoke(self, row: int, tenant: int) -> None: ...
    def delete(self, row: int, tenants: list[int]) -> None: ...


class PerTenantHNSW(System):
    name = "per-tenant-hnsw"

    def __init__(self, smoke: bool):
        self.M, self.efc = 16, 100
        # dense around the knee (recall 0.95), as dense as Curator's grid, so "fastest setting
        # meeting the goal" is not decided by grid spacing
        self.efs = [10, 20, 40, 80] if smoke else [10, 12, 14, 16, 20, 24, 32, 40, 80, 160, 320]

    def build(self, ds, members):
        import hnswlib

        self.space = "l2" if ds.metric == "l2" else "ip"
        self.base, self.idx, self.dim = ds.base, {}, ds.dim
        for t, rows in members.items():
            ix = hnswlib.Index(space=self.space, dim=ds.dim)
            ix.init_index(max_elements=len(rows) + 64, ef_construction=self.efc, M=self.M,
                          allow_replace_deleted=False)
            ix.set_num_threads(1)
            ix.add_items(ds.base[rows], rows, num_threads=1)
            self.idx[t] = ix
        self._ef = None

    def settings(self):
        return [{"ef": e} for e in self.efs]

    def search(self, q, tenant, setting):
        ix = self.idx.get(tenant)
        if ix is None:
            return np.full(K, -1)
        if self._ef != setting["ef"]:
            for x in self.idx.values():
                x.set_ef(setting["ef"])
            self._ef = setting["ef"]
        k = min(K, ix.get_current_count())
        labels, _ = ix.knn_query(q, k=k, num_threads=1)
        return labels[0]

    def memory_beyond_raw(self):
        # hnswlib layout: level-0 block (links 2M + count + vector + label) per element, upper
        # levels ~ 1/M of elements with M links each, plus per-element bookkeeping.
        n = sum(ix.get_current_count() for ix in self.idx.values())
        level0 = (2 * self.M * 4 + 4) + self.dim * 4 + 8
        upper = (self.M * 4 + 4) / (self.M - 1) + 8 + 8
        total = int(n * (level0 + upper))
        return total - self.base.nbytes

    def insert(self, row, vec, tenants):
        for t in tenants:
            self.grant(row, t, vec)

    def grant(self, row, tenant, vec=None):
        ix = self.idx[tenant]
        if ix.get_current_count() >= ix.get_max_elements():
            ix.resize_index(ix.get_max_elements() * 2)
        ix.add_items((self.base[row] if vec is None else vec)[None], [row], num_threads=1)

    def revoke(self, row, tenant):
        self.idx[tenant].mark_deleted(row)

    def delete(self, row, tenants):
        for t in tenants:
            self.idx[t].mark_deleted(row)


class _FaissShared(System):
    """A shared faiss index searched with a per-tenant ``IDSelectorBitmap``."""

    def build(self, ds, members):
        import faiss

        faiss.omp_set_num_threads(1)
        self.faiss = faiss
        self.n = len(ds.base)
        self.cap = self.n + 4096  # room for the inserts of the update test
        self.bitmaps = {}
        for t, rows in members.items():
            mask = np.zeros(self.cap, dtype=bool)
            mask[rows] = True
            self.bitmaps[t] = np.packbits(mask, bitorder="little")
        self.sels = {t: faiss.IDSelectorBitmap(self.cap, faiss.swig_ptr(b))
                     for t, b in self.bitmaps.items()}
        self.metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.raw = ds.base.nbytes
        self._build_index(ds)

    def search(self, q, tenant, setting):
        sel = self.sels.get(tenant)
        if sel is None:
            return np.full(K, -1)
        _, labels = self.index.search(q[None], K, params=self._params(sel, setting))
        return labels[0]

    def memory_beyond_raw(self):
        size = len(self.faiss.serialize_index(self.index))
        return size - self.raw + sum(b.nbytes for b in self.bitmaps.values())

    def _set(self, row, tenant, on):
        b = self.bitmaps[tenant]
        if on:
            b[row >> 3] |= np.uint8(1 << (row & 7))
        else:
            b[row >> 3] &= np.uint8(~(1 << (row & 7)) & 0xFF)

    def insert(self, row, vec, tenants):
        self.index.add(vec[None])  # faiss assigns the next id (== row in the update test)
        for t in tenants:
            self._set(row, t, True)

    def grant(self, row, tenant):
        self._set(row, tenant, True)

    def revoke(self, row, tenant):
        self._set(row, tenant, False)

    def delete(self, row, tenants):
        for t in tenants:
            self._set(row, t, False)


class FaissHNSW(_FaissShared):
    name = "faiss-hnsw+bitmap"

    def __init__(self, smoke: bool):
        self.efs = [16, 32, 64] if smoke else [16, 32, 64, 128, 256, 512]

    def _build_index(self, ds):
        self.index = self.faiss.IndexHNSWFlat(ds.dim, 32, self.metric)
        self.index.hnsw.efConstruction = 80
        self.index.add(ds.base)

    def settings(self):
        return [{"ef": e} for e in self.efs]

    def _params(self, sel, s):
        return self.faiss.SearchParametersHNSW(sel=sel, efSearch=s["ef"])


class FaissIVF(_FaissShared):
    name = "faiss-ivf+bitmap"

    def __init__(self, smoke: bool):
        self.probes = [1, 4, 16] if smoke else [1, 2, 4, 8, 16, 32, 64, 128]

    def _build_index(self, ds):
        f = self.faiss
        nlist = max(4, int(4 * np.sqrt(len(ds.base))))
        quant = f.IndexFlatL2(ds.dim) if self.metric == f.METRIC_L2 else f.IndexFlatIP(ds.dim)
        self.index = f.IndexIVFFlat(quant, ds.dim, nlist, self.metric)
        self.index.train(ds.base)
        self.index.add(ds.base)
        self._quant = quant

    def settings(self):
        return [{"nprobe": p} for p in self.probes]

    def _params(self, sel, s):
        return self.faiss.SearchParametersIVF(sel=sel, nprobe=s["nprobe"])


class _VecdbIndex(System):
    """A vecdb index driven exactly as the engine drives it (slots = rows, acl in CSR)."""

    def build(self, ds, members):
        self.index = self._make(ds)
        self.index.add(ds.base, acl=(ds.acl_indptr, ds.acl_indices))

    def search(self, q, tenant, setting):
        return self.index.search(q, K, tenant=tenant, params=setting)[0][0]

    def insert(self, row, vec, tenants):
        self.index.add(vec[None], slots=[row], acl=[tenants])

    def grant(self, row, tenant):
        self.index.grant(row, tenant)

    def revoke(self, row, tenant):
        self.index.revoke(row, tenant)

    def delete(self, row, tenants):
        self.index.remove([row])


class VecdbCurator(_VecdbIndex):
    name = "vecdb-curator"

    def __init__(self, smoke: bool):
        self.grid = [(1, 2), (2, 4), (2, 8)] if smoke else [
            (1, 4), (1, 8), (1, 12), (1, 14), (1, 16), (1.5, 24), (1.5, 32), (1.5, 48),
            (2, 64), (2, 80), (2, 96), (2, 112), (2, 128), (2, 192), (2, 256)]

    def _make(self, ds):
        from vecdb.index import CuratorIndex

        return CuratorIndex(ds.dim, ds.metric)

    def settings(self):
        return [{"gamma1": a, "gamma2": b} for a, b in self.grid]

    def memory_beyond_raw(self):
        return self.index.structure_bytes()


class VecdbHNSW(_VecdbIndex):
    name = "vecdb-hnsw"

    def __init__(self, smoke: bool):
        self.efs = [16, 32, 64] if smoke else [16, 32, 64, 128, 256, 512]

    def _make(self, ds):
        from vecdb.index import HNSWIndex

        return HNSWIndex(ds.dim, ds.metric)

    def settings(self):
        return [{"ef": e} for e in self.efs]

    def memory_beyond_raw(self):
        return self.index.memory_bytes() - len(self.index) * self.index.dim * 4


# ----------------------------------------------------------------------------- harness
def run_system(sys_: System, ds: Dataset, members, sizes: np.ndarray,
               queried_only: bool = False) -> tuple[list, dict]:
    """Build, sweep the settings, time the updates. ``queried_only``: build only the tenants the
    queries hit (per-tenant HNSW at 1M: each tenant's index is independent of the others, so its
    recall and QPS are exactly those of a full build); build time and memory are then scaled up
    by all pairs / built pairs and marked as estimates."""
    qt = ds.query_tenant.astype(np.int64)
    extra: dict = {}
    if queried_only:
        full = sum(len(r) for r in members.values())
        members = {t: members[t] for t in sorted(set(qt.tolist())) if t in members}
        frac = sum(len(r) for r in members.values()) / full
        extra = {"built_pair_fraction": frac, "built_tenants": len(members)}
    t0 = time.perf_counter()
    sys_.build(ds, members)
    build_s = time.perf_counter() - t0
    mem = sys_.memory_beyond_raw()
    if queried_only:
        extra.update(build_s_measured=build_s, memory_beyond_raw_measured=int(mem))
        build_s /= extra["built_pair_fraction"]
        mem = (mem + ds.base.nbytes) / extra["built_pair_fraction"] - ds.base.nbytes
        print(f"  {sys_.name}: built {len(members)} queried tenants "
              f"({extra['built_pair_fraction']:.1%} of pairs) in {extra['build_s_measured']:.0f} s;"
              f" build time and memory below are scaled to all pairs (estimates)", flush=True)
    qsize = sizes[qt]
    rows = []
    for setting in sys_.settings():
        found = np.full((len(ds.queries), K), -1, dtype=np.int64)
        lat = np.full(len(ds.queries), np.inf)
        for _ in range(REPEATS):  # per-query best of REPEATS: damps the other jobs' noise
            for i, (q, t) in enumerate(zip(ds.queries, qt.tolist(), strict=True)):
                t1 = time.perf_counter()
                r = sys_.search(q, t, setting)
                lat[i] = min(lat[i], time.perf_counter() - t1)
                found[i, : len(r)] = r
        row = {"dataset": ds.name, "system": sys_.name, "params": setting,
               "recall": per_bucket_recall(found, ds.gt, np.ones(len(qt), bool)),
               "qps": len(lat) / lat.sum(), "p99_ms": float(np.percentile(lat, 99) * 1e3),
               "mean_ms": float(lat.mean() * 1e3), "build_s": build_s,
               "memory_beyond_raw_bytes": int(mem)}
        for b, lo, hi in BUCKETS:
            sel = (qsize >= lo) & (qsize < hi)
            row[f"recall_{b}"] = per_bucket_recall(found, ds.gt, sel) if sel.any() else None
            row[f"n_{b}"] = int(sel.sum())
        rows.append(row)
        print(f"  {sys_.name:18s} {str(setting):34s} recall {row['recall']:.3f} "
              f"(s {fmt(row['recall_small'])} m {fmt(row['recall_medium'])} "
              f"l {fmt(row['recall_large'])}) qps {row['qps']:8.0f} p99 {row['p99_ms']:.2f} ms",
              flush=True)
    return rows, {"system": sys_.name, "dataset": ds.name, "build_s": build_s,
                  "memory_beyond_raw_bytes": int(mem), **extra,
                  **update_latency(sys_, ds, members)}


def fmt(x) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def per_bucket_recall(found, gt, sel) -> float:
    hits = total = 0
    for f, g in zip(found[sel], gt[sel, :K], strict=True):
        g = g[g >= 0]
        hits += len(np.intersect1d(f[f >= 0], g))
        total += len(g)
    return hits / max(1, total)


def update_latency(sys_: System, ds: Dataset, members, n_ops: int = 200) -> dict:
    """Mean microseconds of insert+grant (a new vector on its tenants), grant, revoke, delete."""
    rng = np.random.default_rng(1)
    n = len(ds.base)
    tenants = np.array(sorted(members))
    acl = ds.acl_lists()
    out = {}
    t0 = time.perf_counter()
    new_rows = []
    for i in range(n_ops):  # insert + grant: copy of a random vector, on ~its tenants
        src = int(rng.integers(0, n))
        # (only tenants the system holds: all of them unless it was built for queried ones)
        ts = [int(t) for t in acl[src] if int(t) in members] or [int(tenants[0])]
        sys_.insert(n + i, ds.base[src], ts)
        new_rows.append((n + i, ts))
    out["insert_grant_us"] = (time.perf_counter() - t0) / n_ops * 1e6
    pairs = []
    for _ in range(n_ops):
        row = int(rng.integers(0, n))
        t = int(rng.choice(tenants))
        if t not in set(acl[row].tolist()):
            pairs.append((row, t))
    t0 = time.perf_counter()
    for row, t in pairs:
        sys_.grant(row, t)
    out["grant_us"] = (time.perf_counter() - t0) / max(1, len(pairs)) * 1e6
    t0 = time.perf_counter()
    for row, t in pairs:
        sys_.revoke(row, t)
    out["revoke_us"] = (time.perf_counter() - t0) / max(1, len(pairs)) * 1e6
    t0 = time.perf_counter()
    for row, ts in new_rows:
        sys_.delete(row, ts)
    out["delete_us"] = (time.perf_counter() - t0) / n_ops * 1e6
    return out


def datasets(args) -> list[Dataset]:
    out = []
    if args.smoke:
        return [multitenant(n=3000, d=16, n_tenants=30, n_queries=60, seed=0)]
    if "glove-wordnet" in args.datasets:
        out.append(load("glove-wordnet"))
    if "synthetic" in args.datasets:
        t0 = time.perf_counter()
        out.append(multitenant(n=args.n, d=128, n_tenants=1000, share=8.0, n_queries=1000))
        print(f"synthetic {args.n} x 128 generated (+ exact GT) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic set, a few settings")
    ap.add_argument("--n", type=int, default=200_000, help="synthetic vectors (issue: 1M)")
    ap.add_argument("--datasets", default="glove-wordnet,synthetic")
    ap.add_argument("--tag", default="", help="suffix of the result files (multitenant-<tag>)")
    ap.add_argument("--systems", default="per-tenant-hnsw,faiss-hnsw+bitmap,faiss-ivf+bitmap,"
                                         "vecdb-hnsw,vecdb-curator")
    ap.add_argument("--pt-queried-only", action="store_true",
                    help="per-tenant HNSW: build only the queried tenants (same recall/QPS; "
                         "build time and memory scaled up to all pairs, as estimates)")
    ap.add_argument("--resummarise", metavar="JSON",
                    help="recompute the summary table of an earlier results file and exit")
    args = ap.parse_args()
    if args.resummarise:
        import json
        from pathlib import Path

        path = Path(args.resummarise)
        doc = json.loads(path.read_text())
        doc["summary"] = summarise(doc["rows"], doc["updates"])
        doc["ratios"] = curator_ratios(doc["summary"])
        path.write_text(json.dumps(doc, indent=1))
        print_table(doc["summary"])
        return
    wanted = args.systems.split(",")
    classes = [PerTenantHNSW, FaissHNSW, FaissIVF, VecdbHNSW, VecdbCurator]
    rows, updates, skipped = [], [], []
    for ds in datasets(args):
        members = ds.tenant_members()
        sizes = np.zeros(max(members) + 1, dtype=np.int64)
        for t, r in members.items():
            sizes[t] = len(r)
        pairs = len(ds.acl_indices)
        print(f"== {ds.name}: {len(ds.base)} x {ds.dim} {ds.metric}, {len(members)} tenants, "
              f"{pairs} (vector, tenant) pairs, {len(ds.queries)} queries", flush=True)
        for cls in classes:
            if cls.name not in wanted:
                continue
            if cls is VecdbHNSW and importlib.util.find_spec("vecdb.index.hnsw") is None:
                skipped.append({"system": cls.name, "why": "vecdb.index.hnsw not present yet"})
                print(f"  {cls.name}: skipped (vecdb.index.hnsw does not exist yet)")
                continue
            try:
                r, u = run_system(cls(args.smoke), ds, members, sizes,
                                  queried_only=args.pt_queried_only and cls is PerTenantHNSW)
            except Exception as e:  # a peer failing must not hide the others' numbers
                if args.smoke and cls is VecdbCurator:
                    raise
                skipped.append({"system": cls.name, "dataset": ds.name, "why": repr(e)})
                print(f"  {cls.name}: FAILED {e!r}", flush=True)
                continue
            rows += r
            updates.append(u)
            print(f"  {cls.name}: build {u['build_s']:.1f} s, memory beyond raw "
                  f"{u['memory_beyond_raw_bytes'] / 2**20:.1f} MiB, insert+grant "
                  f"{u['insert_grant_us']:.0f} us, grant {u['grant_us']:.0f} us, revoke "
                  f"{u['revoke_us']:.0f} us, delete {u['delete_us']:.0f} us", flush=True)
    summary = summarise(rows, updates)
    ratios = curator_ratios(summary)
    name = "multitenant-smoke" if args.smoke else "multitenant"
    name += f"-{args.tag}" if args.tag else ""
    path = write_results(name, rows, {"updates": updates, "summary": summary, "ratios": ratios,
                                      "skipped": skipped, "peak_rss_bytes": peak_rss_bytes()})
    for ds_name in sorted({r["dataset"] for r in rows}):
        for b, _, _ in BUCKETS + (("all", 0, 0),):
            key = "recall" if b == "all" else f"recall_{b}"
            sub = [dict(r) for r in rows if r["dataset"] == ds_name and r.get(key) is not None]
            if sub:
                plot_curves(f"{name}-{ds_name}-{b}", sub, title=f"{ds_name}: {b} tenants", x=key)
    print_table(summary)
    for r in ratios:
        print(f"{r['dataset']}: Curator / {r['peer']}: QPS at goal {fmt_x(r['at_goal'])}, "
              f"QPS at recall 0.95 (interpolated) {fmt_x(r['at_0.95'])}, memory beyond raw "
              f"{fmt_x(r['memory'])}")
    print(f"wrote {path}")


def meets_goal(r: dict) -> bool:
    """The issue's recall goal: >= 0.95 overall and >= 0.9 in every tenant-size bucket."""
    return r["recall"] >= 0.95 and all(r.get(f"recall_{b}") is None or r[f"recall_{b}"] >= 0.9
                                       for b, _, _ in BUCKETS)


def summarise(rows: list[dict], updates: list[dict]) -> list[dict]:
    """Per dataset and system: QPS at recall 0.9/0.95 (interpolated on the overall curve), the
    fastest measured setting meeting the goal (``at_goal``), best recall, memory, build."""
    out = []
    for ds_name in sorted({r["dataset"] for r in rows}):
        for u in updates:
            if u["dataset"] != ds_name:
                continue
            sub = [r for r in rows if r["dataset"] == ds_name and r["system"] == u["system"]]
            best = max(sub, key=lambda r: r["recall"])
            at95 = [r for r in sub if meets_goal(r)]
            first95 = max(at95, key=lambda r: r["qps"]) if at95 else None
            out.append({"dataset": ds_name, "system": u["system"],
                        "qps_at_0.90": interpolate_qps(sub, 0.90),
                        "qps_at_0.95": interpolate_qps(sub, 0.95),
                        "best_recall": best["recall"],
                        "at_goal": None if first95 is None else {
                            k: first95[k] for k in ("params", "recall", "recall_small",
                                                    "recall_medium", "recall_large", "qps",
                                                    "p99_ms")},
                        **{k: u[k] for k in u if k not in ("system", "dataset")}})
    return out


def curator_ratios(summary: list[dict]) -> list[dict]:
    """Curator against each peer, per dataset: QPS ratio at the goal (fastest measured setting of
    each system meeting it), QPS ratio at overall recall 0.95 (each curve interpolated), and the
    memory ratio. None where a side never reaches the point."""
    out = []
    for ds_name in sorted({s["dataset"] for s in summary}):
        by = {s["system"]: s for s in summary if s["dataset"] == ds_name}
        cur = by.get(VecdbCurator.name)
        if cur is None:
            continue
        for peer, p in by.items():
            if peer == VecdbCurator.name:
                continue
            goal = (cur["at_goal"]["qps"] / p["at_goal"]["qps"]
                    if cur["at_goal"] and p["at_goal"] else None)
            i95 = (cur["qps_at_0.95"] / p["qps_at_0.95"]
                   if cur["qps_at_0.95"] and p["qps_at_0.95"] else None)
            mem = (cur["memory_beyond_raw_bytes"] / p["memory_beyond_raw_bytes"]
                   if p["memory_beyond_raw_bytes"] > 0 else None)
            out.append({"dataset": ds_name, "peer": peer, "at_goal": goal, "at_0.95": i95,
                        "memory": mem})
    return out


def fmt_x(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(summary: list[dict]) -> None:
    print("\n| dataset | system | QPS at goal | setting | recall all (s/m/l) | p99 ms | "
          "QPS@0.95 interp. | mem beyond raw MiB | build s | ins+grant us | grant us | "
          "revoke us | delete us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        a = s["at_goal"]
        rec = "-" if a is None else f"{a['recall']:.3f} (" + "/".join(
            fmt(a[f"recall_{b}"]).strip() for b, _, _ in BUCKETS) + ")"
        qps = "-" if s["qps_at_0.95"] is None else f"{s['qps_at_0.95']:.0f}"
        goal = "-" if a is None else f"{a['qps']:.0f}"
        setting = "-" if a is None else ", ".join(f"{k}={v}" for k, v in a["params"].items())
        p99 = "-" if a is None else f"{a['p99_ms']:.2f}"
        print(f"| {s['dataset']} | {s['system']} | {goal} | {setting} | {rec} | {p99} | {qps} | "
              f"{s['memory_beyond_raw_bytes'] / 2**20:.1f} | {s['build_s']:.1f} | "
              f"{s['insert_grant_us']:.0f} | {s['grant_us']:.0f} | {s['revoke_us']:.0f} | "
              f"{s['delete_us']:.0f} |")


if __name__ == "__main__":
    main()
