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


# -- URI sources: pyarrow filesystems (file://) and fsspec (memory://); no network ------------
def _parquet(path_or_file, X, ids):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    pq.write_table(pa.table({"vector": vec, "id": pa.array(ids, pa.int64())}), path_or_file,
                   row_group_size=13)


def test_file_uri_folder_glob_and_formats_match_local_paths(data):
    """``file://`` URIs go through pyarrow's filesystem (ranged reads, no memmap) and read the
    same rows, errors and row numbers as the local paths."""
    tmp, X = data
    (tmp / "sub").mkdir()
    np.save(tmp / "a.npy", X[:20])
    write_vecs(tmp / "sub" / "b.fvecs", X[20:35])
    _parquet(str(tmp / "c.parquet"), X[35:], np.arange(35, 50))
    bad = X[:9].copy()
    bad[4, 1] = np.inf
    np.save(tmp / "d.npy", bad)
    base = f"file://{tmp}"
    assert discover(base) == [f"{base}/a.npy", f"{base}/c.parquet", f"{base}/d.npy"]
    assert discover(f"{base}/**.fvecs") == [f"{base}/sub/b.fvecs"]
    assert discover(f"{base}/*.npy") == [f"{base}/a.npy", f"{base}/d.npy"]
    uris = discover([f"{base}/a.npy", f"{base}/sub/*", f"{base}/c.parquet", f"{base}/d.npy"])
    local = discover([str(tmp / "a.npy"), str(tmp / "sub"), str(tmp / "c.parquet"),
                      str(tmp / "d.npy")])
    (su, rej_u), (sl, rej_l) = plan(uris), plan(local)
    assert not rej_u and not rej_l
    assert [(s.kind, s.rows, s.offset, s.dim) for s in su] == \
        [(s.kind, s.rows, s.offset, s.dim) for s in sl]
    for a, b in zip(su, sl, strict=True):
        _, Xa, ra, ea = read_all(a, 8, batch=6, start=2)
        _, Xb, rb, eb = read_all(b, 8, batch=6, start=2)
        assert np.array_equal(Xa, Xb) and np.array_equal(ra, rb)
        assert [(e["row"], e["error"]) for e in ea] == [(e["row"], e["error"]) for e in eb]
    assert [e["row"] for e in read_all(su[3], 8)[3]] == [4]
    assert read_all(su[3], 8)[3][0]["file"] == f"{base}/d.npy"  # errors name the URI


def test_fsspec_memory_filesystem_with_glob_and_bad_shards(data):
    """A protocol pyarrow does not know (``memory://``) is opened through fsspec; the glob is
    matched on its listing; a truncated or wrong-dim shard is reported with its URI, the others
    are read."""
    import io

    fsspec = pytest.importorskip("fsspec")
    _, X = data
    fs = fsspec.filesystem("memory")
    root = f"/vecdb-test-{os.getpid()}"

    def put(name, arr):
        b = io.BytesIO()
        np.save(b, arr)
        with fs.open(f"{root}/{name}", "wb") as f:
            f.write(b.getvalue())
    try:
        put("p/a.npy", X[:30])
        put("p/b.npy", X[30:, :5])  # wrong dim
        b = io.BytesIO()
        np.save(b, X[:10])
        with fs.open(f"{root}/p/c.npy", "wb") as f:
            f.write(b.getvalue()[:-40])  # truncated: 10 rows promised, 8 complete
        with fs.open(f"{root}/p/d.parquet", "wb") as f:
            _parquet(f, X[:12], np.arange(100, 112))
        fs.pipe(f"{root}/p/notes.txt", b"not a shard")
        files = discover(f"memory://{root}/p/*")
        assert [f.rsplit("/", 1)[1] for f in files] == ["a.npy", "b.npy", "c.npy", "d.parquet"]
        shards, rejected = plan(files)
        assert not rejected
        _, Xa, _, ea = read_all(shards[0], 8)
        assert np.array_equal(Xa, X[:30]) and not ea
        with pytest.raises(ShardError, match="b.npy.*dimension 5"):
            read_all(shards[1], 8)
        _, Xc, rc, ec = read_all(shards[2], 8)
        assert np.array_equal(Xc, X[:8]) and rc.tolist() == list(range(8))
        assert [(e["file"], e["row"]) for e in ec] == [(files[2], 8)]
        bs, Xd, _, _ = read_all(shards[3], 8, batch=5, start=3)
        assert np.array_equal(Xd, X[3:12])
        assert np.concatenate([b.ids for b in bs]).tolist() == list(range(103, 112))
    finally:
        fs.rm(root, recursive=True)


def test_uri_errors_are_clear(tmp_path):
    """A missing object is a rejected shard naming its URI (the job goes on); a missing folder
    or an empty glob, and a scheme nothing can open, are InvalidArgument naming the source."""
    np.save(tmp_path / "a.npy", np.zeros((3, 4), np.float32))
    base = f"file://{tmp_path}"
    shards, rejected = plan([f"{base}/a.npy", f"{base}/gone.npy"])
    assert [s.path for s in shards] == [f"{base}/a.npy"]
    assert rejected[0]["file"] == f"{base}/gone.npy" and "gone.npy" in rejected[0]["error"]
    with pytest.raises(InvalidArgument, match="no such file, folder or object prefix"):
        discover(f"{base}/missing-folder")
    with pytest.raises(InvalidArgument, match="no matching"):
        discover(f"{base}/*.fvecs")
    with pytest.raises(InvalidArgument, match="nosuchscheme"):
        discover("nosuchscheme://bucket/x.npy")
