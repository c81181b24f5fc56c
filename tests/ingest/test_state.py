"""JobState: a shard given up on transient read errors stays not done (the next run resumes it,
and its old error leaves the job's errors); a shard failed for good is done; state files written
before ``retryable`` existed still load."""

from __future__ import annotations

import json

import pytest

from vecdb.errors import FailedPrecondition
from vecdb.ingest.sources import Shard
from vecdb.ingest.state import JobState, Progress

SHARDS = [Shard("/x/a.npy", "npy", 100, 0, 4), Shard("/x/b.npy", "npy", 50, 100, 4),
          Shard("/x/c.npy", "npy", 30, 150, 4)]


def test_given_up_shard_stays_pending_and_a_reload_resumes_it(tmp_path):
    path = str(tmp_path / "st.json")
    st = JobState(path, SHARDS, {"job": 1})
    st.ack("/x/a.npy", 40, 40)
    st.give_up("/x/a.npy", "row 40: read failed after 3 attempts", 40)
    st.give_up("/x/a.npy", "row 40: read failed after 3 attempts", 40)  # a re-run task: once
    st.ack("/x/b.npy", 20, 20)
    st.fail_shard("/x/b.npy", "row 20: FileNotFoundError")
    st.ack("/x/c.npy", 30, 30, done=True)
    assert (st.done("/x/a.npy"), st.gave_up("/x/a.npy")) == (False, True)
    assert (st.done("/x/b.npy"), st.gave_up("/x/b.npy")) == (True, False)
    assert st.incomplete() == [{"file": "/x/a.npy", "row": 40, "retryable": True,
                                "error": "row 40: read failed after 3 attempts"}]
    assert [e["row"] for e in st.errors()] == [40, 20]
    assert st.rows_skipped() == 60 + 30  # a's rows 40.., b's rows 20..
    st.save()

    again = JobState(path, SHARDS, {"job": 1})  # the next run of the job
    assert again.resumed and again.acked("/x/a.npy") == 40 and not again.done("/x/a.npy")
    assert not again.gave_up("/x/a.npy") and again.incomplete() == []
    assert [e["row"] for e in again.errors()] == [20]  # b's stays: not retried
    assert again.data["shards"]["/x/a.npy"]["resumed_errors"][0]["row"] == 40
    assert again.rows_skipped() == 30
    again.ack("/x/a.npy", 100, 60, done=True)
    assert again.rows_acked() == 100 + 20 + 30


def test_a_given_up_shard_read_to_its_end_after_all_is_not_an_error(tmp_path):
    st = JobState(str(tmp_path / "st.json"), SHARDS[:1], {"job": 1})
    st.give_up("/x/a.npy", "read failed", 10)
    st.ack("/x/a.npy", 100, 100, done=True)
    assert st.errors() == [] and st.incomplete() == [] and st.rows_skipped() == 0


def test_state_file_of_the_previous_format_loads(tmp_path):
    path = tmp_path / "st.json"
    old = {"version": 1, "fingerprint": {"job": 1}, "created": 1.0, "rejected": [],
           "shards": {"/x/a.npy": {"rows": 100, "acked": 40, "good": 40, "done": True,
                                   "errors": [{"file": "/x/a.npy", "row": 40,
                                               "error": "read failed after 5 attempts"}]},
                      "/x/b.npy": {"rows": 50, "acked": 10, "good": 10, "done": False,
                                   "errors": []}}}
    path.write_text(json.dumps(old))
    st = JobState(str(path), SHARDS[:2], {"job": 1})
    # a shard the old code gave up is done there (it cannot tell why): left as it was
    assert st.resumed and st.done("/x/a.npy") and st.acked("/x/b.npy") == 10
    assert [e["row"] for e in st.errors()] == [40] and st.incomplete() == []
    with pytest.raises(FailedPrecondition):
        JobState(str(path), SHARDS[:2], {"job": 2})


def test_progress_eta_leaves_out_skipped_rows_and_ends_with_none_when_incomplete(tmp_path):
    p = Progress(100, str(tmp_path / "status.json"), stream=None)
    p.update(40, skipped=60)
    assert p.snapshot()["eta_s"] == 0.0  # nothing left that will be read
    snap = p.close(complete=False)
    assert snap["finished"] and snap["eta_s"] is None and snap["rows_skipped"] == 60
    assert json.load(open(tmp_path / "status.json"))["eta_s"] is None
    q = Progress(10, None, stream=None)
    q.update(10)
    assert q.close()["eta_s"] == 0.0


