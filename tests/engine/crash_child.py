"""Child process of test_crash.py: ingest batches into a database and report each acknowledged one.

Usage: python crash_child.py DBPATH FIRST_BATCH [INDEX_KIND]

Batch b upserts ids [b*1000, b*1000 + size(b)) with vectors derived from b (the parent regenerates
them). After ``upsert`` returns, the child prints ``ACK b`` (flushed): from that moment the batch
must survive a kill -9. Every 4th batch it forces a checkpoint, printing ``CKPT b`` first, so the
parent can kill it in the middle of one; the background checkpointer also runs often.
"""

from __future__ import annotations

import sys

import numpy as np

import vecdb

DIM = 16


def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(b)
    n = int(rng.integers(20, 200))
    return np.arange(b * 1000, b * 1000 + n, dtype=np.uint64), rng.standard_normal(
        (n, DIM)).astype(np.float32)


def main() -> None:
    path, first = sys.argv[1], int(sys.argv[2])
    kind = sys.argv[3] if len(sys.argv) > 3 else "flat"
    db = vecdb.open(path, checkpoint_every_ops=700, checkpoint_every_s=0.05)
    if "c" in db.list_collections():
        col = db.collection("c")
    else:
        col = db.create_collection("c", dim=DIM, metric="l2", index=kind)
    for t in ("owner", "reader"):
        if t not in col.list_tenants():
            col.create_tenant(t)
    print("READY", flush=True)
    b = first
    while True:
        ids, X = batch(b)
        if b % 4 == 3:
            print(f"CKPT {b}", flush=True)
            col.checkpoint()
        col.upsert(ids, X, tenant="owner", payloads=[{"b": b}] * len(ids))
        col.grant(ids[::7], tenant="reader")
        print(f"ACK {b}", flush=True)
        b += 1


if __name__ == "__main__":
    main()
