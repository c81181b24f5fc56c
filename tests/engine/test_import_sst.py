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


def test_import_sst_reads_through_a_small_block_cache(tmp_path, monkeypatch):
    """The import's stores (ingest, the assembling open, the reopen check) get a block cache of
    at most IMPORT_CACHE_BYTES: they read each block once, so a serving-sized cache would only
    hold the import's reads. The collection opened afterwards gets the configured cache."""
    from vecdb.engine import collection as engine
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
    db = vecdb.open(tmp_path / "data", background_checkpoints=False,
                    block_cache_bytes=32 << 20)
    try:
        seen.clear()
        col = db.import_sst("imp", dim=dim, tenants=["a", "b"], sst=sst, expected_rows=n)
        assert len(col) == n
    finally:
        db.close()
    during = [b for p, b in seen if f"{os.sep}.tmp-imp-" in p]
    after = [b for p, b in seen if f"{os.sep}.tmp-imp-" not in p]
    assert len(during) >= 3 and max(during) == min(32 << 20, engine.IMPORT_CACHE_BYTES)
    assert after == [32 << 20]