def test_give_up_row_is_at_least_acked_and_replaces_the_shards_earlier_give_up(tmp_path):
    st = JobState(str(tmp_path / "st.json"), SHARDS, {"job": 1})
    st.ack("/x/a.npy", 40, 40)
    assert st.give_up("/x/a.npy", "read failed", 10)  # a stale row: the acked offset
    st.ack("/x/a.npy", 60, 20)
    st.give_up("/x/a.npy", "sink unreachable", 60)  # a later give-up of the same run
    assert st.incomplete() == [{"file": "/x/a.npy", "row": 60, "error": "sink unreachable",
                                "retryable": True}]
    assert "give_ups" not in st.data["shards"]["/x/a.npy"]  # no limit given: not counted


def test_runs_giving_a_shard_up_without_progress_fail_it_for_good(tmp_path):
    path = str(tmp_path / "st.json")

    def run(acked: int | None = None) -> JobState:  # one run of the job that gives a.npy up
        st = JobState(path, SHARDS, {"job": 1})
        if acked is not None:
            st.ack("/x/a.npy", acked, 10)
        st.give_up("/x/a.npy", "read failed after 3 attempts", None, limit=3)
        st.save()
        return st

    st = run(10)  # a run that acknowledged rows is not a run without progress
    assert st.gave_up("/x/a.npy") and st.data["shards"]["/x/a.npy"]["give_ups"] == 0
    assert run().gave_up("/x/a.npy")
    assert run().gave_up("/x/a.npy")  # 2 runs without progress
    st = run(20)  # progress: the count starts again
    assert st.gave_up("/x/a.npy") and st.data["shards"]["/x/a.npy"]["give_ups"] == 0
    assert run().gave_up("/x/a.npy")
    assert run().gave_up("/x/a.npy")
    st = run()  # the 3rd run in a row without a row more: failed for good
    assert st.done("/x/a.npy") and not st.gave_up("/x/a.npy") and st.incomplete() == []
    assert [e["row"] for e in st.errors() if not e.get("retryable")] == [20]
    assert "given up by 3 runs in a row without progress" in st.errors()[-1]["error"]
    st = JobState(path, SHARDS, {"job": 1})  # and stays so
    assert st.done("/x/a.npy") and st.incomplete() == []
    # without a limit (a sink outage) a shard is given up run after run
    for _ in range(4):
        st = JobState(path, SHARDS, {"job": 1})
        assert st.give_up("/x/b.npy", "sink unreachable")
        st.save()


def test_sink_outages_do_not_count_toward_give_up_runs(tmp_path):
    path = str(tmp_path / "st.json")
    for _ in range(2):  # two runs give b.npy up on an unreachable sink (no limit)
        st = JobState(path, SHARDS, {"job": 1})
        assert st.give_up("/x/b.npy", "sink unreachable")
        st.save()
    st = JobState(path, SHARDS, {"job": 1})  # then one read give-up: the 1st run counted
    assert st.give_up("/x/b.npy", "read failed after 3 attempts", limit=3)
    assert st.gave_up("/x/b.npy") and st.data["shards"]["/x/b.npy"]["give_ups"] == 1
    # a sink give-up then a read give-up in one run: one run without progress, counted once
    st.give_up("/x/b.npy", "sink unreachable")
    st.give_up("/x/b.npy", "read failed", limit=3)
    assert st.data["shards"]["/x/b.npy"]["give_ups"] == 1


def test_give_up_of_a_shard_already_done_records_nothing(tmp_path):
    st = JobState(str(tmp_path / "st.json"), SHARDS, {"job": 1})
    st.ack("/x/a.npy", 100, 100, done=True)
    st.fail_shard("/x/b.npy", "row 0: bad header")
    for p in ("/x/a.npy", "/x/b.npy"):
        assert st.give_up(p, "read failed", 10, limit=3) is False
    assert [e["row"] for e in st.errors()] == [0] and st.incomplete() == []
    assert "give_ups" not in st.data["shards"]["/x/a.npy"]


def test_state_of_another_job_or_unreadable_is_refused(tmp_path):
    path = tmp_path / "st.json"
    JobState(str(path), SHARDS, {"job": 1})
    with pytest.raises(FailedPrecondition, match="belongs to another job"):
        JobState(str(path), SHARDS, {"job": 2})
    path.write_text("{")
    with pytest.raises(FailedPrecondition, match="cannot read the job state"):
        JobState.load(str(path), {"job": 1})
    assert JobState.load(str(tmp_path / "none.json"), {"job": 1}) is None
