"""Oplog replay after a checkpoint: a vector updated after the checkpoint and deleted later is
gone from the index too (its checkpointed copy must not survive the replay)."""

from __future__ import annotations

import numpy as np

import vecdb


def test_update_then_delete_after_checkpoint_leaves_no_stale_vector(tmp_path):
    X = np.eye(4, dtype=np.float32)
    db = vecdb.open(tmp_path, background_checkpoints=False, checkpoint_on_close=False)
    col = db.create_collection("c", dim=4, index="flat")
    col.create_tenant("t")
    col.upsert([1, 2, 3], X[:3], tenant="t")
    col.checkpoint()
    col.upsert([2], X[3:], tenant="t")  # replayed: its vector is gone from the store by then
    col.delete([2], tenant="t")  # replayed: skips the absent slot
    db.close()
    with vecdb.open(tmp_path, background_checkpoints=False) as db:
        col = db.collection("c")
        assert col.recovery["source"] == "checkpoint" and col.recovery["replayed"] == 2
        res = col.search(X[1:2], 3, tenant="t")
        assert sorted(res.ids[0].tolist()) == [-1, 1, 3]  # id 2 is not returned, nor dropped
        assert len(col._index) == 2
