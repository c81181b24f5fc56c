"""Online path on Ray: parallel workers, bad shards reported, a killed worker or driver resumes
with every vector exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vecdb
from vecdb.ingest.online import run_online

pytest.importorskip("ray")

N_SHARDS, ROWS, DIM = 4, 1500, 16


@pytest.fixture
def shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((N_SHARDS * ROWS, DIM)).astype(np.float32)
    for i in range(N_SHARDS):
        np.save(src / f"s{i}.npy", X[i * ROWS:(i + 1) * ROWS])
    return src, X


def check_exactly_once(data, X, id_start=0):
    db = vecdb.open(str(data))
    try:
        col = db.collection("c")
        assert len(col) == len(X)
        ids = col.ids("t")
        assert ids.tolist() == list(range(id_start, id_start + len(X)))
        got = col.get(ids[::97], tenant="t")
        assert np.array_equal(got.vectors, X[::97])
        assert col.recovery["source"] in ("checkpoint", "empty", "store")
    finally:
        db.close()


def test_online_two_workers_reports_bad_shards(ray_local, shards, tmp_path):
    src, X = shards
    bad = X[:10].copy()
    bad[7, 2] = np.nan
    np.save(src / "t_nan.npy", bad)
    np.save(src / "u_dim.npy", X[:10, :5])
    r = run_online(str(src), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                   batch_rows=500, create={"dim": DIM}, progress=False, id_start=0)
    errs = [(os.path.basename(e["file"]), e["row"]) for e in r["errors"]]
    assert ("t_nan.npy", 7) in errs and ("u_dim.npy", 0) in errs and len(errs) == 2
    assert r["rows_written"] == len(X) + 9
    st = json.load(open(r["state_path"]))
    assert all(s["done"] for s in st["shards"].values())
    assert json.load(open(r["status_path"]))["rows_done"] == r["rows_acked"]
    # a second run of the finished job does nothing and changes nothing
    r2 = run_online(str(src), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                    batch_rows=500, progress=False)
    assert r2["resumed"] and r2["rows_written"] == r["rows_written"]
    db = vecdb.open(str(tmp_path / "db"))
    assert len(db.collection("c")) == len(X) + 9
    db.close()


def test_worker_killed_mid_shard_resumes_exactly_once(ray_local, shards, tmp_path):
    src, X = shards
    marker = str(tmp_path / "crashed")
    r = run_online(str(src), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                   batch_rows=300, create={"dim": DIM}, progress=False,
                   _crash={"after": 2, "marker": marker})
    assert os.path.exists(marker)  # a worker really died mid-shard
    assert r["rows_acked"] == len(X) and not r["errors"]
    check_exactly_once(tmp_path / "db", X)


def test_a_shard_whose_worker_keeps_dying_is_given_up(ray_local, shards, tmp_path):
    """Ray Data re-runs a task whose worker died; the job counts the attempts per shard and
    reports the shard after ``max_task_retries`` re-runs instead of looping."""
    src, X = shards
    for f in sorted(os.listdir(src))[1:]:
        os.unlink(src / f)
    r = run_online(str(src), "c", data=str(tmp_path / "db"), tenant="t", workers=1,
                   batch_rows=300, create={"dim": DIM}, progress=False, max_task_retries=1,
                   _crash={"after": 2, "marker": str(tmp_path / "m"), "always": True})
    assert [e["error"] for e in r["errors"]] == ["gave up after 2 attempts (worker died each "
                                                 "time)"]
    assert r["rows_acked"] == 600 and r["rows_written"] == 600  # two batches, then each death
    st = json.load(open(r["state_path"]))
    assert all(s["done"] for s in st["shards"].values())


DRIVER = """
import sys
from vecdb.ingest.online import run_online
run_online(sys.argv[1], "c", data=sys.argv[2], tenant="t", workers=2, batch_rows=50,
           create={"dim": DIM}, progress=False, id_start=7, state_path=sys.argv[3])
""".replace("DIM", str(DIM))


def test_driver_killed_then_rerun_exactly_once(ray_local, shards, tmp_path):
    src, X = shards
    state = str(tmp_path / "job.json")
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(src), str(tmp_path / "db"), state],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 90
    done = 0
    while time.monotonic() < deadline and p.poll() is None:
        try:
            done = sum(s["acked"] for s in json.load(open(state))["shards"].values())
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 300:
            break
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and everything it started
    p.wait()
    assert 0 < done < len(X), "the job should have been killed mid-way"
    r = run_online(str(src), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                   batch_rows=100, progress=False, id_start=7, state_path=state)
    assert r["resumed"] and r["rows_acked"] == len(X)
    check_exactly_once(tmp_path / "db", X, id_start=7)


def test_online_through_grpc_server(ray_local, shards, tmp_path):
    """The same job against a running server (UpsertStream through the client SDK, one
    connection per worker): every row arrives once, vectors intact."""
    from vecdb.server.testing import ServerProcess

    src, X = shards
    with ServerProcess(str(tmp_path / "srv")) as srv:
        r = run_online(str(src), "c", address=srv.address, api_key=srv.api_key, tenant="t",
                       workers=2, batch_rows=700, create={"dim": DIM}, progress=False,
                       state_path=str(tmp_path / "g.json"))
        assert r["rows_acked"] == len(X) and not r["errors"]
        c = vecdb.Client(srv.address, api_key=srv.api_key)
        col = c.collection("c")
        assert col.count() == len(X)
        got = col.get(np.arange(0, len(X), 499), tenant="t")
        assert np.array_equal(got.vectors, X[::499])
        c.close()


def test_online_from_a_file_uri_glob(ray_local, shards, tmp_path, monkeypatch):
    """A ``file://`` glob source (pyarrow's filesystem, ranged reads in the Ray workers): every
    row once; with no state_path the state goes to the working folder, not into the URI."""
    src, X = shards
    monkeypatch.chdir(tmp_path)
    r = run_online(f"file://{src}/s*.npy", "c", data=str(tmp_path / "db"), tenant="t",
                   workers=2, batch_rows=400, create={"dim": DIM}, progress=False)
    assert r["rows_acked"] == len(X) and not r["errors"]
    assert r["state_path"] == os.path.join(str(tmp_path), "c.ingest-state.json")
    assert all(p.startswith("file://") for p in json.load(open(r["state_path"]))["shards"])
    check_exactly_once(tmp_path / "db", X)


def test_tracker_acks_do_not_wait_for_the_state_file(tmp_path):
    """A batch's ack updates the state in memory only (the saver thread writes it later, so a
    worker never waits on an fsync); a finished shard and flush() are written before they
    return."""
    from vecdb.ingest.online import _Tracker
    from vecdb.ingest.sources import Shard

    path = str(tmp_path / "st.json")
    shards = [Shard("/x/a.npy", "npy", 100, 0, 4), Shard("/x/b.npy", "npy", 50, 100, 4)]

    def on_disk():
        return {k: (v["acked"], v["done"]) for k, v in json.load(open(path))["shards"].items()}
    t = _Tracker(path, shards, {"job": 1}, [], save_every_s=3600)
    t.ack("/x/a.npy", 40, 40, [])
    assert t.states(["/x/a.npy"]) == [(40, False)]
    assert on_disk()["/x/a.npy"] == (0, False)  # not written yet
    t.ack("/x/b.npy", 50, 50, [], done=True)
    assert on_disk() == {"/x/a.npy": (40, False), "/x/b.npy": (50, True)}
    t.ack("/x/a.npy", 70, 30, [])
    t.flush()
    assert on_disk()["/x/a.npy"] == (70, False)
    assert t.summary()["rows_acked"] == 120
