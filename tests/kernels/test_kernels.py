"""The kernel layer: native (every SIMD level this CPU has) and cupy agree with the numpy reference.

Dimensions are chosen to hit every SIMD tail (1, 3, 15, 16, 17, 97, 128, 384, 785); values include
float32 edge cases (large and tiny magnitudes). References are computed in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vecdb.kernels as K
from vecdb import _native
from vecdb.errors import DimensionMismatch, InvalidArgument, NonFiniteValue, VecdbError

DIMS = [1, 3, 15, 16, 17, 97, 128, 384, 785]
LEVELS = _native.supported_levels()
METRICS = ["l2", "ip", "cosine"]


@pytest.fixture(params=LEVELS)
def level(request):
    K.set_simd_level(request.param)
    yield request.param
    K.set_simd_level(LEVELS[-1])


def ref_dist(q: np.ndarray, X: np.ndarray, metric: str) -> np.ndarray:
    q64, X64 = q.astype(np.float64), X.astype(np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64)
        X64 = X64 / np.linalg.norm(X64, axis=1, keepdims=True)
    if metric == "l2":
        return ((X64 - q64) ** 2).sum(1)
    return -(X64 @ q64)


def assert_close(got, ref, q, X):
    # 1e-4 relative, with an absolute floor scaled by the magnitude of the summed terms
    # (a distance near 0 that is the difference of large terms has no relative precision).
    scale = (
        np.abs(q.astype(np.float64)).max() * np.abs(X.astype(np.float64)).max(axis=-1)
    ) * q.shape[-1]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.max(scale) + 1e-30)


def data(d: int, n: int = 257, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed + d)
    return (rng.standard_normal((n, d)) * scale).astype(np.float32), (
        rng.standard_normal(d) * scale
    ).astype(np.float32)


def test_info_reports_levels():
    info = K.info()
    assert info["backend"] == "native"
    assert info["simd"] in info["supported"]
    assert set(info["supported"]) <= set(info["compiled"])
    assert "scalar" in info["compiled"]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", METRICS)
def test_distances_match_reference(level, d, metric):
    X, q = data(d)
    ref = ref_dist(q, X, metric)
    assert_close(K.distances(q, X, metric), ref, q, X)
    assert_close(K.distances(q, X, metric, backend="numpy"), ref, q, X)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", METRICS)
def test_gather_matches_reference(level, d, metric):
    X, q = data(d)
    rows = np.random.default_rng(d).integers(0, len(X), size=64)
    assert_close(K.distances_gather(q, X, rows, metric), ref_dist(q, X, metric)[rows], q, X)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_matches_reference(level, d, metric):
    X, _ = data(d, n=100)
    Q, _ = data(d, n=7, seed=1)
    got = K.pairwise(Q, X, metric)
    ref = np.stack([ref_dist(q, X, metric) for q in Q])
    assert got.shape == (7, 100) and got.dtype == np.float32
    assert_close(got, ref, Q, X)
    assert_close(K.pairwise(Q, X, metric, backend="numpy"), ref, Q, X)


@pytest.mark.parametrize("scale", [1e-18, 1e-3, 1e3, 1e17])
@pytest.mark.parametrize("d", [17, 128])
def test_float32_edge_magnitudes(level, scale, d):
    X, q = data(d, n=33, scale=scale)
    for metric in ("l2", "ip"):
        got = K.distances(q, X, metric)
        assert (
            np.isfinite(got).all() or scale > 1e16
        )  # squares of 1e17 overflow float32, as in numpy
        ref = ref_dist(q, X, metric)
        finite = np.isfinite(got)
        np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-4, atol=1e-30)


def test_levels_agree_bitwise_on_ties():
    # same inputs through every level: results may differ by rounding only, never in ranking of
    # clearly separated points.
    X, q = data(128, n=2000)
    ranks = []
    for lv in LEVELS:
        K.set_simd_level(lv)
        ranks.append(K.topk(K.distances(q, X), 10)[0])
    K.set_simd_level(LEVELS[-1])
    for r in ranks[1:]:
        assert (r == ranks[0]).all()


def test_env_variable_forces_level(tmp_path):
    import subprocess
    import sys

    code = "import vecdb.kernels as K; print(K.info()['simd'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"VECDB_SIMD": "scalar", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "scalar"


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(0, 60)),
        elements=st.floats(-1e6, 1e6, width=32) | st.just(np.float32(np.nan)),
    ),
    st.integers(1, 70),
)
def test_topk_matches_numpy_reference(dist, k):
    idx, d = K.topk(dist, k)
    ridx, rd = K.topk(dist, k, backend="numpy")
    assert idx.shape == (dist.shape[0], k)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(d, rd)
    for row, i_row, d_row in zip(dist, idx, d, strict=True):
        valid = ~np.isnan(row)
        m = min(k, int(valid.sum()))
        assert (i_row[m:] == -1).all() and np.isinf(d_row[m:]).all()
        assert (np.diff(d_row[:m]) >= 0).all()
        assert np.array_equal(np.sort(row[valid])[:m], d_row[:m])


def test_topk_1d():
    idx, d = K.topk(np.array([3.0, 1.0, 2.0, 1.0]), 3)
    assert idx.tolist() == [1, 3, 2] and d.tolist() == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("metric", METRICS)
def test_search_is_exact(metric):
    X, _ = data(24, n=3000)
    Q, _ = data(24, n=9, seed=5)
    idx, dist = K.search(Q, X, 10, metric, block=700)  # several blocks: exercises the merge
    ref = np.stack([ref_dist(q, X, metric) for q in Q])
    np.testing.assert_array_equal(idx, np.argsort(ref, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :10], rtol=1e-4, atol=1e-4)


def test_kmeans_assign():
    X, _ = data(16, n=500)
    C = X[:20]
    labels, dists = K.kmeans_assign(X, C)
    ref = np.stack([ref_dist(c, X, "l2") for c in C]).T
    assert (labels == ref.argmin(1)).all()
    assert labels[:20].tolist() == list(range(20))


# ------------------------------------------------------------------------------ bad input


def test_bad_input_raises_documented_errors():
    X = np.ones((4, 8), dtype=np.float32)
    with pytest.raises(DimensionMismatch):
        K.distances(np.ones(7), X)
    bad = np.ones(8)
    bad[3] = np.nan
    with pytest.raises(NonFiniteValue):
        K.distances(bad, X)
    inf = X.copy()
    inf[2, 1] = np.inf
    with pytest.raises(NonFiniteValue, match="row 2"):
        K.pairwise(X, inf)
    with pytest.raises(InvalidArgument):
        K.distances(np.ones(8), X, metric="hamming")
    with pytest.raises(InvalidArgument):
        K.distances(np.array(["a"] * 8), X)
    with pytest.raises(InvalidArgument):
        K.distances_gather(np.ones(8), X, [0, 4])
    with pytest.raises(InvalidArgument):
        K.topk(np.ones(3), 0)
    with pytest.raises(InvalidArgument):
        K.distances(np.ones(8), X, backend="tpu")
    with pytest.raises(InvalidArgument, match="all zeros"):
        K.distances(np.zeros(8), X, metric="cosine")
    assert issubclass(NonFiniteValue, ValueError) and issubclass(NonFiniteValue, VecdbError)


def test_explicit_dtype_conversion():
    X = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = K.distances(np.zeros(4, dtype=np.float64), X)
    np.testing.assert_allclose(got, (X.astype(np.float64) ** 2).sum(1))


def test_cupy_backend_unavailable_is_clear():
    from vecdb.kernels import cupy_backend

    if cupy_backend.available():
        pytest.skip("GPU present")
    from vecdb.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="vecdb\\[gpu\\]"):
        K.distances(np.ones(4), np.ones((2, 4)), backend="cupy")


# ------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", METRICS)
def test_cupy_matches_numpy(d, metric):
    X, _ = data(d, n=300)
    Q, _ = data(d, n=5, seed=3)
    ref = np.stack([ref_dist(q, X, metric) for q in Q])
    assert_close(K.pairwise(Q, X, metric, backend="cupy"), ref, Q, X)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_cupy_search_streams_chunks(metric):
    from vecdb.kernels import cupy_backend

    X, _ = data(32, n=5000)
    Q, _ = data(32, n=50, seed=9)
    ref_i, _ = K.search(Q, X, 10, metric, backend="numpy")
    code = K.metric_code(metric)
    got_i, _ = cupy_backend.search(Q, X, 10, code, chunk_rows=700)  # forces streaming + merge
    assert (got_i == ref_i).mean() > 0.999


@pytest.mark.gpu
def test_cupy_kmeans_assign():
    X, _ = data(16, n=5000)
    C = X[:64]
    a, _ = K.kmeans_assign(X, C, backend="cupy")
    b, _ = K.kmeans_assign(X, C, backend="numpy")
    assert (a == b).mean() > 0.999
