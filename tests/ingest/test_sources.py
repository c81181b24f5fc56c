"""Shard readers, validation (file + row in every report) and the resumable job state."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vecdb.errors import FailedPrecondition, InvalidArgument
from vecdb.ingest.sources import Columns, ShardError, discover, plan, read_batches
from vecdb.ingest.state import JobState, Progress


def write_vecs(path, X, kind="fvecs"):
    dt = {"fvecs": "<f4", "bvecs": "u1", "ivecs": "<i4"}[kind]
    n, d = X.shape
    rec = np.empty(n, dtype=[("d", "<i4"), ("v", dt, (d,))])
    rec["d"] = d
    rec["v"] = X
    rec.tofile(path)


def read_all(shard, dim, batch=7, start=0, columns=None):
    bs = list(read_batches(shard, dim, batch, start, columns or Columns()))
    X = np.concatenate([b.vectors for b in bs]) if bs else np.zeros((0, dim))
    rows = np.concatenate([b.rows for b in bs]) if bs else np.zeros(0, int)
    return bs, X, rows, [e for b in bs for e in b.errors]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    return tmp_path, rng.standard_normal((50, 8)).astype(np.float32)


@pytest.mark.parametrize("kind", ["npy", "fvecs", "bvecs", "ivecs"])
def test_round_trip_formats(data, kind):
    tmp, X = data
    if kind in ("bvecs", "ivecs"):
        X = np.abs(X * 20).astype(np.uint8 if kind == "bvecs" else np.int32)
    p = str(tmp / f"a.{kind}")
    np.save(p, X) if kind == "npy" else write_vecs(p, X, kind)
    shards, rejected = plan(discover(p))
    assert not rejected and shards[0].rows == 50 and shards[0].dim == 8
    bs, Y, rows, errs = read_all(shards[0], 8)
    assert not errs and np.array_equal(Y, X.astype(np.float32))
    assert rows.tolist() == list(range(50)) and max(len(b) for b in bs) <= 7
    _, Y2, rows2, _ = read_all(shards[0], 8, start=23)  # resume from an offset
    assert rows2[0] == 23 and np.array_equal(Y2, X[23:].astype(np.float32))


def test_parquet_columns(data):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp, X = data
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 8)
    X2 = X.copy()
    X2[3, 1] = np.nan
    t = pa.table({"vector": vec, "id": pa.array(np.arange(100, 150), pa.uint64()),
                  "tenant": ["t1" if i % 2 else "t2" for i in range(50)],
                  "acl": [["t3"] if i % 5 == 0 else [] for i in range(50)],
                  "payload": [json.dumps({"i": i}) for i in range(50)]})
    pq.write_table(t, tmp / "a.parquet", row_group_size=16)
    binv = pa.array([r.tobytes() for r in X2], pa.binary())
    pq.write_table(pa.table({"vector": binv}), tmp / "b.parquet")
    shards, _ = plan(discover(str(tmp)))
    assert [os.path.basename(s.path) for s in shards] == ["a.parquet", "b.parquet"]
    bs, Y, rows, errs = read_all(shards[0], 8, batch=10)
    assert np.array_equal(Y, X) and not errs
    assert np.concatenate([b.ids for b in bs]).tolist() == list(range(100, 150))
    assert bs[0].tenants[:2] == ["t2", "t1"] and bs[0].acl[0] == ["t3"]
    assert bs[0].payloads[3] == {"i": 3}
    _, Y, rows, _ = read_all(shards[0], 8, batch=10, start=37)  # skips whole row groups
    assert rows.tolist() == list(range(37, 50)) and np.array_equal(Y, X[37:])
    _, Y, rows, errs = read_all(shards[1], 8)
    assert 3 not in rows and len(Y) == 49
    assert errs == [{"file": shards[1].path, "row": 3, "error": "non-finite value (NaN/inf)"}]


def test_bad_rows_and_shards_are_reported_with_file_and_row(data):
    tmp, X = data
    Xn = X.copy()
    Xn[[4, 40]] = np.inf
    np.save(tmp / "a_nan.npy", Xn)
    np.save(tmp / "b_dim.npy", X[:, :5])
    write_vecs(str(tmp / "c_trunc.fvecs"), X)
    with open(tmp / "c_trunc.fvecs", "r+b") as f:
        f.truncate(os.path.getsize(tmp / "c_trunc.fvecs") - 10)
    np.save(tmp / "d_trunc.npy", X)
    with open(tmp / "d_trunc.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp / "d_trunc.npy") - 8 * 4 * 5 - 3)
    (tmp / "e_junk.npy").write_bytes(b"not numpy at all")
    shards, rejected = plan(discover(str(tmp)))
    assert [os.path.basename(r["file"]) for r in rejected] == ["e_junk.npy"]
    by = {os.path.basename(s.path): s for s in shards}
    _, Y, rows, errs = read_all(by["a_nan.npy"], 8)
    assert len(Y) == 48 and [(e["row"], os.path.basename(e["file"])) for e in errs] == \
        [(4, "a_nan.npy"), (40, "a_nan.npy")]
    with pytest.raises(ShardError, match=r"b_dim.npy: row 0: dimension 5, expected 8"):
        read_all(by["b_dim.npy"], 8)
    _, Y, rows, errs = read_all(by["c_trunc.fvecs"], 8)
    assert len(Y) == 49 and errs[-1]["row"] == 49 and "truncated" in errs[-1]["error"]
    _, Y, rows, errs = read_all(by["d_trunc.npy"], 8)
    assert len(Y) == 44 and errs[-1]["row"] == 44 and "truncated" in errs[-1]["error"]
    assert np.array_equal(Y, X[:44])


def test_row_ranges_partition_a_shard_and_report_each_problem_once(data):
    """``read_batches(start, end)``: disjoint ranges of one shard (what a datasource's read
    tasks read) give every row exactly once and a truncation once, in the range reaching it."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp, X = data
    write_vecs(str(tmp / "t.fvecs"), X)
    with open(tmp / "t.fvecs", "r+b") as f:
        f.truncate(os.path.getsize(tmp / "t.fvecs") - 10)
    np.save(tmp / "u.npy", X)
    with open(tmp / "u.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp / "u.npy") - 8 * 4 * 5 - 3)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 8)
    pq.write_table(pa.table({"vector": vec}), tmp / "v.parquet", row_group_size=16)
    shards, _ = plan(discover(str(tmp)))
    want = {"t.fvecs": (49, [49]), "u.npy": (44, [44]), "v.parquet": (50, [])}
    for sh in shards:
        rows, errs = [], []
        for lo in range(0, sh.rows, 13):
            for b in read_batches(sh, 8, 5, lo, Columns(), end=lo + 13):
                assert lo <= b.start and b.end <= min(lo + 13, sh.rows)
                rows += b.rows.tolist()
                errs += [e["row"] for e in b.errors]
                assert np.array_equal(b.vectors, X[b.rows])
        n, bad = want[os.path.basename(sh.path)]
        assert rows == list(range(n)) and errs == bad, sh.path


def test_discover_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="no such file"):
        discover(str(tmp_path / "nope*.npy"))
    with pytest.raises(InvalidArgument, match="no .npy"):
        discover(str(tmp_path))


def test_job_state_atomic_resume_and_fingerprint(data):
    tmp, X = data
    np.save(tmp / "a.npy", X)
    shards, _ = plan(discover(str(tmp)))
    path = str(tmp / "state" / "job.json")
    st = JobState(path, shards, {"job": 1})
    st.ack(shards[0].path, 20, 19, [{"file": shards[0].path, "row": 3, "error": "x"}])
    st.save()
    st2 = JobState(path, shards, {"job": 1})
    assert st2.resumed and st2.acked(shards[0].path) == 20 and len(st2.errors()) == 1
    st2.ack(shards[0].path, 20, 0, [{"file": shards[0].path, "row": 3, "error": "x"}])
    assert len(st2.errors()) == 1  # the same bad row reported twice is recorded once
    with pytest.raises(FailedPrecondition, match="another job"):
        JobState(path, shards, {"job": 2})
    assert not [f for f in os.listdir(tmp / "state") if ".tmp" in f]
    prog = Progress(100, str(tmp / "status.json"), stream=None)
    prog.update(40, force=True)
    s = json.loads((tmp / "status.json").read_text())
    assert s["rows_done"] == 40 and s["rows_total"] == 100 and s["rows_per_s"] > 0
