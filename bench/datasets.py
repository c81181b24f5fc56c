"""Benchmark data: the real sets under ../shared/data, GloVe-50 (fetched on demand), synthetic
generators (clustered Gaussian data, Zipf-sized multi-tenant workloads) and exact ground truth.

Modelled on faiss's ``contrib/datasets.py``: every loader returns a ``Dataset`` with ``base``,
``queries``, ``gt`` (exact top-k positions into base) and ``metric``; multi-tenant sets add access
lists in CSR form and one tenant per query. Ground truth is always computed exactly (faiss flat or
vecdb's flat scan), never assumed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("VECDB_DATA", ROOT.parent.parent / "shared" / "data"))
CACHE = Path(os.environ.get("VECDB_BENCH_DATA", ROOT / "data"))


@dataclasses.dataclass
class Dataset:
    name: str
    base: np.ndarray
    queries: np.ndarray
    gt: np.ndarray  # int64 [nq, >=k], -1 padded
    metric: str  # "l2" | "ip"
    # multi-tenant extras (None for plain ANN sets)
    acl_indptr: np.ndarray | None = None
    acl_indices: np.ndarray | None = None
    query_tenant: np.ndarray | None = None
    tenant_sizes: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    def acl_lists(self) -> list[np.ndarray]:
        """Access lists as one int32 array per base row."""
        ip, ix = self.acl_indptr, self.acl_indices
        return [ix[ip[i] : ip[i + 1]] for i in range(len(ip) - 1)]

    def tenant_members(self) -> dict[int, np.ndarray]:
        """tenant -> sorted rows of base it may see."""
        ip, ix = self.acl_indptr, self.acl_indices
        rows = np.repeat(np.arange(len(ip) - 1), np.diff(ip))
        order = np.argsort(ix, kind="stable")
        t_sorted, r_sorted = ix[order], rows[order]
        bounds = np.flatnonzero(np.diff(t_sorted)) + 1
        return {
            int(t[0]): r
            for t, r in zip(np.split(t_sorted, bounds), np.split(r_sorted, bounds), strict=True)
            if len(t)
        }


def _load_dir(path: Path) -> dict:
    return {p.stem: np.load(p) for p in path.glob("*.npy")}


def load(name: str) -> Dataset:
    """Load a data set by name: sift-5k, mnist-10k, glove-wordnet, glove-50."""
    if name in ("sift-5k", "mnist-10k"):
        d = _load_dir(SHARED / name)
        return Dataset(
            name, d["base"].astype(np.float32), d["queries"].astype(np.float32), d["gt"], "l2"
        )
    if name == "glove-wordnet":
        d = _load_dir(SHARED / name)
        return Dataset(
            name,
            d["base"],
            d["queries"],
            d["gt"],
            "ip",
            d["acl_indptr"],
            d["acl_indices"],
            d["query_tenant"],
            d["tenant_sizes"],
        )
    if name == "glove-50":
        path = fetch_glove50()
        d = _load_dir(path)
        return Dataset(name, d["base"], d["queries"], d["gt"], "ip")
    raise ValueError(f"unknown data set {name!r}")


def fetch_glove50() -> Path:
    """Build GloVe-50 (390k x 50, ip) with ../shared/data/fetch_glove.py once, under a file lock."""
    out = CACHE / "glove-50"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".glove.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "gt.npy").exists():
            subprocess.run([sys.executable, str(SHARED / "fetch_glove.py"), str(out)], check=True)
    return out


# -------------------------------------------------------------------------- ground truth


def exact_gt(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str, rows: list[np.ndarray] | None = None
) -> np.ndarray:
    """Exact top-k positions into ``base`` (optionally each query restricted to ``rows[i]``)."""
    from vecdb.index.flat import exact_topk
    from vecdb.kernels import metric_code

    code = metric_code(metric)
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    X = np.ascontiguousarray(base, dtype=np.float32)
    if rows is None:
        return exact_topk(Q, X, k, code)[0]
    out = np.full((len(Q), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i] = exact_topk(Q[i : i + 1], X, k, code, rows=np.asarray(r, dtype=np.int64))[0][0]
    return out


# -------------------------------------------------------------------------- synthetic data


def clustered(
    n: int, d: int, n_clusters: int = 256, spread: float = 0.35, seed: int = 0, dtype=np.float32
) -> np.ndarray:
    """Gaussian blobs around random centres (a crude, non-uniform embedding-like distribution)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    sizes = rng.dirichlet(np.full(n_clusters, 2.0))
    labels = rng.choice(n_clusters, size=n, p=sizes)
    x = centres[labels] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(dtype)


