"""The Ray Data datasource over vecdb's shards: formats, shard index + row per row, bad rows and
shards reported with file and row, resume offsets, blocks merged or cut by Ray Data, and the
read fused with the map function (one operator, one task per read task)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vecdb.errors import InvalidArgument
from vecdb.ingest.sources import Columns, discover, plan

pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")

from vecdb.ingest.dataset import (  # noqa: E402
    ShardDatasource,
    batch_table,
    map_shards,
    pieces,
    read_shards,
)

DIM = 8


def write_fvecs(path, X):
    rec = np.empty(len(X), dtype=[("d", "<i4"), ("v", "<f4", (X.shape[1],))])
    rec["d"], rec["v"] = X.shape[1], X
    rec.tofile(path)


@pytest.fixture
def source(tmp_path):
    """npy with two NaN rows, fvecs truncated mid-record, Parquet with every optional column,
    an npy of the wrong dimension and a file that is not numpy at all."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    A = rng.standard_normal((230, DIM)).astype(np.float32)
    A[[7, 150]] = np.nan
    np.save(tmp_path / "a.npy", A)
    B = rng.standard_normal((60, DIM)).astype(np.float32)
    write_fvecs(tmp_path / "b.fvecs", B)
    with open(tmp_path / "b.fvecs", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "b.fvecs") - 7)
    C = rng.standard_normal((40, DIM)).astype(np.float32)
    pq.write_table(pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(C.reshape(-1)), DIM),
        "id": pa.array(np.arange(1000, 1040), pa.uint64()),
        "tenant": ["x" if i % 2 else "y" for i in range(40)],
        "acl": [["z"] if i % 4 == 0 else [] for i in range(40)],
        "payload": [json.dumps({"i": i}) for i in range(40)]}),
        tmp_path / "c.parquet", row_group_size=16)
    np.save(tmp_path / "d_dim.npy", A[:5, :3])
    (tmp_path / "e_junk.npy").write_bytes(b"junk")
    shards, rejected = plan(discover(str(tmp_path)))
    return shards, rejected, {"a.npy": A, "b.fvecs": B[:59], "c.parquet": C}


def collect(tables):
    """(shard, row) -> vector, extra columns; errors; failed shards, from decoded blocks."""
    got, errors, failed = {}, [], []
    for t in tables:
        for p in pieces(t):
            b = p.batch
            errors += p.errors
            if p.failed:
                failed.append((os.path.basename(b.shard), p.failed))
            for j, r in enumerate(b.rows.tolist()):
                key = (p.shard, r)
                assert key not in got, f"row {key} twice"
                got[key] = (b.vectors[j], None if b.ids is None else int(b.ids[j]),
                            None if b.tenants is None else b.tenants[j],
                            None if b.acl is None else b.acl[j],
                            None if b.payloads is None else b.payloads[j])
    return got, errors, failed


def check(shards, data, got, errors, failed):
    names = [os.path.basename(s.path) for s in shards]
    assert names == ["a.npy", "b.fvecs", "c.parquet", "d_dim.npy"]
    for i, name in enumerate(names[:3]):
        X = data[name]
        ok = [r for r in range(len(X)) if np.isfinite(X[r]).all()]
        assert sorted(r for s, r in got if s == i) == ok, name
        for r in ok:
            assert np.array_equal(got[i, r][0], X[r])
    assert got[2, 5][1:] == (1005, "x", [], {"i": 5})
    assert got[2, 8][1:] == (1008, "y", ["z"], {"i": 8})
    assert got[0, 3][1:] == (None, None, None, None)
    where = sorted((os.path.basename(e["file"]), e["row"], e["error"].split(":")[0])
                   for e in errors)
    assert where == [("a.npy", 7, "non-finite value (NaN/inf)"),
                     ("a.npy", 150, "non-finite value (NaN/inf)"),
                     ("b.fvecs", 59, "truncated"),
                     ("d_dim.npy", 0, os.path.join(os.path.dirname(shards[3].path),
                                                   "d_dim.npy"))]
    assert failed == [("d_dim.npy", f"{shards[3].path}: row 0: dimension 3, expected 8")]


