"""Shared benchmark helpers: recall against exact ground truth, timing, JSON rows, plots.

Every script writes rows ``{system, dataset, params, recall, qps, build_s, memory_bytes, ...}`` to
``bench/results/<name>.json`` (replacing the file: one run = one file, so ratios compare systems
measured together) and, where a curve says more, a PNG of recall vs QPS.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

# VECDB_BENCH_RESULTS redirects output (the CI smoke runs write to a temporary folder).
RESULTS = Path(os.environ.get("VECDB_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean recall@k: |found[:k] & gt[:k]| / |real gt[:k]| (gt -1 padding ignored)."""
    hits, total = 0, 0
    for f, g in zip(found[:, :k], gt[:, :k], strict=True):
        g = g[g >= 0]
        if len(g) == 0:
            continue
        hits += len(np.intersect1d(f[f >= 0], g))
        total += len(g)
    return hits / max(1, total)


def per_query_recall(found: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(found), np.nan)
    for i, (f, g) in enumerate(zip(found[:, :k], gt[:, :k], strict=True)):
        g = g[g >= 0]
        if len(g):
            out[i] = len(np.intersect1d(f[f >= 0], g)) / len(g)
    return out


class Timer:
    """``with Timer() as t: ...; t.s`` wall seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo; None elsewhere): machines lent to sessions
    differ, and figures from two of them are not comparable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    try:
        from vecdb.kernels import info as kinfo

        info["vecdb_kernels"] = kinfo()
    except Exception:
        pass
    return info


def write_results(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Write ``bench/results/<name>.json`` with the rows, the machine and the command line."""
    import sys

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    main = sys.modules.get("__main__")
    mod = getattr(getattr(main, "__spec__", None), "name", None) or Path(sys.argv[0]).stem
    doc = {
        "command": " ".join(["python -m", mod, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(doc, indent=1, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def interpolate_qps(rows: list[dict], target_recall: float) -> float | None:
    """QPS at ``target_recall`` on one recall/QPS curve (linear in recall); None if unreached."""
    pts = sorted((r["recall"], r["qps"]) for r in rows)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:], strict=False):
        if r0 <= target_recall <= r1:
            if r1 == r0:
                return max(q0, q1)
            return q0 + (q1 - q0) * (target_recall - r0) / (r1 - r0)
    if pts and pts[0][0] >= target_recall:
        return pts[0][1]
    return None


def plot_curves(
    name: str,
    rows: list[dict],
    title: str = "",
    x: str = "recall",
    y: str = "qps",
    group: str = "system",
    logy: bool = True,
) -> Path | None:
    """Recall-vs-QPS curves, one line per ``group`` value, to ``bench/results/<name>.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in sorted({r[group] for r in rows}):
        pts = sorted((r[x], r[y]) for r in rows if r[group] == g)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=g)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or name)
    path = RESULTS / f"{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
