"""Online job vs a sink that stops answering: a shard whose batches could not be written because
the server was unreachable ends the run incomplete and a rerun resumes it from its acknowledged
row (nothing sent twice); errors the server answers about the request stay final."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vecdb.errors import InvalidArgument
from vecdb.ingest.cli import _report_errors
from vecdb.ingest.online import run_online, sink_unreachable

pytest.importorskip("ray")

ROWS, DIM, BATCH = 600, 8, 100


@pytest.fixture
def src(tmp_path):
    """Three .npy shards of ROWS rows (global row g holds g * ones + column index / 16)."""
    d = tmp_path / "src"
    d.mkdir()
    X = (np.arange(3 * ROWS, dtype=np.float32)[:, None]
         + np.arange(DIM, dtype=np.float32)[None, :] / 16)
    for i in range(3):
        np.save(d / f"s{i}.npy", X[i * ROWS:(i + 1) * ROWS])
    return d, X


def online(d, tmp_path, outage=None):
    return run_online(str(d), "c", data=str(tmp_path / "db"), tenant="t", workers=2,
                      batch_rows=BATCH, create={"dim": DIM}, progress=False,
                      state_path=str(tmp_path / "job.json"), max_task_retries=1,
                      _sink_outage=outage)


def shards_state(path):
    st = json.load(open(path))
    return {os.path.basename(k): v for k, v in st["shards"].items()}


def test_sink_unreachable_classifies_outages_only():
    from vecdb.client.errors import RemoteError

    assert sink_unreachable(RemoteError("UNAVAILABLE: down", "UNAVAILABLE"))
    assert sink_unreachable(RemoteError("DEADLINE_EXCEEDED: slow", "DEADLINE_EXCEEDED"))
    assert sink_unreachable(ConnectionRefusedError("refused"))
    assert sink_unreachable(TimeoutError("timed out"))
    assert not sink_unreachable(RemoteError("INTERNAL: bug", "INTERNAL"))
    assert not sink_unreachable(InvalidArgument("dim 5 != 8"))
    assert not sink_unreachable(RuntimeError("actor died"))


def test_sink_outage_ends_incomplete_and_a_rerun_resumes_exactly_once(ray_local, src, tmp_path,
                                                                     stored):
    d, X = src
    marker = tmp_path / "down"
    marker.touch()
    outage = {"shard": "s1.npy", "from_row": 200, "marker": str(marker)}
    r = online(d, tmp_path, outage)
    # s1: rows 0..199 written, then the sink refused it for 1 + max_task_retries rounds
    assert not r["complete"]
    assert [(os.path.basename(e["file"]), e["row"], e.get("retryable")) for e in r["errors"]] \
        == [("s1.npy", 200, True)]
    assert r["incomplete"] == r["errors"]
    assert "sink unreachable after 2 attempts" in r["errors"][0]["error"]
    assert "UNAVAILABLE" in r["errors"][0]["error"]
    assert r["rows_written"] == 2 * ROWS + 200 and r["rows_skipped"] == ROWS - 200
    assert sum(rows for _, rows, _ in r["sink_batches"]) == 2 * ROWS + 200
    sh = shards_state(r["state_path"])
    assert [(n, sh[n]["done"], sh[n]["acked"]) for n in sorted(sh)] == [
        ("s0.npy", True, ROWS), ("s1.npy", False, 200), ("s2.npy", True, ROWS)]
    status = json.load(open(r["status_path"]))
    assert status["finished"] and not status["complete"] and status["eta_s"] is None
    assert _report_errors(r["errors"]) == 4  # the CLI's "incomplete, run it again"
    ids, V = stored(tmp_path)
    assert ids == list(range(ROWS + 200)) + list(range(2 * ROWS, 3 * ROWS))

    # the sink answers again: the same job sends exactly s1's rows 200..599, once
    marker.unlink()
    r2 = online(d, tmp_path, outage)
    assert r2["resumed"] and r2["complete"] and r2["errors"] == [] and r2["incomplete"] == []
    assert [rows for _, rows, _ in r2["sink_batches"]] == [BATCH] * 4
    assert r2["rows_written"] == 3 * ROWS and r2["rows_skipped"] == 0
    s1 = shards_state(r2["state_path"])["s1.npy"]
    assert s1["done"] and s1["acked"] == ROWS and s1["errors"] == []
    assert [e["row"] for e in s1["resumed_errors"]] == [200]
    assert _report_errors(r2["errors"]) == 0
    ids, V = stored(tmp_path)
    assert ids == list(range(3 * ROWS)) and np.array_equal(V, X)


@pytest.mark.parametrize("code", ["INTERNAL", "INVALID_ARGUMENT"])
def test_sink_errors_that_are_not_an_outage_stay_final(ray_local, src, tmp_path, code, stored):
    """A server error other than unreachable (INTERNAL: maybe the data breaks it) fails the
    shard for good after the rounds; a request error (INVALID_ARGUMENT) rejects the batches at
    once. Either way the job is complete (exit 3) and a rerun does not send the shard again."""
    d, X = src
    marker = tmp_path / "bad"
    marker.touch()
    outage = {"shard": "s1.npy", "from_row": 200, "marker": str(marker), "code": code}
    r = online(d, tmp_path, outage)
    assert r["complete"] and r["incomplete"] == []
    assert r["errors"] and not any(e.get("retryable") for e in r["errors"])
    assert all(os.path.basename(e["file"]) == "s1.npy" for e in r["errors"])
    if code == "INTERNAL":  # failed for good at its acknowledged row, the rest not read
        assert [e["row"] for e in r["errors"]] == [200]
        assert "gave up after 2 attempts" in r["errors"][0]["error"]
        assert r["rows_written"] == 2 * ROWS + 200 and r["rows_skipped"] == ROWS - 200
    else:  # each refused batch reported as bad rows, the shard read to its end
        assert [e["row"] for e in r["errors"]] == [200, 300, 400, 500]
        assert r["rows_written"] == 2 * ROWS + 200 and r["rows_acked"] == 3 * ROWS
    assert all(s["done"] for s in shards_state(r["state_path"]).values())
    assert _report_errors(r["errors"]) == 3
    marker.unlink()
    r2 = online(d, tmp_path, outage)
    assert r2["resumed"] and r2["complete"] and r2["sink_batches"] == []
    ids, _ = stored(tmp_path)
    assert ids == list(range(ROWS + 200)) + list(range(2 * ROWS, 3 * ROWS))