def test_blocks_decode_outside_ray(source):
    """The read tasks' bodies run in-process: the same rows, errors and failures."""
    shards, rejected, data = source
    assert [os.path.basename(r["file"]) for r in rejected] == ["e_junk.npy"]
    src = ShardDatasource(shards, DIM, batch_rows=50, rows_per_task=100)
    assert src.ranges()[:4] == [(0, 0, 100), (0, 100, 200), (0, 200, 230), (1, 0, 59)]
    tasks = src.get_read_tasks(1)
    assert len(tasks) == len(src.ranges()) == 3 + 1 + 1 + 1
    tables = [t for task in tasks for t in task()]
    assert all(t.num_rows <= 50 for t in tables)
    check(shards, data, *collect(tables))


def test_dataset_reads_every_row_once_through_ray(ray_local, source):
    shards, _, data = source
    ds = read_shards(shards, DIM, batch_rows=32, rows_per_task=64)
    tables = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    full = collect(tables)
    check(shards, data, *full)
    # merged (Ray Data may coalesce blocks) and cut (or split them): the same rows
    merged = pa.concat_tables([t.select(["shard", "file", "row", "start", "end", "vector",
                                         "error", "failed"]) for t in tables])
    got, errors, failed = collect([merged.slice(0, 77), merged.slice(77)])
    assert got.keys() == full[0].keys() and len(failed) == 1 and len(errors) == 4


def test_resume_offsets(ray_local, source):
    shards, _, data = source
    starts = [120, 59, 37, 0]
    ds = read_shards(shards, DIM, batch_rows=16, starts=starts)
    got, errors, failed = collect(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    by = {}
    for s, r in got:
        by.setdefault(s, []).append(r)
    assert sorted(by[0]) == [r for r in range(120, 230) if r != 150]
    assert 1 not in by and sorted(by[2]) == [37, 38, 39]
    # the truncation (at row 59) is still reported by the shard's last range
    assert sorted(e["row"] for e in errors if e["file"].endswith("b.fvecs")) == [59]
    assert len(failed) == 1


def test_map_shards_fuses_read_and_map(ray_local, source):
    shards, _, data = source

    def _where(piece, tag):  # nested: pickled by value (the test module is not importable)
        b = piece.batch
        return {"pid": os.getpid(), "shard": piece.shard, "rows": b.rows.tolist(), "tag": tag,
                "failed": piece.failed, "errors": len(piece.errors)}
    res, info = map_shards(shards, DIM, _where, {"tag": "t"}, batch_rows=40)
    assert info["fused"] and info["operators"] == ["ReadVecdbShards->MapBatches(_apply)"]
    assert "ReadVecdbShards->MapBatches(_apply): 4 tasks executed" in info["stats"]
    assert all(r["pid"] != os.getpid() and r["tag"] == "t" for r in res)  # in the workers
    rows = {(r["shard"], x) for r in res for x in r["rows"]}
    assert len(rows) == sum(len(r["rows"]) for r in res) == 228 + 59 + 40
    assert [r["failed"] is not None for r in res].count(True) == 1


def test_bad_arguments():
    with pytest.raises(InvalidArgument, match="batch_rows"):
        ShardDatasource([], DIM, batch_rows=0)
    with pytest.raises(InvalidArgument, match="rows_per_task"):
        ShardDatasource([], DIM, rows_per_task=0)
    with pytest.raises(InvalidArgument, match="starts"):
        ShardDatasource([], DIM, starts=[0])


def test_batch_table_round_trip_keeps_columns():
    from vecdb.ingest.sources import Batch

    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = Batch("/x/f.parquet", 10, 15, np.array([10, 12, 14]), X, ids=np.array([7, 8, 9]),
              tenants=["a", "b", "a"], acl=[[], ["c"], []], payloads=[None, {"k": 1}, None],
              errors=[{"file": "/x/f.parquet", "row": 11, "error": "missing tenant"}])
    (p,) = pieces(batch_table(b, 3, 4))
    assert p.shard == 3 and p.failed is None and (p.batch.start, p.batch.end) == (10, 15)
    assert p.batch.rows.tolist() == [10, 12, 14] and np.array_equal(p.batch.vectors, X)
    assert p.batch.ids.tolist() == [7, 8, 9] and p.batch.tenants == ["a", "b", "a"]
    assert p.batch.acl == [[], ["c"], []] and p.batch.payloads == [None, {"k": 1}, None]
    assert p.errors == b.errors and Columns().vector == "vector"
