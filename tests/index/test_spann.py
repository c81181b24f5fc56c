"""SPANN index: recall on real data, reopen, online updates (split/reassign/merge), tenants,
errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vecdb.errors import DimensionMismatch, InvalidArgument, NonFiniteValue
from vecdb.index import SPANNIndex, SPANNSearchParams, index_class
from vecdb.index.flat import exact_topk
from vecdb.kernels import metric_code
from vecdb.storage.kv import MemoryKVStore


def recall(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], g[:k])) / k
                          for f, g in zip(found[:, :k], gt, strict=True)]))


# documented test parameters (docs/spann.md)
SIFT = dict(head_ratio=0.06)
SIFT_SEARCH = SPANNSearchParams(max_lists=64)


@pytest.fixture(scope="module")
def sift_index(sift5k):
    idx = SPANNIndex(128, "l2", background=False, **SIFT)
    idx.add(sift5k["base"])
    return idx


def test_registry_and_store_flag():
    assert index_class("spann") is SPANNIndex
    assert SPANNIndex.needs_store


def test_recall_sift5k(sift_index, sift5k):
    I, D = sift_index.search(sift5k["queries"], 10, params=SIFT_SEARCH)
    assert recall(I, sift5k["gt"]) >= 0.9
    assert (np.diff(D, axis=1) >= 0).all()
    st = sift_index.last_search_stats()
    assert (st["lists_read"] <= 64).all() and (st["bytes_read"] > 0).all()
    # results carry true squared-L2 distances
    d = ((sift5k["base"][I[:5]] - sift5k["queries"][:5, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(D[:5], d, rtol=1e-4, atol=1e-2)


def test_recall_mnist10k(mnist10k):
    idx = SPANNIndex(784, "l2", background=False)  # defaults
    idx.add(mnist10k["base"])
    I, _ = idx.search(mnist10k["queries"], 10, params={"max_lists": 32})
    assert recall(I, mnist10k["gt"]) >= 0.9
    assert idx.memory_bytes() < mnist10k["base"].size * 4 * 0.35  # of the raw float32 bytes


def test_pruning_reads_fewer_lists(sift_index, sift5k):
    Q = sift5k["queries"][:50]
    sift_index.search(Q, 10, params={"max_lists": 64, "eps": 0.05})
    pruned = sift_index.last_search_stats()["lists_read"]
    sift_index.search(Q, 10, params={"max_lists": 64, "eps": 100.0})
    full = sift_index.last_search_stats()["lists_read"]
    assert pruned.mean() < full.mean()


@pytest.mark.parametrize("head_index", ["flat", "hnsw"])
def test_reopen_identical(tmp_path, sift5k, head_index):
    store = MemoryKVStore()
    X = sift5k["base"][:3000]
    idx = SPANNIndex(128, "l2", store, head_ratio=0.06, head_index=head_index, background=False)
    idx.add(X)
    idx.add(sift5k["base"][3000:3400])  # updates before the checkpoint
    idx.remove(np.arange(0, 200))
    I1, D1 = idx.search(sift5k["queries"], 10, params=SIFT_SEARCH)
    idx.save(tmp_path / "s.idx")
    again = SPANNIndex.load(tmp_path / "s.idx", store=store)
    I2, D2 = again.search(sift5k["queries"], 10, params=SIFT_SEARCH)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    assert len(again) == len(idx) == 3200
    with pytest.raises(InvalidArgument):
        SPANNIndex.load(tmp_path / "s.idx")  # the postings live in the store


def test_reopen_rocks(tmp_path, sift5k):
    from vecdb.storage.rocks import RocksKVStore

    store = RocksKVStore(tmp_path / "db", block_cache_bytes=1 << 20)
    idx = SPANNIndex(128, "l2", store, head_ratio=0.06, background=False)
    idx.add(sift5k["base"][:2000])
    I1, D1 = idx.search(sift5k["queries"][:50], 10)
    idx.save(tmp_path / "s.idx")
    store.close()
    store = RocksKVStore(tmp_path / "db", block_cache_bytes=1 << 20, create=False)
    again = SPANNIndex.load(tmp_path / "s.idx", store=store)
    I2, D2 = again.search(sift5k["queries"][:50], 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    store.close()


@pytest.mark.parametrize("reassign", ["all", "nearest"])
def test_updates_match_fresh_build(sift5k, reassign):
    """Insert 20% new + delete 20% old through the update path (background splits), compare to a
    fresh build of the final set with the same parameters."""
    X, Q = sift5k["base"], sift5k["queries"]
    params = dict(head_ratio=0.06, posting_limit=100)
    idx = SPANNIndex(128, "l2", background=True, reassign=reassign, **params)
    idx.add(X[:4000])
    rng = np.random.default_rng(1)
    dead = rng.choice(4000, 1000, replace=False)
    for s in range(4000, 5000, 100):  # interleave inserts and deletes, small batches
        idx.add(X[s:s + 100], np.arange(s, s + 100))
        idx.remove(dead[(s - 4000): (s - 4000) + 100])
        got, _ = idx.search(Q[:20], 10, params=SIFT_SEARCH)
        assert not np.isin(got, dead[: (s - 4000) + 100]).any()
    idx.flush()
    idx.compact()
    assert idx.stats["splits"] > 0 and idx.stats["gc_records"] > 0
    alive = np.setdiff1d(np.arange(5000), dead)
    assert len(idx) == len(alive)
    gt_rows, _ = exact_topk(Q, X[alive], 10, metric_code("l2"))
    gt = alive[gt_rows]
    I, _ = idx.search(Q, 10, params=SIFT_SEARCH)
    assert not np.isin(I, dead).any()
    fresh = SPANNIndex(128, "l2", background=False, **params)
    fresh.add(X[alive], alive)
    F, _ = fresh.search(Q, 10, params=SIFT_SEARCH)
    r_upd, r_fresh = recall(I, gt), recall(F, gt)
    assert r_upd >= r_fresh - 0.02, (r_upd, r_fresh)
    if reassign == "nearest":  # what it maintains: live vectors sit in their nearest head's list
        # (98% measured; not 100%: neighbours of a split move only toward the new heads)
        nearest, _ = idx._heads.search(X[alive], 1)
        held = {lid: set(r["slot"][idx._valid(r)].tolist()) for lid in np.unique(nearest).tolist()
                for r in [idx._read_list(lid)] if r is not None}
        inside = [int(s) in held.get(int(n), ()) for s, n in zip(alive, nearest[:, 0], strict=True)]
        assert np.mean(inside) >= 0.96


@pytest.mark.parametrize("stream", [False, True])
def test_build_fill_leaves_room(tmp_path, sift5k, stream):
    """A bulk build (``add`` and ``build_stream``) caps lists at ``build_fill * posting_limit``:
    a list holds more only with records whose nearest head it is; the same appends then split
    far fewer lists than after a build filled to the limit; the knob survives a reopen; bad
    values are refused."""
    X = sift5k["base"]
    for bad in (0, 1.5, -0.1, True, "0.8", float("nan")):
        with pytest.raises(InvalidArgument):
            SPANNIndex(128, "l2", build_fill=bad)
    sizes, splits = {}, {}
    for fill in (1.0, 0.5):
        store = MemoryKVStore()
        idx = SPANNIndex(128, "l2", store, head_ratio=0.06, posting_limit=40, build_fill=fill,
                         background=False)
        if stream:
            idx.build_stream((X[i:i + 1000] for i in range(0, 5000, 1000)), 5000, X[::2],
                             tmp_path, split_hubs=False)
        else:
            idx.add(X)
        cap = int(fill * 40)
        nearest, _ = idx._heads.search(X, 1)
        for lid, n in idx._sizes.items():
            if n > cap:  # only nearest-list records are kept past the cap
                slots = idx._read_list(lid)["slot"]
                assert len(slots) == n and (nearest[slots, 0] == lid).all(), (lid, n, cap)
        sizes[fill] = np.array(list(idx._sizes.values()))
        if fill == 0.5:
            assert idx._config()["build_fill"] == 0.5
            idx.save(tmp_path / f"i{int(stream)}.npz")
            back = SPANNIndex.load(tmp_path / f"i{int(stream)}.npz", store)
            assert back.build_fill == 0.5
        idx.add(X[:200] + 0.01, np.arange(5000, 5200))  # the same appends to both builds
        idx.flush()
        splits[fill] = idx.stats["splits"]
    # measured (add / build_stream): lists at the limit 27% -> 6% / 4.5% -> 0.8%; records
    # 9.5k -> 7.3k / 7.1k -> 6.2k; splits after the appends 107 -> 36 / 190 -> 177 (the
    # streamed build's sampled heads leave lists over the limit with nearest-list records alone)
    assert (sizes[0.5] >= 40).mean() < (sizes[1.0] >= 40).mean() / 2
    assert sizes[0.5].sum() < 0.9 * sizes[1.0].sum()
    if not stream:
        assert (sizes[1.0] >= 40).mean() > 0.2  # filled to the limit: these split at once
        assert splits[0.5] < splits[1.0] / 2, splits


def test_incremental_from_empty_and_merge(sift5k):
    X = sift5k["base"][:1500]
    idx = SPANNIndex(128, "l2", background=False, posting_limit=40, bulk_min=10**9)
    for s in range(0, 1500, 250):
        idx.add(X[s:s + 250])
    assert idx.num_lists() > 10 and idx.stats["splits"] > 0
    I, _ = idx.search(X[:200], 1, params={"max_lists": 32})
    assert (I[:, 0] == np.arange(200)).mean() > 0.9  # self-recall
    idx.remove(np.arange(0, 1400))
    idx.compact()
    assert idx.stats["merges"] > 0
    I, _ = idx.search(X[1400:1500], 1, params={"max_lists": 16})
    assert (I[:, 0] == np.arange(1400, 1500)).mean() > 0.9
    assert not np.isin(I, np.arange(1400)).any()


def test_replace_vector_and_versions():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    idx = SPANNIndex(16, "l2", background=False, bulk_min=100)
    idx.add(X)
    Y = rng.standard_normal((1, 16)).astype(np.float32) * 5
    idx.add(Y, [7])  # replace slot 7: the old record is stale
    I, D = idx.search(Y, 3, params={"max_lists": 64, "eps": 100.0})
    assert I[0, 0] == 7 and D[0, 0] < 1e-4
    I, _ = idx.search(X[7:8], 300, params={"max_lists": 4096, "eps": 1e6})
    assert list(I[0]).count(7) <= 1
    assert len(idx) == 300


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_other_metrics(metric):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 24)).astype(np.float32)
    Q = rng.standard_normal((30, 24)).astype(np.float32)
    idx = SPANNIndex(24, metric, background=False, head_ratio=0.05)
    idx.add(X)
    I, D = idx.search(Q, 10, params={"max_lists": 64, "eps": 100.0})
    P = X / np.linalg.norm(X, axis=1, keepdims=True) if metric == "cosine" else X
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True) if metric == "cosine" else Q
    gt, _ = exact_topk(Qn, P, 10, metric_code("ip"))
    assert recall(I, gt) >= 0.9
    np.testing.assert_allclose(D[:, 0], -np.einsum("qd,qd->q", Qn, P[I[:, 0]]), rtol=1e-4,
                               atol=1e-4)


def test_tenant_filter_never_leaks(sift5k):
    X, Q = sift5k["base"][:3000], sift5k["queries"][:40]
    rng = np.random.default_rng(2)
    acl = [rng.choice(5, rng.integers(0, 3), replace=False).tolist() for _ in range(3000)]
    idx = SPANNIndex(128, "l2", background=False, head_ratio=0.06)
    idx.add(X, acl=acl)
    idx.grant(5, 9)
    idx.revoke(int(np.flatnonzero([0 in a for a in acl])[0]), 0)
    for t in range(6):
        members = idx.acl.members(t)
        I, D = idx.search(Q, 10, tenant=t, params=SIFT_SEARCH)
        got = I[I >= 0]
        assert np.isin(got, members).all()
        if len(members) >= 10:
            gt, _ = exact_topk(Q, X, 10, metric_code("l2"), rows=members)
            assert recall(I, gt) >= 0.8
    I, _ = idx.search(Q, 10, tenant=9)
    assert set(I[I >= 0].tolist()) <= {5}
    I, _ = idx.search(Q, 10, tenant=77)  # unknown tenant sees nothing
    assert (I == -1).all()


def test_bad_input_changes_nothing(sift_index, sift5k):
    n = len(sift_index)
    with pytest.raises(DimensionMismatch):
        sift_index.add(np.zeros((2, 5), dtype=np.float32))
    bad = np.zeros((1, 128), dtype=np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(NonFiniteValue):
        sift_index.add(bad)
    with pytest.raises(InvalidArgument):
        sift_index.search(sift5k["queries"][:1], 10, params={"nprobe": 3})
    with pytest.raises(InvalidArgument):
        sift_index.search(sift5k["queries"][:1], 10, params={"max_lists": 0})
    with pytest.raises(InvalidArgument):
        sift_index.search(sift5k["queries"][:1], 0)
    with pytest.raises(InvalidArgument):
        sift_index.search(sift5k["queries"][:1], 5, tenant=-1)
    with pytest.raises(InvalidArgument):
        sift_index.grant(10**6, 1)
    with pytest.raises(InvalidArgument):
        SPANNIndex(8, head_ratio=0)
    with pytest.raises(InvalidArgument):
        SPANNIndex(8, head_index="ivf")
    assert len(sift_index) == n


def test_search_during_background_updates(sift5k):
    X, Q = sift5k["base"], sift5k["queries"][:20]
    idx = SPANNIndex(128, "l2", background=True, head_ratio=0.06, posting_limit=50)
    idx.add(X[:2000])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                I, _ = idx.search(Q, 10)
                assert ((I >= -1) & (I < 5000)).all()
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for s in range(2000, 4000, 200):
        idx.add(X[s:s + 200])
    idx.flush()
    stop.set()
    t.join()
    assert not errors
    assert idx.stats["splits"] > 0
    I, _ = idx.search(X[:4000:40], 1, params={"max_lists": 32})
    # Which lists split, and when, depends on the background thread's timing; over repeated runs
    # this self-recall measured 0.95-1.0 with this aggressive posting_limit, so the bound leaves
    # room for that spread (a strict > 0.95 failed about one run in five).
    assert (I[:, 0] == np.arange(0, 4000, 40)).mean() >= 0.92


def test_engine_collection_roundtrip(tmp_path):
    """The engine builds SPANN over the collection's RocksDB store and reopens it from its
    checkpoint with the same results."""
    import vecdb

    X = np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)
    db = vecdb.open(str(tmp_path))
    c = db.create_collection("c", 16, "l2", index="spann",
                             params={"head_ratio": 0.1, "bulk_min": 100})
    c.create_tenant("a")
    c.upsert(np.arange(1500), X, tenant="a")
    c.delete(np.arange(10), tenant="a")
    r1 = c.search(X[:20], 3, tenant="a")
    assert not np.isin(r1.ids, np.arange(10)).any()
    assert (r1.ids[10:, 0] == np.arange(10, 20)).all()
    db.close()
    db = vecdb.open(str(tmp_path))
    r2 = db.collection("c").search(X[:20], 3, tenant="a")
    np.testing.assert_array_equal(r1.ids, r2.ids)
    db.close()


# -- the native posting scan -----------------------------------------------------------------


def _scan_reference(q, blocks, rec_dtype, live, ver, bitmap, k, code, sq=None):
    """Exact filtered top-k over the fetched records, in numpy: valid (live, current version,
    tenant bit), one result per slot, (distance, slot) ascending. ``sq``: SQ8 (scale, offset),
    the records' codes are decoded in float64."""
    rec = np.concatenate([np.frombuffer(b, rec_dtype) for b in blocks if b])
    s = rec["slot"]
    ok = (s >= 0) & (s < len(live))
    sc = np.where(ok, s, 0)
    ok &= live[sc].astype(bool) & (ver[sc] == rec["ver"])
    if bitmap is not None:
        bits = np.unpackbits(bitmap, bitorder="little")
        ok &= (sc < len(bits)) & bits[np.minimum(sc, len(bits) - 1)].astype(bool)
    v = rec["vec"][ok].astype(np.float64)  # float16 records: the rounded vectors
    if sq is not None:
        v = sq[1].astype(np.float64) + sq[0].astype(np.float64) * v
    d = ((v - q) ** 2).sum(1) if code == 0 else -(v @ q)
    best: dict[int, float] = {}
    for slot, dist in zip(s[ok].tolist(), d.tolist(), strict=True):
        best[slot] = min(dist, best.get(slot, np.inf))
    order = sorted(best.items(), key=lambda t: (t[1], t[0]))[:k]
    return np.array([o[0] for o in order], dtype=np.int64), np.array([o[1] for o in order])