def clustered_stream(
    n: int, d: int, chunk: int = 100_000, n_clusters: int = 256, spread: float = 0.35, seed: int = 0
):
    """Yield ``clustered`` data chunk by chunk (same centres), for sets larger than memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    p = rng.dirichlet(np.full(n_clusters, 2.0))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        r = np.random.default_rng((seed, s))
        labels = r.choice(n_clusters, size=m, p=p)
        yield (centres[labels] + spread * r.standard_normal((m, d)).astype(np.float32))


def multitenant(
    n: int = 100_000,
    d: int = 128,
    n_tenants: int = 1000,
    share: float = 8.0,
    zipf_a: float = 1.2,
    n_queries: int = 1000,
    k: int = 10,
    seed: int = 0,
    clustered_membership: bool = True,
) -> Dataset:
    """Synthetic multi-tenant workload: clustered vectors, Zipf-sized tenants, ~``share`` tenants
    per vector (like the Curator paper's YFCC set), queries scoped to one tenant, exact filtered GT.

    With ``clustered_membership`` a tenant's vectors concentrate in a few clusters (realistic:
    a tenant's documents are topical); otherwise membership is uniform at random.
    """
    rng = np.random.default_rng(seed)
    n_clusters = 256
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    labels = rng.integers(0, n_clusters, size=n)
    base = centres[labels] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    # Zipf tenant sizes scaled so the total number of (vector, tenant) pairs is ~ share * n.
    w = 1.0 / np.arange(1, n_tenants + 1) ** zipf_a
    sizes = np.maximum(5, np.round(w / w.sum() * share * n)).astype(np.int64)
    sizes = np.minimum(sizes, n)
    by_cluster = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    pairs_t, pairs_r = [], []
    for t, sz in enumerate(sizes):
        if clustered_membership:
            home = rng.choice(
                n_clusters, size=max(1, min(n_clusters, int(sz // 200) + 2)), replace=False
            )
            pool = np.concatenate([by_cluster[c] for c in home])
            if len(pool) < sz:
                pool = np.arange(n)
        else:
            pool = np.arange(n)
        members = rng.choice(pool, size=int(sz), replace=False)
        pairs_t.append(np.full(len(members), t, dtype=np.int32))
        pairs_r.append(members)
    pt, pr = np.concatenate(pairs_t), np.concatenate(pairs_r)
    order = np.lexsort((pt, pr))
    pt, pr = pt[order], pr[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, pr + 1, 1)
    indptr = np.cumsum(indptr)
    tenant_sizes = np.bincount(pt, minlength=n_tenants)
    # queries: near a random member of the tenant, tenants drawn uniformly (so small ones count)
    qt = rng.integers(0, n_tenants, size=n_queries).astype(np.int32)
    members = Dataset("tmp", base, base[:1], np.zeros((1, 1)), "l2", indptr, pt).tenant_members()
    anchors = np.array([rng.choice(members[int(t)]) for t in qt])
    queries = base[anchors] + 0.35 * rng.standard_normal((n_queries, d)).astype(np.float32)
    gt = exact_gt(base, queries, k, "l2", rows=[members[int(t)] for t in qt])
    return Dataset(
        f"mt-{n}x{d}-t{n_tenants}",
        base,
        queries.astype(np.float32),
        gt,
        "l2",
        indptr,
        pt,
        qt,
        tenant_sizes,
    )


def save(ds: Dataset, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for f in dataclasses.fields(ds):
        v = getattr(ds, f.name)
        if isinstance(v, np.ndarray):
            np.save(path / f"{f.name}.npy", v)
    (path / "info.json").write_text(json.dumps({"name": ds.name, "metric": ds.metric}))
