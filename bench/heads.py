"""The bulk build's map-stage head search (issue 8): ``HeadGroups`` merge engine vs the earlier
buffer engine, per-vector cost and quality at 1M- and 10M-scale head counts.

    python -m bench.heads            # 1M (23k heads) and 10M (235k heads) scale, dim 128
    python -m bench.heads --smoke    # seconds: tiny sizes, checks the plumbing

Heads are trained as the bulk build trains them (``vecdb.ingest.bulk._leaf_heads``, member heads,
leaves of ``round(sample/N / head_ratio)`` rows of a ``10 x head_ratio x N``-row sample of
``bench.datasets.clustered_stream``; cached under bench/data/heads-*.npy), grouped as
``bulk_build_spann`` groups them (``group_size(H, probes)``). The searched vectors are other rows
of the same stream. Per configuration: CPU microseconds per vector (``time.process_time``,
median of ``--reps`` runs, engines interleaved so both see the same machine load; BLAS pinned
to one thread as in a Ray map task), and against an exact scan of ``--nq`` vectors: the share
whose exact nearest head is the first candidate, and the mean overlap of the ``k`` candidates
with the exact top-``k`` (``k`` = 32, SPANN's ``candidates``, what the map stage asks for).
Writes bench/results/heads.json (bench/results/heads-smoke.json with --smoke).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import write_results  # noqa: E402
from bench.datasets import clustered_stream  # noqa: E402

DATA = Path(__file__).parent / "data"


def train(n_total: int, dim: int, head_ratio: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Member heads as the bulk build trains them on a ``10 x head_ratio x N`` sample; cached.
    Returns (heads, training seconds; 0 when read from the cache)."""
    from vecdb.ingest.bulk import _leaf_heads

    n_sample = int(min(n_total, max(2000, 10 * head_ratio * n_total)))
    leaf = max(2, int(round(round(1 / head_ratio) * n_sample / n_total)))
    path = DATA / f"heads-{n_total}-{dim}-{head_ratio}-{seed}.npy"
    if path.exists():
        return np.load(path), 0.0
    S = np.concatenate(list(clustered_stream(n_sample, dim, chunk=100_000, seed=seed)))
    t = time.perf_counter()
    H = _leaf_heads(S, leaf, 1.0, seed, "member")
    dt = time.perf_counter() - t
    DATA.mkdir(parents=True, exist_ok=True)
    np.save(path, H)
    return H, dt


def exact_top(V: np.ndarray, H: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` head ids (squared L2), 512 vectors at a time."""
    hsq = np.einsum("hd,hd->h", H, H)
    out = np.empty((len(V), k), dtype=np.int64)
    for s in range(0, len(V), 512):
        D = hsq[None, :] - 2 * (V[s:s + 512] @ H.T)
        p = np.argpartition(D, k - 1, axis=1)[:, :k]
        out[s:s + 512] = np.take_along_axis(p, np.argsort(np.take_along_axis(D, p, 1), 1), 1)
    return out


def quality(ids: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    k = exact.shape[1]
    found = ids[:len(exact)]
    overlap = np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]) / k
    return {"exact_nearest": float((found[:, 0] == exact[:, 0]).mean()),
            f"overlap_at_{k}": float(overlap)}


def run_scale(label: str, n_total: int, dim: int, head_ratio: float, probes_list: list[int],
              nv: int, nq: int, k: int, reps: int) -> list[dict]:
    from vecdb.ingest.heads import HeadGroups, group_size

    H, train_s = train(n_total, dim, head_ratio)
    n_sample = int(min(n_total, max(2000, 10 * head_ratio * n_total)))
    V = np.concatenate(list(clustered_stream(n_sample + nv, dim, chunk=100_000, seed=0)))[-nv:]
    V = np.ascontiguousarray(V)
    t = time.perf_counter()
    exact = exact_top(V[:nq], H, k)
    exact_s = time.perf_counter() - t
    rows = []
    for probes in probes_list:
        t = time.perf_counter()
        hg = HeadGroups.build(H, 0, group_size(len(H), probes), probes)
        build_s = time.perf_counter() - t
        sizes = np.diff(hg.bounds)
        times: dict[str, list[float]] = {"buffer": [], "merge": []}
        found = {}
        for _ in range(reps):
            for engine in ("buffer", "merge"):
                c = time.process_time()
                found[engine] = hg.search(V, k, engine=engine)
                times[engine].append((time.process_time() - c) / nv * 1e6)
        same = float((found["buffer"][0] == found["merge"][0]).mean())
        base = statistics.median(times["buffer"])
        for engine in ("buffer", "merge"):
            us = statistics.median(times[engine])
            rows.append({"scale": label, "n_total": n_total, "heads": len(H), "dim": dim,
                         "probes": hg.probes, "group_size": group_size(len(H), probes),
                         "groups": len(sizes), "widest_group": int(sizes.max()),
                         "dots_per_vector": int(len(sizes) + hg.probes * sizes.mean()),
                         "engine": engine, "k": k, "us_per_vector": us,
                         "us_per_vector_runs": times[engine],
                         "speedup_vs_buffer": base / us, "same_ids_as_buffer": same,
                         **quality(found[engine][0], exact),
                         "vectors": nv, "quality_vectors": nq, "group_build_s": build_s,
                         "head_train_s": train_s, "exact_scan_s": exact_s})
            print(f"{label} probes {hg.probes} {engine:6s} {us:6.2f} us/vector "
                  f"({base / us:.2f}x) nearest {rows[-1]['exact_nearest']:.4f} "
                  f"overlap@{k} {rows[-1][f'overlap_at_{k}']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--head-ratio", type=float, default=0.02)
    ap.add_argument("--scales", type=str, default="1000000,10000000",
                    help="N of the bulk builds whose head counts are searched")
    ap.add_argument("--probes", type=str, default="6,8,12",
                    help="probes to sweep (6: bulk_build_spann's default)")
    ap.add_argument("--vectors", type=int, default=32768, help="vectors timed per run")
    ap.add_argument("--nq", type=int, default=4096, help="vectors checked against exact")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.smoke:
        a.scales, a.probes, a.vectors, a.nq, a.reps, a.dim = "20000", "6", 2000, 500, 1, 32
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    for n in (int(x) for x in a.scales.split(",")):
        label = f"{n // 1_000_000}M" if n >= 1_000_000 else str(n)
        rows += run_scale(label, n, a.dim, a.head_ratio, [int(p) for p in a.probes.split(",")],
                          a.vectors, a.nq, a.k, a.reps)
    summary = {f"{r['scale']}/probes={r['probes']}": {
        "merge_us": r["us_per_vector"], "speedup_vs_buffer": r["speedup_vs_buffer"],
        "exact_nearest": r["exact_nearest"], f"overlap_at_{a.k}": r[f"overlap_at_{a.k}"]}
        for r in rows if r["engine"] == "merge"}
    path = write_results("heads-smoke" if a.smoke else "heads", rows, {
        "summary": summary, "seconds": time.perf_counter() - t0,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg_start": load0, "loadavg_end": os.getloadavg()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