@pytest.mark.parametrize("dim", [1, 15, 16, 50, 97])
@pytest.mark.parametrize("code", [0, 1])
@pytest.mark.parametrize("tenant", [False, True])
@pytest.mark.parametrize("half", [False, True, "scalar", "sq8", "sq8-scalar"])
def test_native_scan_matches_exact_filtered_topk(dim, code, tenant, half):
    """vecdb._spann.scan over blocks with replicas (the same slot in several lists), stale
    versions, tombstones, out-of-range slots, a missing list and tenant bits equals the exact
    filtered top-k of a numpy reference over the same records (float32, float16 with F16C and
    scalar widening, SQ8 codes with the fused AVX2 and the scalar kernels)."""
    from vecdb import _spann
    from vecdb.index._spann_parts import pack_records, record_dtype

    rng = np.random.default_rng(dim * 8 + code * 4 + tenant * 2 + bool(half))
    n_slots, k = 400, 10
    V = rng.standard_normal((n_slots, dim)).astype(np.float32)
    if half:  # float16 postings; subnormal, zero and large magnitudes exercise the widening
        V[0, 0], V[1, 0], V[2, 0] = 3e-6, -0.0, 60000.0
    live = (rng.random(n_slots) < 0.8).astype(np.uint8)  # ~20% tombstones
    ver = rng.integers(1, 256, n_slots).astype(np.uint8)
    sq8 = isinstance(half, str) and half.startswith("sq8")
    fmt = 2 if sq8 else int(bool(half))
    sq = None
    if sq8:  # random codes, scale/offset (one constant dimension: scale 0)
        V = rng.integers(0, 256, (n_slots, dim)).astype(np.float32)
        scale = rng.uniform(0.001, 0.05, dim).astype(np.float32)
        scale[0] = 0
        sq = (scale, rng.uniform(-1, 1, dim).astype(np.float32))
    rd = record_dtype(dim, "u1" if sq8 else "<f2" if half else "<f4")
    blocks: list[bytes | None] = []
    for _ in range(7):
        s = rng.choice(n_slots, 60, replace=False)  # slots repeat across blocks: replicas
        v = ver[s].copy()
        stale = rng.random(60) < 0.15
        v[stale] = v[stale] % 255 + 1  # an older version of a re-inserted vector
        X = V[s].copy()
        X[stale] += 3.0  # its old vector differs, so a stale record would show
        if sq8:
            X[stale] %= 256
        blocks.append(pack_records(rd, s, v, X))
    blocks.append(None)  # a list deleted between head search and fetch
    blocks.append(pack_records(rd, np.array([n_slots + 5]), np.array([1]), V[:1]))  # unknown
    bitmap = None
    if tenant:
        bitmap = np.packbits(rng.random(n_slots - 40) < 0.3, bitorder="little")  # short bitmap
    q = rng.standard_normal(dim).astype(np.float32)
    out_s = np.empty(k, dtype=np.int64)
    out_d = np.empty(k, dtype=np.float32)
    st = np.zeros(3, dtype=np.int64)
    _spann._force_scalar_widen(half in ("scalar", "sq8-scalar"))  # the portable paths too
    try:
        got = _spann.scan(q, blocks, live, ver, bitmap, k, code, out_s, out_d, st, fmt, sq)
    finally:
        _spann._force_scalar_widen(False)
    ref_s, ref_d = _scan_reference(q, blocks, rd, live, ver, bitmap, k, code, sq)
    assert got == len(ref_s)
    np.testing.assert_array_equal(out_s[:got], ref_s)
    np.testing.assert_allclose(out_d[:got], ref_d, rtol=1e-4, atol=1e-4)
    assert (out_s[got:] == -1).all() and np.isinf(out_d[got:]).all()
    assert st[0] == sum(len(b) for b in blocks if b) and st[1] == st[0] // rd.itemsize
    with pytest.raises(ValueError):  # a torn block is refused, not read past its end
        _spann.scan(q, [blocks[0][:-1]], live, ver, None, k, code, out_s, out_d, st, fmt, sq)
    if sq8:
        with pytest.raises(ValueError):  # SQ8 records need the quantizer
            _spann.scan(q, blocks[:1], live, ver, None, k, code, out_s, out_d, st, 2)


