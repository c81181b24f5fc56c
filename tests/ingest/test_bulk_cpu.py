"""The bulk build's cheaper map/reduce pieces give what the plain numpy they replace gives: the
run histograms (``_sorted_counts`` vs ``np.unique``), the reduce's list order (``_list_order`` vs
``np.lexsort``) and the reduce's output vs a reference written record by record, including runs
whose slots cross vector files (the gather's fallback)."""

from __future__ import annotations

import numpy as np

from vecdb.index._spann_parts import record_dtype
from vecdb.ingest.bulk import _list_order, _reduce_task, _sorted_counts, run_dtype


def test_sorted_counts_is_unique_with_counts():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 5000):
        a = np.sort(rng.integers(0, 40, n).astype(np.int32))
        u, c = np.unique(a, return_counts=True)
        v, d = _sorted_counts(a)
        assert np.array_equal(u, v) and np.array_equal(c, d)
        assert v.dtype == u.dtype and d.dtype == c.dtype


def _records(n: int, rng: np.random.Generator, lists: int) -> np.ndarray:
    r = np.empty(n, run_dtype())
    r["lid"] = rng.integers(0, lists, n)
    r["sec"] = rng.random(n) < 0.7
    d = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf],
                            dtype=np.float32), n)
    d[: n // 2] = rng.standard_normal(n // 2).astype(np.float32)  # ip: negative distances too
    r["d"] = d
    r["slot"] = rng.permutation(n)
    return r


def test_list_order_is_lexsort():
    rng = np.random.default_rng(1)
    for n, lists in ((0, 1), (1, 1), (50, 3), (20_000, 300), (20_000, 2**31 - 1)):
        r = _records(n, rng, lists)
        assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))
    r = _records(1000, rng, 10)
    r["d"][::7] = np.nan  # never from finite vectors: lexsort itself
    assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))
    r["sec"][::5] = 2
    assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))


def _reference(runs: list[np.ndarray], V: np.ndarray, heads: np.ndarray, cap: int,
               dim: int) -> dict[bytes, bytes]:
    """Postings written record by record: per list, nearest-list records then by distance,
    the first max(primaries, cap) kept, each with its vector from the whole vector array."""
    cat = np.concatenate(runs)
    out = {}
    for h in range(len(heads)):
        r = cat[cat["lid"] == h]
        r = r[np.lexsort((r["d"], r["sec"]))]
        r = r[: max(int((r["sec"] == 0).sum()), cap)]
        rec = np.zeros(len(r), record_dtype(dim))
        rec["slot"], rec["ver"] = r["slot"], 1
        for i, s in enumerate(r["slot"].tolist()):
            rec["vec"][i] = V[s]
        key = h.to_bytes(8, "big")
        out[b"H" + key] = heads[h].tobytes()
        out[b"P" + key] = rec.tobytes()
    return out


def test_reduce_matches_a_record_by_record_reference(tmp_path):
    """Runs aligned with the vector files (one map batch each) and runs that cross vector files:
    same postings as the reference, dropped records counted."""
    from tests.ingest.test_bulk import _sst_items

    rng = np.random.default_rng(2)
    H, dim, cap = 30, 8, 12
    heads = rng.standard_normal((H, dim)).astype(np.float32)
    np.save(tmp_path / "heads.npy", heads)
    n = 900
    V = rng.standard_normal((n, dim)).astype(np.float32)
    for name, vec_cuts, run_cuts in (("aligned", [0, 300, 600], [0, 300, 600]),
                                     ("crossing", [0, 250, 610], [0, 400])):
        folder = tmp_path / name
        (folder / "sst").mkdir(parents=True)
        vec_files = []
        for i, lo in enumerate(vec_cuts):
            hi = vec_cuts[i + 1] if i + 1 < len(vec_cuts) else n
            np.save(folder / f"vec-{i}.npy", V[lo:hi])
            vec_files.append((lo, str(folder / f"vec-{i}.npy")))
        runs, paths = [], []
        for i, lo in enumerate(run_cuts):
            hi = run_cuts[i + 1] if i + 1 < len(run_cuts) else n
            slots = np.repeat(np.arange(lo, hi), 3)  # up to 3 replicas per vector
            r = np.empty(len(slots), run_dtype())
            r["lid"] = rng.integers(0, H, len(slots))
            r["sec"] = np.arange(len(slots)) % 3 != 0
            r["d"] = rng.random(len(slots)).astype(np.float32)
            r["slot"] = slots
            r = r[np.argsort(r["lid"], kind="stable")]
            np.save(folder / f"run-{i}.npy", r)
            runs.append(r)
            paths.append(str(folder / f"run-{i}.npy"))
        res = _reduce_task([(0, 11, 0), (11, 30, 1)], paths, str(tmp_path / "heads.npy"), dim,
                           cap, vec_files, str(folder))
        got = dict(_sst_items(folder))
        assert got == _reference(runs, V, heads, cap, dim)
        assert sum(r["dropped"] for r in res) > 0
        assert sum(r["records"] + r["dropped"] for r in res) == sum(len(r) for r in runs)
