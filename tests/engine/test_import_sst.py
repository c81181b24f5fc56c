"""``Database.import_sst``: a collection assembled from externally built SST files (the bulk
ingestion's import), all or nothing, searchable, reopenable and writable afterwards."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rocksdict

import vecdb
from vecdb.engine import codec
from vecdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from vecdb.index.flat import exact_topk


def _sst(path, keys, values) -> str:
    w = rocksdict.SstFileWriter(options=rocksdict.Options(raw_mode=True))
    w.open(str(path))
    for k, v in zip(keys, values, strict=True):
        w[k] = v
    w.finish()
    return str(path)


def _files(tmp_path, X, ids, owners, grants):
    """Two vectors SSTs (disjoint slot ranges, as two bulk tasks write them) + one ACL SST."""
    slots = np.arange(len(X))
    half = len(X) // 2
    out = {"vectors": [], "acl": []}
    for j, sl in enumerate((slice(0, half), slice(half, len(X)))):
        out["vectors"].append(_sst(tmp_path / f"v{j}.sst", codec.be_keys(slots[sl]),
                                   codec.pack_vectors(ids[sl], owners[sl], X[sl])))
    gs = sorted(grants)
    out["acl"].append(_sst(tmp_path / "a.sst", codec.be_keys(np.array(gs)),
                           [np.array(grants[s], dtype="<i4").tobytes() for s in gs]))
    return out


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_import_sst_builds_a_searchable_collection(tmp_path, index):
    rng = np.random.default_rng(0)
    n, dim = 2000, 16
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ids = np.arange(10_000, 10_000 + n, dtype=np.uint64)
    owners = (np.arange(n) % 2).astype(np.int32)  # tenant 0 = "a", 1 = "b"
    grants = {s: [2] for s in range(0, n, 10)}  # every 10th vector shared with "c"
    sst = _files(tmp_path, X, ids, owners, grants)
    db = vecdb.open(tmp_path / "data", background_checkpoints=False)
    try:
        other = db.create_collection("other", dim=4)  # the database stays open and serving
        other.create_tenant("x")
        col = db.import_sst("imp", dim=dim, index=index, tenants=["a", "b", "c"], sst=sst,
                            expected_rows=n)
        assert len(col) == n and col.list_tenants() == ["a", "b", "c"]
        assert col.tenant_stats("a")["owned"] == n // 2
        assert col.tenant_stats("c")["visible"] == n // 10
        assert not any(os.path.exists(p) for ps in sst.values() for p in ps)  # moved in
        q = X[:5] + 0.01
        mine = np.flatnonzero(owners == 0)
        want, _ = exact_topk(q, X[mine], 5, 0)
        got = col.search(q, 5, tenant="a", params={"ef": 200} if index == "hnsw" else None)
        assert (got.ids[:, 0] == ids[mine[want[:, 0]]].astype(np.int64)).all()
        seen_c = col.ids("c")
        assert set(seen_c.tolist()) == {int(ids[s]) for s in grants}
        col.upsert([1], np.ones((1, dim), np.float32), tenant="b")  # writable afterwards
        with pytest.raises(AlreadyExists):
            db.import_sst("imp", dim=dim, sst={})
    finally:
        db.close()
    db = vecdb.open(tmp_path / "data", background_checkpoints=False)
    try:
        col = db.collection("imp")
        assert len(col) == n + 1
        assert np.allclose(col.get([10_003], tenant="b").vectors, X[3])
    finally:
        db.close()


def test_import_sst_failures_leave_no_collection(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 8)).astype(np.float32)
    ids = np.arange(100, dtype=np.uint64)
    sst = _files(tmp_path, X, ids, np.zeros(100, np.int32), {1: [0]})
    db = vecdb.open(tmp_path / "data", background_checkpoints=False)
    try:
        with pytest.raises(InvalidArgument, match="cannot ingest into"):
            db.import_sst("x", dim=8, tenants=["a"], sst={"oplog": sst["vectors"]})
        with pytest.raises(FailedPrecondition, match="expected 99"):
            db.import_sst("x", dim=8, tenants=["a"], sst=sst, expected_rows=99)
        with pytest.raises(InvalidArgument, match="no such SST"):
            db.import_sst("x", dim=8, tenants=["a"], sst={"vectors": [str(tmp_path / "no")]})
        assert db.list_collections() == []
        assert [d for d in os.listdir(tmp_path / "data" / "collections")] == []
    finally:
        db.close()


@pytest.mark.parametrize("adopted", [False, True], ids=["rebuilt", "adopted"])
@pytest.mark.parametrize("cache", [32 << 20, 0], ids=["32MiB", "disabled"])
def test_import_sst_block_cache(tmp_path, monkeypatch, adopted, cache):
    """An adopted import's stores (ingest, the assembling open, the reopen check) get a block
    cache of at most IMPORT_CACHE_BYTES: they read each block about once, so a serving-sized
    cache would only hold the import's reads. An import that rebuilds the index by adding
    every vector keeps the configured cache (its index may re-read blocks). The collection
    opened afterwards gets the configured cache; a disabled one (0) stays disabled."""
    from vecdb.engine import collection as engine
    from vecdb.engine.state import acl_csr
    from vecdb.index.flat import FlatIndex
    from vecdb.storage import rocks

    seen: list[tuple[str, int]] = []
    real = rocks.RocksKVStore.__init__

    def spy(self, path, **kw):
        seen.append((os.fspath(path), kw.get("block_cache_bytes", 64 << 20)))
        real(self, path, **kw)

    monkeypatch.setattr(rocks.RocksKVStore, "__init__", spy)
    rng = np.random.default_rng(1)
    n, dim = 300, 8
    X = rng.standard_normal((n, dim)).astype(np.float32)
    sst = _files(tmp_path, X, np.arange(n, dtype=np.uint64), np.zeros(n, np.int32), {0: [1]})
    adopt = None
    if adopted:
        def adopt(store, st):
            idx = FlatIndex(dim)  # owner 0 ("a") for every vector, as in the files
            slots = np.arange(n)
            idx.add(X, slots, acl_csr(slots, np.zeros(n, np.int32), {0: [1]}))
            return idx

    db = vecdb.open(tmp_path / "data", background_checkpoints=False, block_cache_bytes=cache)
    try:
        seen.clear()
        col = db.import_sst("imp", dim=dim, tenants=["a", "b"], sst=sst, expected_rows=n,
                            adopt=adopt)
        assert len(col) == n
        assert col.search(X[:3], 1, tenant="a").ids[:, 0].tolist() == [0, 1, 2]
    finally:
        db.close()
    during = [b for p, b in seen if f"{os.sep}.tmp-imp-" in p]
    after = [b for p, b in seen if f"{os.sep}.tmp-imp-" not in p]
    assert len(during) >= 3
    assert set(during) == {min(cache, engine.IMPORT_CACHE_BYTES) if adopted else cache}
    assert after == [cache]


class _NoTrim:
    """A libc handle without ``malloc_trim`` (as on musl or macOS)."""


@pytest.mark.parametrize("cdll", ["raises", "no-symbol"])
def test_release_freed_is_a_no_op_without_malloc_trim(monkeypatch, cdll):
    """Where libc cannot be opened or has no ``malloc_trim``, ``release_freed`` does nothing
    (no exception), looks the symbol up once and remembers that there is none."""
    import ctypes

    from vecdb.engine import collection as engine

    calls = []

    def fake(name, *a, **kw):
        calls.append(name)
        if cdll == "raises":
            raise OSError("no libc here")
        return _NoTrim()

    monkeypatch.setattr(engine, "_trim", None)
    monkeypatch.setattr(ctypes, "CDLL", fake)
    engine.release_freed()
    engine.release_freed()
    assert calls == [None] and engine._trim is False


def test_release_freed_calls_malloc_trim_with_its_signature(monkeypatch):
    """With a ``malloc_trim`` symbol, it is declared ``int malloc_trim(size_t)`` and called
    with 0 on every call."""
    import ctypes

    from vecdb.engine import collection as engine

    class Fn:
        argtypes = restype = None

        def __init__(self):
            self.args = []

        def __call__(self, *args):
            self.args.append(args)
            return 1

    class Lib:
        malloc_trim = Fn()

    monkeypatch.setattr(engine, "_trim", None)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **kw: Lib())
    engine.release_freed()
    engine.release_freed()
    fn = Lib.malloc_trim
    assert fn.argtypes == [ctypes.c_size_t] and fn.restype is ctypes.c_int
    assert fn.args == [(0,), (0,)]


def test_failed_import_still_releases_the_freed_heap(tmp_path, monkeypatch):
    """An import that fails after the assembling open started (here: the adopter raises)
    still hands the freed heap back (``release_freed`` in a finally), and leaves nothing."""
    from vecdb.engine import collection as engine

    trims = []
    monkeypatch.setattr(engine, "release_freed", lambda: trims.append(1))
    n, dim = 50, 4
    X = np.random.default_rng(2).standard_normal((n, dim)).astype(np.float32)
    sst = _files(tmp_path, X, np.arange(n, dtype=np.uint64), np.zeros(n, np.int32), {0: [1]})

    def adopt(store, st):
        raise RuntimeError("adopter failed")

    db = vecdb.open(tmp_path / "data", background_checkpoints=False)
    try:
        with pytest.raises(RuntimeError, match="adopter failed"):
            db.import_sst("imp", dim=dim, tenants=["a", "b"], sst=sst, adopt=adopt)
        assert trims and "imp" not in db.list_collections()
    finally:
        db.close()
