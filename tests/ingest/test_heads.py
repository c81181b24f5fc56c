"""The bulk build's candidate-head search (vecdb.ingest.heads.HeadGroups): exact when every group
is probed, the native merge engine against the earlier buffer engine and an exact scan, both SIMD
levels of the native selection, edge cases and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import clustered_stream
from vecdb import _native
from vecdb.errors import InvalidArgument
from vecdb.index._spann_parts import pair_dist
from vecdb.ingest.heads import HeadGroups


def _data(code: int, n_heads: int = 1200, n: int = 1800, d: int = 16, seed: int = 11):
    X = np.concatenate(list(clustered_stream(n_heads + n, d, chunk=n_heads + n, seed=seed)))
    heads, V = X[:n_heads].copy(), X[n_heads:].copy()
    if code == 1:
        heads /= np.linalg.norm(heads, axis=1, keepdims=True)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
    return heads, V


@pytest.fixture
def simd_level():
    """Runs the test body at each SIMD level the CPU has, restoring the default after."""
    before = _native.level()
    yield _native.supported_levels()
    _native.set_level(before)


@pytest.mark.parametrize("code", [0, 1])
@pytest.mark.parametrize("engine", ["merge", "buffer"])
def test_head_groups_find_the_exact_candidates(code, engine):
    """HeadGroups (the map stage's batched head search) against an exact scan: all groups probed
    gives exactly the exact top-k (ids and distances, sorted, padded); a few probes nearly so."""
    heads, V = _data(code)
    D = pair_dist(V, heads, code)
    want = np.argsort(D, axis=1, kind="stable")[:, :24]
    hg = HeadGroups.build(heads, code, group_size=40, probes=10**6, engine=engine)
    assert len(hg.centroids) > 10 and np.diff(hg.bounds).max() <= 80
    ids, dist = hg.search(V, 24)
    assert (ids == want).mean() > 0.999  # ties aside
    assert np.allclose(dist, np.take_along_axis(D, ids, 1), atol=1e-3)
    assert (np.diff(dist, axis=1) >= 0).all()
    hg.probes = 4
    ids4, _ = hg.search(V, 24)
    assert (ids4[:, 0] == want[:, 0]).mean() > 0.85  # 4 of ~30 groups
    small = HeadGroups.build(heads[:10], code, group_size=40, probes=3, engine=engine)
    i, d = small.search(V[:5], 24)  # fewer heads than k: -1 / inf padding
    assert (i[:, 10:] == -1).all() and np.isinf(d[:, 10:]).all() and (i[:, :10] >= 0).all()
    assert (i[:, :10] == want_small(V[:5], heads[:10], code)).all()


def want_small(V: np.ndarray, heads: np.ndarray, code: int) -> np.ndarray:
    return np.argsort(pair_dist(V, heads, code), axis=1, kind="stable")


@pytest.mark.parametrize("code", [0, 1])
def test_merge_engine_gives_the_buffer_engines_candidates(code, simd_level):
    """Same groups probed, same candidates: the native merge (every SIMD level) and the buffer
    engine agree on ids and distances with few probes, in blocks that split the batch."""
    heads, V = _data(code, n_heads=3000, n=2500, d=24, seed=3)
    hg = HeadGroups.build(heads, code, group_size=50, probes=5)
    ref_i, ref_d = hg.search(V, 32, engine="buffer")
    for lvl in simd_level:
        _native.set_level(lvl)
        for block in (None, 700):  # 700: uneven split into 4 blocks, buffers reused
            ids, dist = hg.search(V, 32, block=block)
            assert (ids == ref_i).mean() > 0.999, lvl
            assert np.allclose(dist, ref_d, atol=1e-3), lvl
            assert (np.diff(dist, axis=1) >= 0).all()


def test_native_merge_is_an_exact_top_k_with_id_ties_and_nan(simd_level):
    """heads_merge + heads_finish over many groups = a stable argsort of the concatenated
    distances: the smallest cap (k + 16, a cut nearly every step), ties to the smaller id, NaN
    never ranked, rows visited in any order, a row that gets fewer than k padded."""
    rng = np.random.default_rng(5)
    n, k = 300, 20
    groups = []
    for g in range(9):
        w = int(rng.integers(1, 70))
        S = rng.integers(-40, 40, size=(n, w)).astype(np.float32)  # many exact ties
        S[rng.random(S.shape) < 0.02] = np.nan
        # later groups carry smaller ids: a tie with the k-th kept must still win on its id
        groups.append((S, rng.random(w).astype(np.float32).round(1),
                       np.arange(w) + 100 * (9 - g)))
    for code in (0, 1):
        full = np.concatenate([(-S if code else hsq[None, :] - 2 * S) for S, hsq, _ in groups],
                              axis=1)
        all_ids = np.concatenate([i for _, _, i in groups])
        full = np.where(np.isnan(full), np.inf, full)
        order = np.stack([np.lexsort((all_ids, row))[:k] for row in full])  # (distance, id)
        want_i = np.where(np.isfinite(np.take_along_axis(full, order, 1)), all_ids[order], -1)
        for lvl in simd_level:
            _native.set_level(lvl)
            buf = np.empty((n + 1, k + 16), dtype=np.uint64)
            cnt = np.zeros(n + 1, dtype=np.int64)
            thr = np.full(n + 1, np.inf, dtype=np.float32)
            for S, hsq, ids in groups:
                perm = rng.permutation(n)
                _native.heads_merge(np.ascontiguousarray(S[perm]), perm.astype(np.int64), hsq,
                                    ids.astype(np.int64), code, k, buf, cnt, thr)
            got_i, got_d = _native.heads_finish(buf, cnt, k)
            assert (got_i[:n] == want_i).all(), (code, lvl)
            fin = want_i >= 0
            assert np.array_equal(got_d[:n][fin], np.take_along_axis(full, order, 1)[fin])
            assert (got_i[n] == -1).all() and np.isinf(got_d[n]).all()  # never merged


def test_native_merge_refuses_bad_buffers():
    S = np.zeros((2, 3), np.float32)
    args = (np.array([0, 1]), np.zeros(3, np.float32), np.arange(3), 0, 4)
    buf, cnt, thr = np.empty((2, 20), np.uint64), np.zeros(2, np.int64), np.zeros(2, np.float32)
    with pytest.raises(ValueError):  # cap < k + 16
        _native.heads_merge(S, *args, np.empty((2, 19), np.uint64), cnt, thr)
    with pytest.raises(ValueError):  # row out of range
        _native.heads_merge(S, np.array([0, 2]), *args[1:], buf, cnt, thr)
    with pytest.raises(ValueError):  # head id over 32 bits
        _native.heads_merge(S, args[0], args[1], np.array([0, 1, 2**32]), 0, 4, buf, cnt, thr)
    with pytest.raises(TypeError):
        _native.heads_merge(S.astype(np.float64), *args, buf, cnt, thr)


@pytest.mark.parametrize("engine", ["merge", "buffer"])
def test_one_group_k_over_heads_and_save_load(tmp_path, engine):
    """Fewer heads than one group (a single group, every probe count), k larger than the heads,
    k = 1, and a saved/loaded HeadGroups giving the same answer."""
    heads, V = _data(0, n_heads=30, n=50)
    hg = HeadGroups.build(heads, 0, group_size=256, probes=8, engine=engine)
    assert len(hg.centroids) == 1 and hg.probes == 1
    want = want_small(V, heads, 0)
    ids, dist = hg.search(V, 40)
    assert (ids[:, :30] == want).all() and (ids[:, 30:] == -1).all()
    assert np.isinf(dist[:, 30:]).all()
    i1, d1 = hg.search(V, 1)
    assert i1.shape == (50, 1) and (i1[:, 0] == want[:, 0]).all()
    hg.save(str(tmp_path / "g"))
    back = HeadGroups.load(str(tmp_path / "g"))
    i2, d2 = back.search(V, 40, engine=engine)
    assert (i2 == ids).all() and np.array_equal(d2, dist)


def test_saved_groups_load_memory_mapped_with_the_same_answers(tmp_path):
    """A loaded HeadGroups keeps every per-head array memory-mapped (no private copy per map
    worker: one page-cache copy per machine) and answers exactly as the built one."""
    heads, V = _data(0, n_heads=3000, n=400)
    hg = HeadGroups.build(heads, 0, group_size=64, probes=4)
    hg.save(str(tmp_path / "g"))
    back = HeadGroups.load(str(tmp_path / "g"))
    for name in ("heads", "ids", "hsq", "centroids", "csq", "bounds"):
        arr = getattr(back, name)
        assert isinstance(arr, np.memmap) or isinstance(arr.base, np.memmap), name
        assert np.array_equal(arr, getattr(hg, name)), name
    for engine in ("merge", "buffer"):
        a, b = hg.search(V, 16, engine=engine), back.search(V, 16, engine=engine)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    private = HeadGroups.load(str(tmp_path / "g"), mmap=False)
    assert not isinstance(private.heads, np.memmap)
    assert not isinstance(private.heads.base, np.memmap)
    with pytest.raises(InvalidArgument):
        HeadGroups.load(str(tmp_path / "g" / "heads.npy"))


def test_bad_search_input_is_refused():
    heads, V = _data(0, n_heads=100, n=20)
    hg = HeadGroups.build(heads, 0, group_size=20, probes=2)
    for kw in ({"k": 0}, {"k": 2.5}, {"k": 5, "engine": "heap"}):
        with pytest.raises(InvalidArgument):
            hg.search(V, **kw)
    with pytest.raises(InvalidArgument):
        hg.search(V[:, :8], 5)
    with pytest.raises(InvalidArgument):
        HeadGroups.build(heads, 0, engine="gpu")
    assert hg.engine == "merge" and hg.search(V, 5)[0].shape == (20, 5)


def test_bench_heads_smoke_runs(monkeypatch, tmp_path):
    """python -m bench.heads --smoke end to end: both engines timed, same candidates, quality
    measured against the exact scan (heads cached under a temporary folder)."""
    import json
    import sys

    import bench.common
    import bench.heads

    monkeypatch.setattr(bench.heads, "DATA", tmp_path / "data")
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench.heads", "--smoke"])
    bench.heads.main()
    doc = json.loads((tmp_path / "results" / "heads-smoke.json").read_text())
    rows = {r["engine"]: r for r in doc["rows"]}
    assert set(rows) == {"buffer", "merge"} and rows["merge"]["same_ids_as_buffer"] > 0.999
    assert rows["merge"]["exact_nearest"] > 0.9 and rows["merge"]["us_per_vector"] > 0
