"""Read errors in ingestion sources, injected with the ``faulty://`` filesystem
(``vecdb.ingest.testing``): a transient error part-way through a shard is retried from the row
where it stopped (every row exactly once), a persistent one gives the shard up at its first
unread row while the other shards complete (the online job ends incomplete, and its rerun
resumes the shard there), and a permanent error or a truncation is not retried (not by a rerun
either)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("fsspec")  # before vecdb.ingest.testing (faulty:// is an fsspec filesystem)
pytest.importorskip("pyarrow")

from vecdb.errors import FailedPrecondition, InvalidArgument  # noqa: E402
from vecdb.ingest import testing  # noqa: E402
from vecdb.ingest.sources import (  # noqa: E402
    Columns,
    Retry,
    ShardError,
    ShardReadError,
    StorageUnavailable,
    discover,
    is_transient,
    plan,
    read_batches,
)

testing.register()

ROWS, DIM = 600, 8
RETRY = Retry(attempts=3, backoff_s=0.01)  # fast: the tests wait for every back-off
NPY_HEADER = 128  # bytes before the rows of an .npy written by np.save (version 1.0)


def npy_byte(row: int) -> int:
    """Byte offset of ``row`` in the .npy shards of these tests."""
    return NPY_HEADER + row * DIM * 4


def write_fvecs(path, X) -> None:
    rec = np.empty(len(X), dtype=[("d", "<i4"), ("v", "<f4", (X.shape[1],))])
    rec["d"], rec["v"] = X.shape[1], X
    rec.tofile(path)


@pytest.fixture
def src(tmp_path):
    """Four .npy shards of ROWS rows (global row g holds the vector g * ones + column index)."""
    d = tmp_path / "src"
    d.mkdir()
    X = (np.arange(4 * ROWS, dtype=np.float32)[:, None] * 1.0
         + np.arange(DIM, dtype=np.float32)[None, :] / 16)
    for i in range(4):
        np.save(d / f"s{i}.npy", X[i * ROWS:(i + 1) * ROWS])
    return d, X


def read(shard, batch=100, start=0, columns=None):
    """(rows, vectors, errors) of every batch ``read_batches`` delivers before it stops, and the
    error it stopped with (None when it read to the end)."""
    rows, vecs, errs, stop = [], [], [], None
    try:
        for b in read_batches(shard, DIM, batch, start, columns or Columns(), retry=RETRY):
            rows.append(b.rows)
            vecs.append(b.vectors)
            errs += b.errors
    except ShardError as e:
        stop = e
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64),
            np.concatenate(vecs) if vecs else np.zeros((0, DIM), np.float32), errs, stop)


# -- sources: the retry loop itself (no Ray) ----------------------------------------------------
@pytest.mark.parametrize("kind", ["reset", "timeout", "oserror"])
def test_transient_error_mid_npy_is_retried_every_row_once(src, kind):
    d, X = src
    (shard, *_), rejected = plan(discover(testing.uri(d)))
    testing.inject(d / "s0.npy", after=npy_byte(250), kind=kind)
    rows, V, errs, stop = read(shard)
    assert testing.fired(d / "s0.npy") == 1  # the fault really happened, part-way through
    assert stop is None and not errs and not rejected
    assert rows.tolist() == list(range(ROWS)) and np.array_equal(V, X[:ROWS])


def test_transient_error_mid_fvecs_and_parquet_are_retried(src):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    t = pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(X[:ROWS].ravel()), DIM),
                  "id": pa.array(np.arange(ROWS, dtype=np.int64) + 1000)})
    pq.write_table(t, d / "p.parquet", row_group_size=100)
    meta = pq.ParquetFile(d / "p.parquet").metadata
    footer = os.path.getsize(d / "p.parquet") - meta.serialized_size - 8
    shards, _ = plan([testing.uri(d / "v.fvecs"), testing.uri(d / "p.parquet")])
    testing.inject(d / "v.fvecs", after=250 * (4 + 4 * DIM))
    testing.inject(d / "p.parquet", after=footer // 2, until=footer)  # spare the footer
    for shard, name in zip(shards, ["v.fvecs", "p.parquet"], strict=True):
        rows, V, errs, stop = read(shard, batch=70)
        assert testing.fired(d / name) == 1, name
        assert stop is None and not errs
        assert rows.tolist() == list(range(ROWS)) and np.array_equal(V, X[:ROWS]), name
    ids = np.concatenate([b.ids for b in read_batches(shards[1], DIM, 70, retry=RETRY)])
    assert ids.tolist() == list(range(1000, 1000 + ROWS))


def test_persistent_error_gives_up_at_the_first_unread_row(src):
    d, X = src
    (shard, *_), _ = plan(discover(testing.uri(d)))
    testing.inject(d / "s0.npy", after=npy_byte(250), times=-1)
    rows, V, errs, stop = read(shard)
    assert isinstance(stop, ShardReadError) and stop.row == 200  # batches of 100: 0..199 read
    assert f"{shard.path}: row 200: read failed after 3 attempts (ConnectionResetError" in str(stop)
    assert testing.fired(d / "s0.npy") == RETRY.attempts
    assert rows.tolist() == list(range(200)) and np.array_equal(V, X[:200])
    # a read resumed from row 100 of the same range still stops at 200 (and retries again)
    rows, _, _, stop = read(shard, start=100)
    assert rows.tolist() == list(range(100, 200)) and stop.row == 200


@pytest.mark.parametrize("kind", ["missing", "permission"])
def test_permanent_error_is_not_retried(src, kind):
    d, _ = src
    (shard, *_), _ = plan(discover(testing.uri(d)))
    testing.inject(d / "s0.npy", after=npy_byte(250), times=-1, kind=kind)
    rows, _, _, stop = read(shard)
    assert testing.fired(d / "s0.npy") == 1
    assert rows.tolist() == list(range(200)) and stop.row == 200
    assert ("FileNotFoundError" if kind == "missing" else "PermissionError") in str(stop)
    assert not is_transient(FileNotFoundError()) and is_transient(ConnectionResetError())


def test_truncation_found_mid_way_keeps_the_rows_before_it_and_is_not_retried(src):
    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    shards, _ = plan([testing.uri(d / "s0.npy"), testing.uri(d / "v.fvecs")])
    testing.inject(d / "s0.npy", after=npy_byte(250) + 5, times=-1, kind="short")
    testing.inject(d / "v.fvecs", after=250 * (4 + 4 * DIM) + 5, times=-1, kind="short")
    for shard, name in zip(shards, ["s0.npy", "v.fvecs"], strict=True):
        rows, V, errs, stop = read(shard)
        assert stop is None and testing.fired(d / name) == 1, name  # no retry
        assert rows.tolist() == list(range(250)) and np.array_equal(V, X[:250])
        assert [(e["file"], e["row"]) for e in errs] == [(shard.path, 250)]
        assert "truncated: the file ends at row 250 though it promised 600 rows" in \
            errs[0]["error"]


def test_local_fvecs_that_lost_records_since_planning_reports_them(src):
    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    (shard,), _ = plan([str(d / "v.fvecs")])
    write_fvecs(d / "v.fvecs", X[:450])  # rewritten shorter before the read
    rows, _, errs, stop = read(shard)
    assert stop is None and rows.tolist() == list(range(450))
    assert [(e["row"], e["error"]) for e in errs] == [
        (450, "truncated: the file holds 450 records, 600 when the job was planned")]


def test_planning_retries_a_transient_header_error(src):
    d, _ = src
    testing.inject(d / "s0.npy", after=0)  # the header read fails once
    testing.inject(d / "s1.npy", after=0, times=-1, kind="oserror")  # ... always
    testing.inject(d / "s2.npy", after=0, times=-1, kind="missing")  # ... for good
    testing.inject(d / "s3.npy", after=0, times=-1, kind="denied")  # S3's ACCESS_DENIED
    shards, rejected = plan(discover(testing.uri(d)), retry=RETRY)
    assert [os.path.basename(s.path) for s in shards] == ["s0.npy"]
    assert [s.size for s in shards] == [npy_byte(ROWS)]  # asked once, kept for the reads
    assert testing.fired(d / "s0.npy") == 1
    assert testing.fired(d / "s1.npy") == RETRY.attempts
    assert testing.fired(d / "s2.npy") == 1 and testing.fired(d / "s3.npy") == 1  # permanent
    assert [(os.path.basename(r["file"]), r["row"]) for r in rejected] == [
        ("s1.npy", 0), ("s2.npy", 0), ("s3.npy", 0)]
    assert rejected[0]["error"].endswith("(after 3 attempts)")
    assert not rejected[1]["error"].endswith("attempts)")
    assert "ACCESS_DENIED" in rejected[2]["error"]
    assert not rejected[2]["error"].endswith("attempts)")
    # a resumable job's planning does not reject a shard the storage did not answer for
    testing.inject(d / "s1.npy", after=0, times=-1, kind="oserror")
    with pytest.raises(StorageUnavailable, match="storage unreachable while planning "
                                                 ".*s1.npy.*run the same command again"):
        plan(discover(testing.uri(d)), retry=RETRY, transient="raise")


@pytest.mark.parametrize("text,transient", [
    ("When reading information for key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION during "
     "GetObject operation: curlCode: 7, Couldn't connect to server", True),
    ("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate", True),
    ("AWS Error UNKNOWN (HTTP status 503) during GetObject operation", True),
    ("GCS error: HTTP status 502 Bad Gateway", True),
    ("read timed out", True),
    ("AWS Error ACCESS_DENIED during GetObject operation: Access Denied", False),
    ("AWS Error NO_SUCH_BUCKET during HeadObject operation: The specified bucket does not exist",
     False),
    ("AWS Error INVALID_ACCESS_KEY_ID during GetObject operation", False),
    ("Couldn't deserialize thrift: TProtocolException: Invalid data", False),
    ("Unexpected end of stream", False),
    # an S3 error is classified by its code, not by the words of its key
    ("When reading information for key 'RequestTimeout/Timeout.npy' in bucket 'b': AWS Error "
     "ACCESS_DENIED during GetObject operation: Access Denied", False),
    ("When reading information for key 'a/x.npy': AWS Error THROTTLING during GetObject", True),
    ("reading 'data/timed out/x.npy': Couldn't deserialize thrift", False),  # a quoted path
    ("Couldn't deserialize thrift at byte 5030 of 4290", False),  # numbers, not a status
    ("GCS: UNAVAILABLE: the service is unavailable", True),
    ("HTTP error 503 Backend Error", True),
    ("http status 429: Too Many Requests", True),
    ("CONNECTION RESET by peer", True),
])
def test_is_transient_plain_oserror_by_its_message(text, transient):
    assert is_transient(OSError(text)) is transient


def test_is_transient_by_type():
    for e in (ConnectionResetError(), ConnectionRefusedError(), TimeoutError(),
              InterruptedError(), BlockingIOError()):
        assert is_transient(e), e
    for e in (FileNotFoundError("timed out"), PermissionError(), IsADirectoryError(),
              ValueError("timed out"), RuntimeError()):
        assert not is_transient(e), e


def test_plain_oserror_of_a_denied_access_is_permanent_while_reading(src):
    d, _ = src
    (shard, *_), _ = plan(discover(testing.uri(d)))
    testing.inject(d / "s0.npy", after=npy_byte(250), times=-1, kind="denied")
    rows, _, _, stop = read(shard)
    assert testing.fired(d / "s0.npy") == 1  # not retried
    assert rows.tolist() == list(range(200))
    assert isinstance(stop, ShardReadError) and stop.row == 200 and not stop.retryable
    assert "ACCESS_DENIED" in str(stop)


def corrupt_parquet(path, X) -> None:
    """A Parquet file of ``X`` (row groups of 100, no compression) whose 4th row group's vector
    page is overwritten (pyarrow then raises ArrowInvalid, not an OSError, reading it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"vector": pa.FixedSizeListArray.from_arrays(
        pa.array(X.ravel()), X.shape[1])}), path, row_group_size=100, compression="none")
    c = pq.ParquetFile(path).metadata.row_group(3).column(0)
    off = (c.dictionary_page_offset or c.data_page_offset) + 120
    b = bytearray(open(path, "rb").read())
    for i in range(off, off + 16):
        b[i] ^= 0xFF
    open(path, "wb").write(bytes(b))


