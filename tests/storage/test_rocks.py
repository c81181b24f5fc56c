"""RocksKVStore: the KVStore protocol on RocksDB (atomic batches, ordering, options, reopen)."""

from __future__ import annotations

import pytest

from vecdb.errors import FailedPrecondition, InvalidArgument
from vecdb.storage import COLUMN_FAMILIES, KVStore, MemoryKVStore, WriteBatch
from vecdb.storage.rocks import RocksKVStore


@pytest.fixture(params=["rocks", "memory"])
def store(request, tmp_path):
    s = RocksKVStore(tmp_path / "db") if request.param == "rocks" else MemoryKVStore()
    yield s
    s.close()


def test_protocol(store):
    assert isinstance(store, KVStore)


def test_put_get_delete_multi_get(store):
    store.put("vectors", b"\x00\x01", b"a")
    store.put("ids", b"\x00\x01", b"b")  # same key, other column family
    assert store.get("vectors", b"\x00\x01") == b"a"
    assert store.get("ids", b"\x00\x01") == b"b"
    assert store.multi_get("vectors", [b"\x00\x01", b"zz", b"\x00\x01"]) == [b"a", None, b"a"]
    assert store.multi_get("vectors", []) == []
    store.delete("vectors", b"\x00\x01")
    assert store.get("vectors", b"\x00\x01") is None
    assert store.get("ids", b"\x00\x01") == b"b"


def test_batch_and_ordered_prefix_iteration(store):
    b = WriteBatch()
    keys = [i.to_bytes(8, "big") for i in (300, 2, 70000, 1)]
    b.put_many("oplog", keys, [b"v%d" % i for i in range(4)])
    b.put("meta", b"tenant/a", b"0")
    b.put("meta", b"tenant/b", b"1")
    b.put("meta", b"tenants", b"x")
    b.put("meta", b"zzz", b"y")
    store.write(b)
    got = [int.from_bytes(k, "big") for k, _ in store.iterate("oplog")]
    assert got == [1, 2, 300, 70000]  # big-endian keys iterate in numeric order
    assert [k for k, _ in store.iterate("meta", prefix=b"tenant/")] == [b"tenant/a", b"tenant/b"]
    start = (3).to_bytes(8, "big")
    got = [int.from_bytes(k, "big") for k, _ in store.iterate("oplog", start=start)]
    assert got == [300, 70000]
    b = WriteBatch()
    b.delete_range("oplog", (0).to_bytes(8, "big"), (301).to_bytes(8, "big"))
    b.delete_many("meta", [b"zzz"])
    store.write(b)
    assert [int.from_bytes(k, "big") for k, _ in store.iterate("oplog")] == [70000]
    assert store.get("meta", b"zzz") is None


def test_rocks_batch_is_atomic_on_bad_column_family(tmp_path):
    s = RocksKVStore(tmp_path / "db")
    b = WriteBatch()
    b.put("vectors", b"k", b"v")
    b.put("no-such-cf", b"k", b"v")
    with pytest.raises(InvalidArgument):
        s.write(b)
    assert s.get("vectors", b"k") is None  # nothing of the failed batch was applied
    s.close()


def test_rocks_reopen_with_options(tmp_path):
    s = RocksKVStore(tmp_path / "db", sync=True)
    assert set(COLUMN_FAMILIES) <= set(s._cfs)
    b = WriteBatch()
    b.put_many("vectors", [b"a", b"b"], [b"1" * 1000, b"2" * 1000])
    s.write(b)
    s.flush()
    assert s.disk_bytes() > 0
    s.close()
    with pytest.raises(FailedPrecondition):
        s.get("vectors", b"a")
    s = RocksKVStore(tmp_path / "db", direct_reads=True, block_cache_bytes=0, create=False)
    assert s.multi_get("vectors", [b"a", b"b"]) == [b"1" * 1000, b"2" * 1000]
    s.close()


def test_rocks_open_missing_without_create(tmp_path):
    with pytest.raises(FailedPrecondition):
        RocksKVStore(tmp_path / "nothing", create=False)


def test_rocks_second_open_of_same_folder_fails(tmp_path):
    s = RocksKVStore(tmp_path / "db")
    with pytest.raises(FailedPrecondition):
        RocksKVStore(tmp_path / "db")
    s.close()


def _sst(path, items):
    import rocksdict

    w = rocksdict.SstFileWriter(options=rocksdict.Options(raw_mode=True))
    w.open(str(path))
    for k, v in items:
        w[k] = v
    w.finish()
    return str(path)


def test_ingest_sst_adds_files_atomically(tmp_path):
    s = RocksKVStore(tmp_path / "db")
    try:
        s.put("vectors", b"\x00" * 7 + b"\x05", b"old")
        a = _sst(tmp_path / "a.sst", [(i.to_bytes(8, "big"), b"a%d" % i) for i in range(0, 5)])
        b = _sst(tmp_path / "b.sst", [(i.to_bytes(8, "big"), b"b%d" % i) for i in range(5, 9)])
        s.ingest_sst("vectors", [a, b], move=True)
        got = dict(s.iterate("vectors"))
        assert len(got) == 9 and got[(5).to_bytes(8, "big")] == b"b5"  # ingested value wins
        assert s.get("ids", (1).to_bytes(8, "big")) is None  # only the named family
        with pytest.raises(InvalidArgument, match="no such SST"):
            s.ingest_sst("vectors", [str(tmp_path / "missing.sst")])
        (tmp_path / "junk.sst").write_bytes(b"not an sst file")
        with pytest.raises(InvalidArgument, match="ingest_sst"):
            s.ingest_sst("acl", [str(tmp_path / "junk.sst")])
        assert list(s.iterate("acl")) == []
        with pytest.raises(InvalidArgument, match="unknown column family"):
            s.ingest_sst("nope", [a])
    finally:
        s.close()
    s = RocksKVStore(tmp_path / "db")  # durable across reopen
    try:
        assert s.get("vectors", (8).to_bytes(8, "big")) == b"b8"
    finally:
        s.close()