def test_io_threads_same_results(sift_index, sift5k):
    Q = sift5k["queries"][:30]
    I1, D1 = sift_index.search(Q, 10, params=SIFT_SEARCH)
    I4, D4 = sift_index.search(Q, 10, params={"max_lists": 64, "io_threads": 4})
    np.testing.assert_array_equal(I1, I4)
    np.testing.assert_array_equal(D1, D4)
    with pytest.raises(InvalidArgument):
        sift_index.search(Q, 10, params={"io_threads": 0})


def test_io_threads_concurrent_callers_errors_and_close(sift5k):
    """Concurrent posting reads (io_threads > 1): several searching threads at once, each asking
    for more reads in flight than the last (the reader pool grows under them), get the
    single-reader results; a failing read surfaces in the caller; after close() a search starts
    new readers."""
    idx = SPANNIndex(128, "l2", background=False, **SIFT)
    idx.add(sift5k["base"])
    Q = sift5k["queries"][:40]
    I1, D1 = idx.search(Q, 10, params=SIFT_SEARCH)
    out: dict[int, tuple] = {}

    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:  # each asks for more reads in flight: the pool is replaced while others use it
            out[w] = idx.search(Q, 10, params={"max_lists": 64, "io_threads": 2 + w})
        except BaseException as e:  # reported below
            errors.append(e)

    ths = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors and len(out) == 6
    for I, D in out.values():
        np.testing.assert_array_equal(I, I1)
        np.testing.assert_array_equal(D, D1)
    real = idx.store.multi_get
    calls = []

    def failing(cf, keys):
        calls.append(len(keys))
        if len(calls) == 2:  # one group of one query, read on a reader thread or this one
            raise OSError("device error")
        return real(cf, keys)

    idx.store.multi_get = failing
    with pytest.raises(OSError, match="device error"):
        idx.search(Q[:1], 10, params={"max_lists": 64, "io_threads": 4})
    idx.store.multi_get = real
    I4, _ = idx.search(Q, 10, params={"max_lists": 64, "io_threads": 4})
    np.testing.assert_array_equal(I4, I1)  # readers still serve after a failed read
    idx.close()
    assert idx._pool is None
    I5, _ = idx.search(Q, 10, params={"max_lists": 64, "io_threads": 3})
    np.testing.assert_array_equal(I5, I1)
    idx.close()


