"""Readers never see a half-applied batch; concurrent writers are serialised."""

from __future__ import annotations

import threading

import numpy as np

import vecdb


def test_readers_see_whole_batches(tmp_path):
    db = vecdb.open(tmp_path / "d", background_checkpoints=False)
    col = db.create_collection("c", dim=8)
    col.create_tenant("t")
    ids = np.arange(64)
    col.upsert(ids, np.zeros((64, 8), dtype=np.float32), tenant="t")
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        for g in range(1, 150):
            col.upsert(ids, np.full((64, 8), g, dtype=np.float32), tenant="t",
                       payloads=[{"g": g}] * 64)
            if g % 50 == 0:
                col.checkpoint()
        stop.set()

    def reader() -> None:
        q = np.zeros((1, 8), dtype=np.float32)
        while not stop.is_set():
            g = col.get(ids, tenant="t")
            gens = set(g.vectors[:, 0].tolist())
            if len(gens) != 1 or len({p["g"] if p else 0 for p in g.payloads}) != 1:
                errors.append(f"get saw a half batch: {sorted(gens)}")
            r = col.search(q, k=64, tenant="t")
            if len(set(r.distances[0].tolist())) != 1 or (r.ids < 0).any():
                errors.append("search saw a half batch")

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(
        target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert col.get([0], tenant="t").payloads == [{"g": 149}]
    db.close()


def test_concurrent_writers(tmp_path):
    db = vecdb.open(tmp_path / "d", checkpoint_every_ops=500, checkpoint_every_s=0.01)
    col = db.create_collection("c", dim=4)
    for t in range(4):
        col.create_tenant(f"t{t}")

    def write(t: int) -> None:
        rng = np.random.default_rng(t)
        for b in range(40):
            base = t * 100_000 + b * 25
            col.upsert(range(base, base + 25), rng.standard_normal((25, 4)), tenant=f"t{t}")
            if b % 3 == 0:
                col.delete(range(base, base + 5), tenant=f"t{t}")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(col) == 4 * (40 * 25 - 14 * 5)
    seqs = [int.from_bytes(k, "big") for k, _ in col._store.iterate("oplog")]
    assert seqs == sorted(set(seqs))
    db.close()
    db = vecdb.open(tmp_path / "d", background_checkpoints=False)
    col = db.collection("c")
    assert len(col) == 4 * (40 * 25 - 14 * 5)
    for t in range(4):
        assert col.tenant_stats(f"t{t}")["owned"] == 40 * 25 - 14 * 5
    db.close()