def test_corrupt_parquet_page_is_a_permanent_error_at_its_row(tmp_path):
    X = np.random.default_rng(0).integers(0, 4, (ROWS, DIM)).astype(np.float32)
    corrupt_parquet(tmp_path / "c.parquet", X)
    (shard,), _ = plan([str(tmp_path / "c.parquet")])
    rows, V, _, stop = read(shard)
    assert rows.tolist() == list(range(300)) and np.array_equal(V, X[:300])
    assert isinstance(stop, ShardReadError) and stop.row == 300 and not stop.retryable
    assert str(stop).startswith(f"{shard.path}: row 300: ArrowInvalid")


def test_parquet_unreadable_on_reopen_reports_the_first_unread_row(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    X = np.ones((ROWS, DIM), np.float32)
    pq.write_table(pa.table({"vector": pa.FixedSizeListArray.from_arrays(
        pa.array(X.ravel()), DIM)}), tmp_path / "p.parquet", row_group_size=100)
    (shard,), _ = plan([str(tmp_path / "p.parquet")])
    (tmp_path / "p.parquet").write_bytes(b"not parquet any more")
    _, _, _, stop = read(shard, start=300)
    assert isinstance(stop, ShardReadError) and stop.row == 300
    assert str(stop).startswith(f"{shard.path}: row 300: not a readable Parquet file")


@pytest.mark.parametrize("name", ["s0.npy", "v.fvecs"])
def test_partial_reads_are_not_a_truncation(src, name):
    """A network file may return fewer bytes per read than asked (fsspec files do one read):
    the reader asks again until the bytes arrive or the file ends."""
    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    (shard,), _ = plan([testing.uri(d / name)])
    testing.inject(d / name, after=0, times=-1, kind="partial", chunk=1000)
    rows, V, errs, stop = read(shard, batch=250)
    assert testing.fired(d / name) > 0  # reads really were cut
    assert stop is None and not errs
    assert rows.tolist() == list(range(ROWS)) and np.array_equal(V, X[:ROWS])


def test_shrunken_local_fvecs_reported_once_across_ranges(src):
    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    (shard,), _ = plan([str(d / "v.fvecs")])
    write_fvecs(d / "v.fvecs", X[:450])
    errs = []
    for lo, hi in [(0, 450), (450, ROWS)]:  # two read tasks; the cut is at the boundary
        for b in read_batches(shard, DIM, 100, lo, end=hi, retry=RETRY):
            errs += b.errors
    assert [e["row"] for e in errs] == [450]
    errs = [e for lo, hi in [(0, 300), (300, ROWS)]
            for b in read_batches(shard, DIM, 100, lo, end=hi, retry=RETRY) for e in b.errors]
    assert [e["row"] for e in errs] == [450]


def test_read_range_backstop_turns_any_reader_error_into_a_failed_block(monkeypatch, src):
    from vecdb.ingest import dataset

    d, _ = src
    (shard,), _ = plan([str(d / "s0.npy")])

    def broken(*a, **k):  # two batches, then a bug
        gen = read_batches(*a, **k)
        yield next(gen)
        yield next(gen)
        raise RuntimeError("boom")

    monkeypatch.setattr(dataset, "read_batches", broken)
    ps = [p for t in dataset._read_range(shard, 0, DIM, 100, 0, ROWS, Columns())
          for p in dataset.pieces(t)]
    assert [len(p.batch) for p in ps] == [100, 100, 0]
    # an unknown error (a bug?) is retryable: a rerun after the fix resumes the shard there
    assert ps[-1].failed and ps[-1].retryable and ps[-1].errors[0]["row"] == 200
    assert "RuntimeError: boom" in ps[-1].failed


@pytest.mark.parametrize("exc", [ShardError("s0.npy: row 0: dimension 9, expected 8"),
                                 ValueError("bad data")])
def test_read_range_reports_an_error_after_progress_at_the_first_unread_row(monkeypatch, src,
                                                                           exc):
    from vecdb.ingest import dataset

    d, _ = src
    (shard,), _ = plan([str(d / "s0.npy")])

    def broken(*a, **k):  # two batches, then a plain ShardError (a re-open's dim check)
        gen = read_batches(*a, **k)
        yield next(gen)
        yield next(gen)
        raise exc

    monkeypatch.setattr(dataset, "read_batches", broken)
    ps = [p for t in dataset._read_range(shard, 0, DIM, 100, 100, ROWS, Columns())
          for p in dataset.pieces(t)]
    assert [len(p.batch) for p in ps] == [100, 100, 0]
    assert ps[-1].failed and not ps[-1].retryable and ps[-1].errors[0]["row"] == 300


def test_retry_arguments():
    with pytest.raises(InvalidArgument, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(InvalidArgument, match="back-off"):
        Retry(backoff_s=-1)


# -- the bulk map path: dataset.map_shards on Ray ------------------------------------------------
def test_map_shards_retries_transient_errors_and_reports_lost_shards(ray_local, src):
    from vecdb.ingest.dataset import map_shards

    def _rows_of(piece):  # nested: pickled by value (the workers cannot import this module)
        return {"shard": piece.shard, "rows": piece.batch.rows.tolist(),
                "sum": float(piece.batch.vectors.sum()), "failed": piece.failed,
                "errors": piece.errors}

    d, X = src
    shards, _ = plan(discover(testing.uri(d)))
    testing.inject(d / "s0.npy", after=npy_byte(250))  # transient: once
    testing.inject(d / "s1.npy", after=npy_byte(250), times=-1)  # persistent
    testing.inject(d / "s2.npy", after=0, times=-1, kind="missing")  # gone before the first block
    res, info = map_shards(shards, DIM, _rows_of, {}, batch_rows=100, retry=RETRY)
    assert info["fused"]
    rows = {i: sorted(x for r in res if r["shard"] == i for x in r["rows"]) for i in range(4)}
    assert rows[0] == list(range(ROWS))  # every row exactly once (a duplicate would repeat)
    assert rows[1] == list(range(200)) and rows[2] == [] and rows[3] == list(range(ROWS))
    total = sum(r["sum"] for r in res)
    assert total == pytest.approx(float(X[:ROWS].sum() + X[ROWS:ROWS + 200].sum()
                                        + X[3 * ROWS:].sum()), rel=1e-6)
    failed = sorted((r["shard"], r["errors"][0]["row"], r["failed"]) for r in res if r["failed"])
    assert [(i, row) for i, row, _ in failed] == [(1, 200), (2, 0)]
    assert "s1.npy: row 200: read failed after 3 attempts" in failed[0][2]
    assert "FileNotFoundError" in failed[1][2]
    assert testing.fired(d / "s0.npy") == 1 and testing.fired(d / "s1.npy") == RETRY.attempts
    assert testing.fired(d / "s2.npy") == 1  # a missing object is not retried


# -- the online path into an embedded sink ----------------------------------------------------
def online(d, tmp_path, **kw):
    """One run of the online job over the shards of ``d`` (same database and state file)."""
    from vecdb.ingest.online import run_online

    return run_online(testing.uri(d), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                      batch_rows=100, create={"dim": DIM}, progress=False,
                      state_path=str(tmp_path / "job.json"), read_retry=RETRY, **kw)


def names(errors):
    return sorted((os.path.basename(e["file"]), e["row"], bool(e.get("retryable")))
                  for e in errors)


def test_online_transient_error_exactly_once_and_a_given_up_shard_resumed_by_a_rerun(
        ray_local, src, tmp_path, stored):
    d, X = src
    testing.inject(d / "s0.npy", after=npy_byte(250))  # transient: once
    testing.inject(d / "s1.npy", after=npy_byte(250), times=-1)  # the storage stays unreachable
    testing.inject(d / "s2.npy", after=0, times=-1, kind="denied")  # planning: access denied
    r = online(d, tmp_path)
    # s1 given up at its first unread row (retryable), s2 rejected at planning (not retryable)
    assert names(r["errors"]) == [("s1.npy", 200, True), ("s2.npy", 0, False)]
    assert not r["complete"] and names(r["incomplete"]) == [("s1.npy", 200, True)]
    assert "read failed after 3 attempts" in r["incomplete"][0]["error"]
    assert testing.fired(d / "s0.npy") == 1
    # the driver's transport rounds did not read the given-up shard again
    assert testing.fired(d / "s1.npy") == RETRY.attempts
    # s0 whole, s1 up to its first unread row, s3 whole (ids = global row: s2 was not planned)
    want = np.concatenate([X[:ROWS], X[ROWS:ROWS + 200], X[3 * ROWS:]])
    want_ids = list(range(ROWS)) + list(range(ROWS, ROWS + 200)) + \
        list(range(2 * ROWS, 3 * ROWS))
    assert r["rows_written"] == len(want) and r["rows_skipped"] == ROWS - 200
    assert sum(rows for _, rows, _ in r["sink_batches"]) == len(want)  # no batch sent twice
    st = json.load(open(r["state_path"]))
    sh = {os.path.basename(k): v for k, v in st["shards"].items()}
    assert [(n, sh[n]["done"], sh[n]["acked"]) for n in sorted(sh)] == [
        ("s0.npy", True, ROWS), ("s1.npy", False, 200), ("s3.npy", True, ROWS)]
    status = json.load(open(r["status_path"]))  # the final status says what is left, no ETA
    assert (status["rows_done"], status["rows_total"], status["rows_skipped"]) == \
        (len(want), 3 * ROWS, ROWS - 200)
    assert status["finished"] and status["eta_s"] is None and not status["complete"]
    assert names(status["incomplete"]) == [("s1.npy", 200, True)]
    ids, V = stored(tmp_path)
    assert ids == want_ids and np.array_equal(V, want)

    # the storage answers again: the same job, same state, sends exactly s1's missing rows
    testing.clear(d / "s1.npy")
    r2 = online(d, tmp_path)
    assert r2["resumed"] and r2["complete"] and r2["incomplete"] == []
    assert names(r2["errors"]) == [("s2.npy", 0, False)]  # the planning reject stays reported
    assert [rows for _, rows, _ in r2["sink_batches"]] == [100] * 4  # rows 200..599 of s1
    assert r2["rows_written"] == len(want) + ROWS - 200 and r2["rows_skipped"] == 0
    st = json.load(open(r2["state_path"]))
    s1 = next(v for k, v in st["shards"].items() if k.endswith("s1.npy"))
    assert s1["done"] and s1["acked"] == ROWS and s1["errors"] == []
    assert [e["row"] for e in s1["resumed_errors"]] == [200]  # history of the first run
    status = json.load(open(r2["status_path"]))
    assert status["complete"] and status["eta_s"] == 0 and status["rows_done"] == 3 * ROWS
    ids, V = stored(tmp_path)  # every id once, the vectors of their rows
    assert ids == list(range(3 * ROWS))
    assert np.array_equal(V, np.concatenate([X[:2 * ROWS], X[3 * ROWS:]]))
    # a third run has nothing to do
    r3 = online(d, tmp_path)
    assert r3["complete"] and r3["sink_batches"] == []


def test_online_permanent_read_errors_are_not_retried_by_a_rerun(ray_local, src, tmp_path, stored):
    """A missing object, a denied permission or a truncated file fails the same way again: the
    shard is done (reported), the job complete, and a rerun does not read it (even once the
    fault is gone)."""
    d, X = src
    testing.inject(d / "s0.npy", after=npy_byte(250), times=-1, kind="missing")
    testing.inject(d / "s1.npy", after=npy_byte(250), times=-1, kind="permission")
    testing.inject(d / "s2.npy", after=npy_byte(250) + 5, times=-1, kind="short")
    r = online(d, tmp_path)
    want = [("s0.npy", 200, False), ("s1.npy", 200, False), ("s2.npy", 250, False)]
    assert names(r["errors"]) == want and r["complete"] and r["incomplete"] == []
    assert "FileNotFoundError" in r["errors"][0]["error"]
    assert "PermissionError" in r["errors"][1]["error"]
    # the object is cut before planning (its size says so): reported at the cut, not retried
    assert r["errors"][2]["error"] == "truncated: rows 250..599 missing"
    assert [testing.fired(d / f"s{i}.npy") for i in range(2)] == [1, 1]
    st = json.load(open(r["state_path"]))
    assert all(s["done"] for s in st["shards"].values())
    for i in range(3):
        testing.clear(d / f"s{i}.npy")
    r2 = online(d, tmp_path)
    assert r2["resumed"] and r2["complete"] and r2["sink_batches"] == []
    assert names(r2["errors"]) == want
    ids, V = stored(tmp_path)
    assert ids == list(range(200)) + list(range(ROWS, ROWS + 200)) + \
        list(range(2 * ROWS, 2 * ROWS + 250)) + list(range(3 * ROWS, 4 * ROWS))
    assert np.array_equal(V, np.concatenate([X[:200], X[ROWS:ROWS + 200],
                                             X[2 * ROWS:2 * ROWS + 250], X[3 * ROWS:]]))


def test_cli_online_read_attempts_incomplete_then_resumed(ray_local, src, tmp_path, capsys, stored):
    from vecdb.ingest.cli import main

    d, _ = src
    testing.inject(d / "s1.npy", after=npy_byte(250), times=-1)  # persistent
    argv = ["online", testing.uri(d), "--collection", "c", "--data", str(tmp_path / "db"),
            "--tenant", "t", "--batch", "100", "--create-dim", str(DIM),
            "--state", str(tmp_path / "job.json"), "--read-attempts", "2"]
    rc = main(argv)
    assert rc == 4 and testing.fired(d / "s1.npy") == 2
    out, err = capsys.readouterr()
    assert "(incomplete)" in out
    assert f"incomplete: {testing.uri(d / 's1.npy')}: from row 200: read failed after 2 " \
        "attempts (ConnectionResetError" in err and "rejected:" not in err
    assert "stopped, 400 rows not ingested" in err  # the last progress line, not an ETA
    assert "run the same command again" in err
    testing.clear(d / "s1.npy")
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "(incomplete)" not in out and "incomplete:" not in err
    assert stored(tmp_path)[0] == list(range(4 * ROWS))


def test_failed_block_carries_retryable_through_the_codec(src):
    import pyarrow as pa

    from vecdb.ingest.dataset import batch_table, failed_table, pieces

    d, _ = src
    (shard, *_), _ = plan([str(d / "s0.npy")])
    ok = next(read_batches(shard, DIM, 100))
    for retryable in (False, True):
        t = pa.concat_tables([batch_table(ok, 0, DIM),
                       failed_table(shard, 0, 100, "gone", DIM, 100, retryable)])
        p0, p1 = pieces(t)
        assert p0.failed is None and not p0.retryable and len(p0.batch) == 100
        assert p1.failed == "gone" and p1.retryable is retryable and p1.errors[0]["row"] == 100


def test_online_planning_storage_unreachable_aborts_and_rerun_keeps_the_ids(
        ray_local, src, tmp_path, capsys, stored):
    """A header unreadable for transient errors must not shift the later shards' offsets: the
    job stops before it starts (no state, nothing written), CLI exit 4; once the storage
    answers, the same command ingests every row under its global row number."""
    from vecdb.ingest.cli import main

    d, X = src
    testing.inject(d / "s2.npy", after=0, times=-1, kind="oserror")
    with pytest.raises(StorageUnavailable, match="s2.npy"):
        online(d, tmp_path)
    assert not (tmp_path / "job.json").exists() and not (tmp_path / "db").exists()
    argv = ["online", testing.uri(d), "--collection", "c", "--data", str(tmp_path / "db"),
            "--tenant", "t", "--batch", "100", "--create-dim", str(DIM),
            "--state", str(tmp_path / "job.json"), "--read-attempts", "2"]
    assert main(argv) == 4
    err = capsys.readouterr().err
    assert "incomplete: storage unreachable while planning" in err and "Traceback" not in err
    assert not (tmp_path / "job.json").exists()
    testing.clear(d / "s2.npy")
    r = online(d, tmp_path)
    assert r["complete"] and r["errors"] == [] and r["rows_written"] == 4 * ROWS
    ids, V = stored(tmp_path)
    assert ids == list(range(4 * ROWS)) and np.array_equal(V, X)


def test_cli_state_of_another_job_or_unusable_is_exit_2_not_a_traceback(
        ray_local, src, tmp_path, capsys):
    from vecdb.ingest.cli import main
    from vecdb.ingest.online import _start_tracker

    d, _ = src
    base = ["online", str(d), "--collection", "c", "--data", str(tmp_path / "db"),
            "--tenant", "t", "--batch", "100", "--create-dim", str(DIM)]
    (tmp_path / "other.json").write_text(json.dumps({"fingerprint": {"mode": "other"},
                                                     "shards": {}, "rejected": []}))
    assert main(base + ["--state", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err
    assert "belongs to another job" in err and "Traceback" not in err
    (tmp_path / "torn.json").write_text("{")
    assert main(base + ["--state", str(tmp_path / "torn.json")]) == 2
    assert "cannot read the job state" in capsys.readouterr().err
    # the tracker actor itself failing to start (its folder is a file) is a FailedPrecondition
    (tmp_path / "afile").write_text("")
    with pytest.raises(FailedPrecondition, match="tracker could not start"):
        _start_tracker(str(tmp_path / "afile" / "job.json"), [], {"mode": "x"}, [])


def test_online_corrupt_parquet_does_not_fail_the_other_shards(ray_local, tmp_path, stored):
    from vecdb.ingest.online import run_online

    d = tmp_path / "src"
    d.mkdir()
    X = np.random.default_rng(0).integers(0, 4, (4 * ROWS, DIM)).astype(np.float32)
    corrupt_parquet(d / "a0.parquet", X[:ROWS])
    for i in range(1, 4):
        np.save(d / f"s{i}.npy", X[i * ROWS:(i + 1) * ROWS])
    r = run_online(str(d), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                   batch_rows=100, create={"dim": DIM}, progress=False,
                   state_path=str(tmp_path / "job.json"), read_retry=RETRY)
    assert r["complete"] and names(r["errors"]) == [("a0.parquet", 300, False)]
    assert "ArrowInvalid" in r["errors"][0]["error"]
    assert r["rows_written"] == 3 * ROWS + 300
    ids, V = stored(tmp_path)
    assert ids == list(range(300)) + list(range(ROWS, 4 * ROWS))
    assert np.array_equal(V, np.concatenate([X[:300], X[ROWS:]]))


def test_online_shard_given_up_by_runs_without_progress_fails_for_good(ray_local, src, tmp_path):
    """An error that looks transient but never clears (a misclassified permanent one) does not
    make every rerun stop incomplete: the third run in a row without a row acknowledged (after
    the first, which acknowledged rows 0..199) fails the shard."""
    d, _ = src
    testing.inject(d / "s1.npy", after=npy_byte(250), times=-1)
    for run in range(4):
        r = online(d, tmp_path)
        if run < 3:
            assert not r["complete"] and names(r["incomplete"]) == [("s1.npy", 200, True)]
    assert r["complete"] and r["incomplete"] == []
    assert names(r["errors"]) == [("s1.npy", 200, False)]
    assert "given up by 3 runs in a row without progress" in r["errors"][0]["error"]
    testing.clear(d / "s1.npy")
    r = online(d, tmp_path)  # failed for good: not read again
    assert r["complete"] and r["sink_batches"] == []


# -- review round 2: short reads, classification of unknown errors, planning and listing ---------
def test_a_read_returning_no_bytes_before_the_end_is_retried_not_a_truncation(src):
    d, X = src
    write_fvecs(d / "v.fvecs", X[:ROWS])
    for name in ("s0.npy", "v.fvecs"):
        (shard,), _ = plan([testing.uri(d / name)])
        testing.inject(d / name, after=npy_byte(250), times=1, kind="eof")
        rows, V, errs, stop = read(shard)
        assert testing.fired(d / name) == 1, name
        assert stop is None and not errs, name
        assert rows.tolist() == list(range(ROWS)) and np.array_equal(V, X[:ROWS])
        testing.inject(d / name, after=npy_byte(250), times=-1, kind="eof")  # never clears
        rows, _, errs, stop = read(shard)
        assert not errs and isinstance(stop, ShardReadError) and stop.retryable, name
        assert "short read at byte" in str(stop) and rows.tolist() == list(range(stop.row))


def test_read_fully_over_delivery_and_short_read_checks_the_current_size():
    from vecdb.ingest.sources import _read_fully

    class F:
        def __init__(self, data: bytes, extra: int = 0, size: int | None = None) -> None:
            self.data, self.extra = data, extra
            self.sz = len(data) if size is None else size

        def read_at(self, n: int, off: int) -> bytes:
            return self.data[off: off + n + self.extra]

        def size(self) -> int:
            return self.sz

    assert _read_fully(F(b"abcdefgh", extra=3), 4, 2) == b"cdef"  # a read over-delivers
    assert _read_fully(F(b"abcdef"), 10, 2) == b"cdef"  # the object ends: a truncation
    with pytest.raises(ConnectionError, match="short read at byte 6 of 9"):
        _read_fully(F(b"abcdef", size=9), 10, 2)  # it says 9 bytes: not a cut


@pytest.mark.parametrize("exc,retried,permanent", [
    (RuntimeError("a bug, or a library's network error"), True, False),
    (OSError("client error"), False, True),  # a plain OSError of unknown text: permanent
    (type("ClientOSError", (OSError,), {})("[Errno 104] peer closed"), True, False),
    (ValueError("bad data"), False, True),
    (MemoryError(), False, False),  # given up at once (retryable), not retried in the task
])
def test_unknown_errors_are_retried_and_given_up_retryable(monkeypatch, src, exc, retried,
                                                           permanent):
    from vecdb.ingest import sources

    d, X = src
    (shard,), _ = plan([str(d / "s0.npy")])
    real, calls = sources._read_from, []

    def flaky(shard, dim, batch_rows, start, columns, end):  # the error once, at row 200
        calls.append(start)
        for b in real(shard, dim, batch_rows, start, columns, end):
            if b.start == 200 and len(calls) == 1:
                raise exc
            yield b

    monkeypatch.setattr(sources, "_read_from", flaky)
    rows, _, _, stop = read(shard)
    assert sources.is_permanent(exc) is permanent
    if retried:
        assert stop is None and rows.tolist() == list(range(ROWS)) and calls == [0, 200]
    else:
        assert calls == [0] and isinstance(stop, ShardReadError) and stop.row == 200
        assert stop.retryable is (not permanent)


def test_an_error_after_the_last_row_does_not_fail_the_range(monkeypatch, src):
    from vecdb.ingest import sources

    d, _ = src
    (shard,), _ = plan([str(d / "s0.npy")])
    real = sources._read_from

    def then_fails(*a):
        yield from real(*a)
        raise ValueError("closing a corrupt stream")  # permanent, but every row was delivered

    monkeypatch.setattr(sources, "_read_from", then_fails)
    rows, _, _, stop = read(shard)
    assert stop is None and rows.tolist() == list(range(ROWS))


def test_planning_retries_an_unknown_error_and_rejects_a_data_error(monkeypatch, src):
    from vecdb.ingest import sources

    d, _ = src
    real, calls = sources._shard_info, []

    def info(path, columns):
        calls.append(path)
        if path.endswith("s0.npy") and calls.count(path) == 1:
            raise RuntimeError("botocore: connection pool closed")  # not an OSError
        if path.endswith("s1.npy"):
            raise ValueError("bad header field")
        return real(path, columns)

    monkeypatch.setattr(sources, "_shard_info", info)
    shards, rejected = plan(discover(str(d)), retry=RETRY)
    assert [os.path.basename(s.path) for s in shards] == ["s0.npy", "s2.npy", "s3.npy"]
    assert calls.count(shards[0].path) == 2
    assert [(os.path.basename(r["file"]), r["error"]) for r in rejected] == [
        ("s1.npy", "bad header field")]


def test_planning_rejects_a_permanent_pyarrow_error_that_is_neither_oserror_nor_valueerror(
        monkeypatch, src):
    """pyarrow's non-I/O errors (ArrowNotImplementedError, ArrowTypeError, ...) are permanent:
    the shard is rejected at planning like a bad header, not raised out of the job."""
    import pyarrow as pa

    from vecdb.ingest import sources

    d, _ = src
    real = sources._shard_info

    def info(path, columns):
        if path.endswith("s2.npy"):
            raise pa.ArrowNotImplementedError("unsupported column type")
        return real(path, columns)

    monkeypatch.setattr(sources, "_shard_info", info)
    shards, rejected = plan(discover(str(d)), retry=RETRY)
    assert [os.path.basename(s.path) for s in shards] == ["s0.npy", "s1.npy", "s3.npy"]
    assert [(os.path.basename(r["file"]), r["row"], r["error"]) for r in rejected] == [
        ("s2.npy", 0, "unsupported column type")]


def test_a_transient_listing_error_is_not_an_invalid_source(monkeypatch):
    from vecdb.ingest import sources

    class FS:
        def get_file_info(self, *a):
            raise OSError("AWS Error SLOW_DOWN during ListObjectsV2 operation: slow down")

    monkeypatch.setattr(sources, "_resolve", lambda uri: (FS(), "bucket/prefix"))
    with pytest.raises(OSError, match="SLOW_DOWN"):
        discover("s3://bucket/prefix/")
    FS.get_file_info = lambda self, *a: (_ for _ in ()).throw(  # noqa: E731
        OSError("AWS Error ACCESS_DENIED during ListObjectsV2 operation"))
    with pytest.raises(InvalidArgument, match="cannot list it"):
        discover("s3://bucket/prefix/")


def test_online_listing_the_storage_does_not_answer_is_exit_4(monkeypatch, tmp_path, capsys):
    from vecdb.ingest import sources
    from vecdb.ingest.cli import main

    calls = []

    def listing(s):
        calls.append(s)
        raise OSError("AWS Error SERVICE_UNAVAILABLE during ListObjectsV2 operation")

    monkeypatch.setattr(sources, "_discover_uri", listing)
    assert main(["online", "s3://bucket/prefix/", "--collection", "c", "--data",
                 str(tmp_path / "db"), "--tenant", "t", "--read-attempts", "2"]) == 4
    err = capsys.readouterr().err
    assert "incomplete: storage unreachable while planning s3://bucket/prefix/" in err
    assert "SERVICE_UNAVAILABLE" in err and len(calls) == 2
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("runs", [0, -1, True, 2.5, "3"])
def test_online_give_up_runs_must_be_a_positive_int(tmp_path, runs):
    from vecdb.ingest.online import run_online

    with pytest.raises(InvalidArgument, match="give_up_runs must be"):
        run_online(str(tmp_path / "none"), "c", data=str(tmp_path / "db"), give_up_runs=runs)


def test_tracker_that_cannot_open_the_state_says_why_without_raising(tmp_path):
    from vecdb.ingest.online import _Tracker

    (tmp_path / "other.json").write_text(json.dumps({"fingerprint": {"mode": "other"},
                                                     "shards": {}, "rejected": []}))
    t = _Tracker(str(tmp_path / "other.json"), [], {"mode": "x"}, [])
    assert t.check().startswith("FailedPrecondition: ") and "belongs to another job" in t.check()
    (tmp_path / "afile").write_text("")
    assert _Tracker(str(tmp_path / "afile" / "job.json"), [], {"mode": "x"}, []).check()
    ok = _Tracker(str(tmp_path / "job.json"), [], {"mode": "x"}, [])
    assert ok.check() is None
    ok.flush()


def test_a_short_rule_stays_a_truncation_whatever_its_times(src):
    d, X = src
    (shard,), _ = plan([testing.uri(d / "s0.npy")])
    testing.inject(d / "s0.npy", after=npy_byte(250) + 5, times=1, kind="short")
    for _ in range(2):  # a truncation does not heal after its first firing
        rows, V, errs, stop = read(shard)
        assert stop is None and rows.tolist() == list(range(250))
        assert [e["row"] for e in errs] == [250]
    assert testing.fired(d / "s0.npy") == 2  # each read that the cut stopped