def test_head_index_loads_saved_graph(monkeypatch, sift5k):
    """HeadIndex.add(..., graph=) loads a matching saved graph instead of building one, and
    ignores (builds) when the graph does not hold exactly these heads."""
    from vecdb.index import hnsw as hnsw_mod
    from vecdb.index._spann_parts import HeadIndex

    X = sift5k["base"][:600]
    ids = np.arange(600, dtype=np.int64) * 3
    h = HeadIndex(128, 0, "hnsw")
    h.add(ids, X)
    raw = h.graph_bytes()
    want = h.search(sift5k["queries"][:20], 5)
    builds = []
    real_add = hnsw_mod.HNSWIndex.add
    monkeypatch.setattr(hnsw_mod.HNSWIndex, "add",
                        lambda self, *a, **kw: builds.append(1) or real_add(self, *a, **kw))
    h2 = HeadIndex(128, 0, "hnsw")
    h2.add(ids, X, graph=raw)
    assert not builds
    got = h2.search(sift5k["queries"][:20], 5)
    np.testing.assert_array_equal(want[0], got[0])
    h3 = HeadIndex(128, 0, "hnsw")
    h3.add(ids, X + 1.0, graph=raw)  # other vectors: the graph is ignored and built
    assert builds
    h4 = HeadIndex(128, 0, "hnsw")
    h4.add(ids, X, graph=np.zeros(10, dtype=np.uint8))  # not a graph file: built
    assert (h4.search(sift5k["queries"][:20], 5)[0] == want[0]).mean() > 0.9


def test_reopen_takes_list_sizes_from_checkpoint(tmp_path, sift5k):
    """Reopening does not read every posting list to learn its size (the checkpoint has them);
    lists made after the checkpoint are read; an old checkpoint without sizes still opens."""
    X = sift5k["base"]
    store = MemoryKVStore()
    idx = SPANNIndex(128, "l2", store, head_ratio=0.06, posting_limit=60, background=False)
    idx.add(X[:2000])
    idx.save(tmp_path / "s.idx")
    idx.add(X[2000:2600])  # splits after the checkpoint: new lists the checkpoint lacks
    assert idx.stats["splits"] > 0
    sizes = dict(idx._sizes)

    class NoPostingScan(MemoryKVStore):
        def iterate(self, cf, prefix=b"", **kw):
            assert not prefix.startswith(b"P"), "reopen scanned every posting list"
            return super().iterate(cf, prefix=prefix, **kw)

    spy = NoPostingScan()
    spy._cf = store._cf
    again = SPANNIndex.load(tmp_path / "s.idx", store=spy)
    assert set(again._sizes) == set(sizes)
    new = set(sizes) - set(np.load(tmp_path / "s.idx")["list_ids"].tolist())
    assert new and all(again._sizes[i] == sizes[i] for i in new)
    I2, _ = again.search(sift5k["queries"][:20], 10)  # live = the checkpoint's (the engine
    assert ((I2 >= 0) & (I2 < 2000)).all()  # replays its log for the 600 added after it)
    # a checkpoint from before list sizes were saved: sizes come from the lists
    meta, arrays = idx._state()
    arrays = {k: v for k, v in arrays.items() if k not in ("list_ids", "list_sizes")}
    old = SPANNIndex._from_state({**meta, "dim": 128, "metric": "l2", "kind": "spann"}, arrays,
                                 store)
    assert old._sizes == idx._sizes


def _rng_select_reference(cand, cdist, H, code, replicas, eps1):
    """The RNG replica rule written plainly (numpy, one vector at a time)."""
    from vecdb.index._spann_parts import within

    n, C = cand.shape
    keep = np.zeros((n, C), dtype=bool)
    for i in range(n):
        chosen: list[int] = []
        for j in range(C):
            if cand[i, j] < 0 or not within(cdist[i, j:j + 1], cdist[i, 0], eps1, code)[0]:
                continue
            if len(chosen) >= replicas:
                break
            hc = H[i, chosen].astype(np.float64)
            hj = H[i, j].astype(np.float64)
            dcc = ((hc - hj) ** 2).sum(1) if code == 0 else -(hc @ hj)
            if (dcc < cdist[i, j]).any():
                continue
            keep[i, j] = True
            chosen.append(j)
    return keep


@pytest.mark.parametrize("code", [0, 1])
def test_native_rng_select_matches_reference(code):
    from vecdb.index._spann_parts import rng_select

    rng = np.random.default_rng(code)
    heads = rng.standard_normal((300, 24)).astype(np.float32)
    X = rng.standard_normal((500, 24)).astype(np.float32)
    if code == 1:
        heads /= np.linalg.norm(heads, axis=1, keepdims=True)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    D = ((X[:, None, :] - heads[None]) ** 2).sum(-1) if code == 0 else -(X @ heads.T)
    cand = np.argsort(D, axis=1)[:, :16].astype(np.int64)
    cdist = np.take_along_axis(D, cand, 1).astype(np.float32)
    cand[::7, 12:] = -1  # padded rows (fewer heads than candidates)
    cdist[::7, 12:] = np.inf
    for replicas, eps1 in ((8, 1.0), (3, 0.2), (16, 10.0)):
        got = rng_select(X, cand, cdist, lambda ids: heads[ids], code, replicas, eps1, block=64)
        ref = _rng_select_reference(cand, cdist, heads[np.maximum(cand, 0)], code, replicas, eps1)
        # float32 SIMD vs float64 head-to-head distances may flip exact near-ties only
        assert (got == ref).all(axis=1).mean() >= 0.99
        assert got[:, 0].all() and (got.sum(1) <= replicas).all()
        assert not got[cand < 0].any()


@pytest.mark.parametrize("code", [0, 1])
def test_rng_select_heads_equals_rng_select(code):
    """``_spann.rng_select_heads`` (head vectors read by id, no gathered copy) makes exactly the
    choices of ``rng_select``: random data, padded rows, exact ties (duplicate heads and equal
    candidate distances), tiny eps1; ids in candidate order, -1 padded; the mask variant too."""
    from vecdb import _spann
    from vecdb.index._spann_parts import rng_select

    rng = np.random.default_rng(10 + code)
    heads = rng.standard_normal((200, 12)).astype(np.float32)
    heads[100:120] = heads[:20]  # duplicate heads: head-to-head distance 0, exact ties
    heads = np.round(heads * 4) / 4  # coarse values: many equal distances
    X = np.round(rng.standard_normal((700, 12)).astype(np.float32) * 4) / 4
    X[:50] = heads[:50]  # vectors that are heads (distance 0 to their nearest)
    if code == 1:
        heads /= np.linalg.norm(heads, axis=1, keepdims=True)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    D = ((X[:, None, :] - heads[None]) ** 2).sum(-1) if code == 0 else -(X @ heads.T)
    cand = np.argsort(D, axis=1, kind="stable")[:, :24].astype(np.int64)
    cdist = np.take_along_axis(D, cand, 1).astype(np.float32)
    cand[::5, 17:] = -1
    cdist[::5, 17:] = np.inf
    cand[3::11, 1:] = -1  # only the nearest head
    cdist[3::11, 1:] = np.inf
    for replicas, eps1 in ((8, 1.0), (1, 1.0), (3, 0.0), (24, 10.0), (30, 0.5)):
        want = rng_select(X, cand, cdist, lambda ids: heads[ids], code, replicas, eps1, block=97)
        keep = np.full(cand.shape, 7, dtype=np.uint8)
        ids = _spann.rng_select_heads(X, heads, cand, cdist, replicas, eps1, code, keep)
        assert ids.shape == (len(X), replicas) and ids.dtype == np.int64
        assert np.array_equal(keep.view(bool), want)
        for i in range(len(X)):
            got = ids[i][ids[i] >= 0]
            assert np.array_equal(got, cand[i][want[i]])
            assert (ids[i][len(got):] == -1).all()
        assert np.array_equal(_spann.rng_select_heads(None, heads, cand, cdist, replicas, eps1,
                                                      code), ids)
    with pytest.raises(ValueError):  # an id that is not a row of H
        _spann.rng_select_heads(None, heads[:10], cand, cdist, 8, 1.0, code)
    with pytest.raises(ValueError):
        _spann.rng_select_heads(X[:5], heads, cand, cdist, 8, 1.0, code)
    assert _spann.rng_select_heads(None, heads, cand[:0], cdist[:0], 8, 1.0, code).shape == (0, 8)


def test_head_index_select_replicas_matches_rng_select(sift5k):
    """The online index's replica choice (sparse list ids after splits, rows reused) equals the
    gathered ``rng_select``."""
    from vecdb.index._spann_parts import HeadIndex, rng_select

    X = sift5k["base"][:600]
    h = HeadIndex(128, 0, "flat")
    h.add(np.arange(0, 400, 2), X[:200])
    h.remove(np.arange(0, 100, 4))  # freed rows are reused by the next heads
    h.add(np.arange(1000, 1030), X[200:230])
    cand, cdist = h.search(X[230:], 32)
    want = rng_select(X[230:], cand, cdist, h.vectors, 0, 8, 1.0)
    assert np.array_equal(h.select_replicas(cand, cdist, 8, 1.0, block=50), want)


def test_sq8_postings(tmp_path, sift5k):
    """posting_dtype="sq8": ~1/4 of float32's bytes read, recall >= 0.9 on sift-5k through the
    build and the update path, distances those of the decoded vectors, the quantizer is durable
    in the store (reopen gives identical results), values outside its range are clipped."""
    from vecdb.index._spann_parts import SQ8
    from vecdb.storage.rocks import RocksKVStore

    X, Q = sift5k["base"], sift5k["queries"]
    store = RocksKVStore(tmp_path / "db")
    idx = SPANNIndex(128, "l2", store, posting_dtype="sq8", background=False, **SIFT)
    idx.add(X[:4500])
    idx.add(X[4500:], np.arange(4500, 5000))  # appends and splits with SQ8 records
    idx.flush()
    assert idx.stats["splits"] > 0
    I, D = idx.search(Q, 10, params=SIFT_SEARCH)
    assert recall(I, sift5k["gt"]) >= 0.9
    sq_bytes = idx.last_search_stats()["bytes_read"].sum()
    ref = SPANNIndex(128, "l2", background=False, **SIFT)
    ref.add(X)
    ref.search(Q, 10, params=SIFT_SEARCH)
    assert sq_bytes < 0.35 * ref.last_search_stats()["bytes_read"].sum()
    sq = idx._sq
    Xd = sq.decode(sq.encode(X)).astype(np.float64)
    d = ((Xd[I[:5]] - Q[:5, None, :].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(D[:5], d, rtol=1e-4, atol=1e-1)
    idx.save(tmp_path / "q.idx")
    store.compact("postings")  # the benchmark compacts after a bulk load: same lists after it
    store.close()
    store = RocksKVStore(tmp_path / "db")
    again = SPANNIndex.load(tmp_path / "q.idx", store=store)
    assert again.posting_dtype == "sq8"
    I2, D2 = again.search(Q, 10, params=SIFT_SEARCH)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    # outside the trained range: clipped, never wrapped
    big = np.full((1, 128), 1e4, dtype=np.float32)
    assert (sq.encode(big) == 255).all() and (sq.encode(-big) == 0).all()
    assert SQ8.from_bytes(sq.to_bytes(), 128).scale.tolist() == sq.scale.tolist()
    with pytest.raises(ValueError):
        SQ8.from_bytes(sq.to_bytes()[:-4], 128)
    store.close()


def test_build_stream(tmp_path, sift5k):
    """build_stream (chunks, a sample, run files, capped lists) on sift-5k: recall >= 0.9 at the
    documented lists, every head has a list, lists capped, reopen identical, updates work after
    it, and wrong row counts / a non-empty index are refused."""
    X, Q = sift5k["base"], sift5k["queries"]
    rng = np.random.default_rng(0)
    sample = X[rng.choice(len(X), 2500, replace=False)]
    store = MemoryKVStore()
    idx = SPANNIndex(128, "l2", store, posting_dtype="sq8", background=False, **SIFT)
    info = idx.build_stream((X[i:i + 700] for i in range(0, 5000, 700)), 5000, sample, tmp_path,
                            max_rows=4000)  # several reduce ranges
    assert info["lists"] == idx.num_lists() == len(idx._sizes) and len(idx) == 5000
    assert np.mean([v <= idx.posting_limit for v in idx._sizes.values()]) > 0.9  # capped
    # hub lists (over 2x the leaf size of 1/head_ratio = 17) were split into leaf-sized parts
    assert info["hubs_split"] > 0 and max(idx._sizes.values()) <= 2 * 17 + 17
    assert set(idx._heads.ids().tolist()) == set(idx._sizes)  # every head has its list
    I, _ = idx.search(Q, 10, params=SIFT_SEARCH)
    assert recall(I, sift5k["gt"]) >= 0.9
    assert not list(tmp_path.glob("spann-runs-*"))  # run files removed
    held = np.concatenate([np.frombuffer(store.get("postings", b"P" + int(h).to_bytes(8, "big")),
                                         idx._rec)["slot"] for h in idx._sizes])
    assert set(held.tolist()) == set(range(5000))  # every vector is in some list
    idx.save(tmp_path / "s.idx")
    again = SPANNIndex.load(tmp_path / "s.idx", store=store)
    np.testing.assert_array_equal(again.search(Q, 10, params=SIFT_SEARCH)[0], I)
    again.add(X[:50] + 0.5, np.arange(5000, 5050))
    assert (again.search(X[:5] + 0.5, 1)[0][:, 0] == np.arange(5000, 5005)).all()
    with pytest.raises(InvalidArgument):
        again.build_stream([X[:10]], 10, X[:10], tmp_path)
    with pytest.raises(InvalidArgument):
        SPANNIndex(128, background=False, **SIFT).build_stream([X[:100]], 50, X[:100], tmp_path)
    with pytest.raises(InvalidArgument):
        SPANNIndex(128, background=False, **SIFT).build_stream([X[:100]], 200, X[:100], tmp_path)


def test_pin_lists(sift5k):
    """pin_lists holds the most-probed lists in RAM: identical results, fewer lists read from the
    store, counted in memory_bytes; the pinned copies follow appends, splits and GC, so results
    stay identical to reading the store; max_bytes=0 unpins; bad budgets are refused."""
    X, Q = sift5k["base"], sift5k["queries"]
    idx = SPANNIndex(128, "l2", posting_dtype="sq8", background=False, head_ratio=0.06,
                     posting_limit=120)
    idx.add(X[:4000])
    I0, D0 = idx.search(Q, 10, params=SIFT_SEARCH)
    m0 = idx.memory_bytes()
    n = idx.pin_lists(200_000, X[::7], max_lists=32)
    assert n > 0 and 200_000 + 100 * n >= idx.memory_bytes() - m0 > 100_000
    I1, D1 = idx.search(Q, 10, params=SIFT_SEARCH)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)
    st = idx.last_search_stats()
    assert st["lists_from_ram"].sum() > 0 and (st["lists_from_ram"] <= st["lists_read"]).all()
    idx.add(X[4000:], np.arange(4000, 5000))  # appends to pinned lists, splits of some
    idx.remove(np.arange(0, 300))
    idx.compact()  # GC rewrites lists
    assert idx.stats["splits"] > 0
    I2, D2 = idx.search(Q, 10, params=SIFT_SEARCH)
    idx.pin_lists(0, X[:1])
    assert not idx._pinned
    I3, D3 = idx.search(Q, 10, params=SIFT_SEARCH)
    np.testing.assert_array_equal(I2, I3)
    np.testing.assert_array_equal(D2, D3)
    assert not np.isin(I2, np.arange(300)).any()
    with pytest.raises(InvalidArgument):
        idx.pin_lists(-1, X[:1])


def test_float16_postings(tmp_path, sift5k):
    """posting_dtype="float16": half the bytes per list, recall as float32's, distances those of
    the rounded vectors, reopen keeps the format, values beyond float16 are refused."""
    X, Q = sift5k["base"], sift5k["queries"]
    store = MemoryKVStore()
    idx = SPANNIndex(128, "l2", store, posting_dtype="float16", background=False, **SIFT)
    idx.add(X[:4500])
    idx.add(X[4500:], np.arange(4500, 5000))  # the update path (appends, splits) in float16
    idx.flush()
    I, D = idx.search(Q, 10, params=SIFT_SEARCH)
    assert recall(I, sift5k["gt"]) >= 0.9
    half_bytes = idx.last_search_stats()["bytes_read"].sum()
    Xh = X.astype(np.float16).astype(np.float64)
    d = ((Xh[I[:5]] - Q[:5, None, :].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(D[:5], d, rtol=1e-4, atol=1e-2)
    sift_index = SPANNIndex(128, "l2", background=False, **SIFT)
    sift_index.add(X[:4500])
    sift_index.add(X[4500:], np.arange(4500, 5000))
    sift_index.search(Q, 10, params=SIFT_SEARCH)
    assert half_bytes < 0.6 * sift_index.last_search_stats()["bytes_read"].sum()
    idx.save(tmp_path / "h.idx")
    again = SPANNIndex.load(tmp_path / "h.idx", store=store)
    assert again.posting_dtype == "float16"
    np.testing.assert_array_equal(again.search(Q, 10, params=SIFT_SEARCH)[0], I)
    with pytest.raises(InvalidArgument):
        idx.add(np.full((1, 128), 1e6, dtype=np.float32))
    with pytest.raises(InvalidArgument):
        SPANNIndex(8, posting_dtype="int8")
    assert len(idx) == 5000
