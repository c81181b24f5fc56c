"""Offline SPANN bulk build on Ray + atomic import: recall against the serial SPANN build with the
same parameters (exact ground truth), tenants/ACLs/payloads from Parquet, reopen, online updates."""

from __future__ import annotations

import os

import numpy as np
import pytest

import vecdb
from bench.common import recall_at_k
from bench.datasets import clustered_stream, exact_gt
from vecdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from vecdb.ingest.bulk import bulk_build_spann, import_bulk

pytest.importorskip("ray")
pytest.importorskip("vecdb.index.spann")

N, DIM, K = 30_000, 32, 10
PARAMS = {"head_ratio": 0.05, "replica_count": 4, "background": False}
SEARCH = {"max_lists": 16}


@pytest.fixture(scope="module")
def built(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bulk")
    src = tmp / "src"
    src.mkdir()
    parts = []
    for i, X in enumerate(clustered_stream(N, DIM, chunk=7_500, seed=3)):
        np.save(src / f"part-{i:03d}.npy", X)
        parts.append(X)
    X = np.concatenate(parts)
    rng = np.random.default_rng(9)
    Q = X[rng.choice(N, 300, replace=False)] + 0.05 * rng.standard_normal((300, DIM)).astype(
        np.float32)
    gt = exact_gt(X, Q, K, "l2")
    gt = gt[0] if isinstance(gt, tuple) else gt
    man = bulk_build_spann(str(src), str(tmp / "out"), dim=DIM, tenant="t", params=PARAMS,
                           sample_rows=N // 3, batch_rows=4_000, memory_bytes=2 << 20,
                           train_rows=2_000, progress=False)
    imp = import_bulk(str(tmp / "data"), "bulk", str(tmp / "out"))
    return tmp, X, Q, gt, man, imp


def test_bulk_recall_matches_serial_build(built):
    tmp, X, Q, gt, man, imp = built
    assert man["rows"] == N and imp["rows"] == N and not man["errors"]
    assert man["stages"]["reduce"]["tasks"] >= 2  # the memory budget split the shuffle
    assert all(man["stages"][s]["cpu_seconds"] > 0 for s in ("heads", "map", "reduce"))
    assert imp["cpu_seconds"] > 0 and imp["disk_bytes"] > 0
    ph = imp["phases"]  # the import's own peak RSS, per phase
    assert imp["driver_peak_rss"] == max(ph["ingest_scan_peak_rss"], ph["adopt_peak_rss"],
                                         ph["checkpoint_reopen_peak_rss"]) > 0
    heads = man["stages"]["heads"]  # the sample (~10k rows) trained in parts of <= 2000 rows
    assert heads["parts"] >= 5 and heads["largest_part_rows"] <= 2000
    assert man["stages"]["sample"]["files"] == 4 and not (tmp / "out" / "sample").exists()
    for mem in [man["stages"][s]["driver_memory"] for s in ("sample", "heads", "map", "reduce")
                ] + [imp["driver_memory"]]:  # each stage's driver peak, split (DriverMemory)
        assert set(mem) == {"anon", "file", "shmem", "sum"} and mem["anon"] > 0
        assert max(mem["anon"], mem["file"], mem["shmem"]) <= mem["sum"] <= (
            mem["anon"] + mem["file"] + mem["shmem"])
    db = vecdb.open(str(tmp / "data"))
    try:
        bulk = db.collection("bulk")
        r_bulk = recall_at_k(bulk.search(Q, K, tenant="t", params=SEARCH).ids, gt, K)
        serial = db.create_collection("serial", dim=DIM, index="spann", params=PARAMS)
        serial.create_tenant("t")
        serial.upsert(np.arange(N), X, tenant="t")  # one add: SPANN's own full build
        r_serial = recall_at_k(serial.search(Q, K, tenant="t", params=SEARCH).ids, gt, K)
    finally:
        db.close()
    assert r_serial > 0.8
    assert r_bulk >= r_serial - 0.01, (r_bulk, r_serial)


def test_imported_collection_survives_reopen_and_takes_updates(built):
    tmp, X, Q, gt, man, imp = built
    db = vecdb.open(str(tmp / "data"))
    col = db.collection("bulk")
    assert col.recovery["source"] == "checkpoint" and len(col) == N
    got = col.get([0, 12_345, N - 1], tenant="t")
    assert np.allclose(got.vectors, X[[0, 12_345, N - 1]])
    before = col.search(Q[:20], K, tenant="t", params=SEARCH).ids
    new = Q[:5] + 1e-3
    col.upsert(np.arange(10**9, 10**9 + 5), new, tenant="t")
    col.delete([int(before[0, 0])], tenant="t")
    db.close()
    db = vecdb.open(str(tmp / "data"))
    try:
        col = db.collection("bulk")
        assert len(col) == N + 5 - 1
        res = col.search(new, 1, tenant="t", params=SEARCH)
        assert res.ids[:, 0].tolist() == list(range(10**9, 10**9 + 5))
        assert int(before[0, 0]) not in col.search(Q[:1], K, tenant="t", params=SEARCH).ids
    finally:
        db.close()
    with pytest.raises(AlreadyExists):
        import_bulk(str(tmp / "data"), "bulk", str(tmp / "out"))
    db = vecdb.open(str(tmp / "data"))
    try:
        with pytest.raises(FailedPrecondition, match="open in another process"):
            import_bulk(str(tmp / "data"), "other", str(tmp / "out"))
    finally:
        db.close()


def test_parquet_tenants_acl_payload_and_bad_rows(ray_local, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    n = 3000
    X = rng.standard_normal((n, 8)).astype(np.float32)
    X[17, 0] = np.nan
    ids = np.arange(5000, 5000 + n, dtype=np.uint64)
    owner = ["a" if i % 3 else "b" for i in range(n)]
    acl = [["c"] if i % 10 == 0 else [] for i in range(n)]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 8)
    for j, sl in enumerate((slice(0, 1500), slice(1500, n))):
        pq.write_table(pa.table({"vector": vec[sl], "id": pa.array(ids[sl]),
                                 "tenant": owner[sl], "acl": acl[sl],
                                 "payload": [f'{{"i": {i}}}' for i in range(n)][sl]}),
                       tmp_path / f"p{j}.parquet")
    np.save(tmp_path / "wrong.npy", X[:10, :4])
    man = bulk_build_spann(str(tmp_path), str(tmp_path / "out"), params=PARAMS, tenant="a",
                           progress=False, batch_rows=1000)
    errs = {(e["file"].rsplit("/", 1)[-1], e["row"]) for e in man["errors"]}
    assert errs == {("p0.parquet", 17), ("wrong.npy", 0)}
    import_bulk(str(tmp_path / "data"), "pq", str(tmp_path / "out"))
    db = vecdb.open(str(tmp_path / "data"))
    try:
        col = db.collection("pq")
        assert len(col) == n - 1
        st = {t: col.tenant_stats(t) for t in ("a", "b", "c")}
        assert st["a"]["owned"] + st["b"]["owned"] == n - 1
        assert st["c"]["visible"] == n // 10
        seen = col.ids("c")
        assert set(seen.tolist()) == {int(ids[i]) for i in range(0, n, 10)}
        res = col.search(X[30:31], 3, tenant="c", params=SEARCH)
        assert res.ids[0, 0] == 5030
        assert col.get([5030], tenant="c").payloads == [{"i": 30}]
    finally:
        db.close()


def test_duplicate_ids_refused(ray_local, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 4)
    for j in range(2):
        pq.write_table(pa.table({"vector": vec, "id": pa.array(np.arange(200), pa.int64())}),
                       tmp_path / f"d{j}.parquet")
    with pytest.raises(InvalidArgument, match="duplicate ids"):
        bulk_build_spann(str(tmp_path), str(tmp_path / "out"), params=PARAMS, progress=False)
    assert not _samplers()  # the build raised after its DriverMemory started: stopped anyway


def _samplers() -> list:
    """Live ``DriverMemory`` sampling threads."""
    import threading

    return [t for t in threading.enumerate() if t.name == "driver-memory" and t.is_alive()]


def test_import_that_raises_leaves_no_sampler_thread(built):
    """``import_bulk`` stops its ``DriverMemory`` thread however it fails: no manifest, a data
    folder locked by another open, a collection that exists (raised after the sampler started);
    the exception's traceback (kept here by pytest.raises) must not keep a sampler alive."""
    tmp = built[0]
    with pytest.raises(FailedPrecondition, match="manifest"):
        import_bulk(str(tmp / "data"), "x", str(tmp / "nowhere"))
    assert not _samplers()
    with pytest.raises(AlreadyExists):
        import_bulk(str(tmp / "data"), "bulk", str(tmp / "out"))
    assert not _samplers()
    db = vecdb.open(str(tmp / "data"))
    try:
        with pytest.raises(FailedPrecondition):
            import_bulk(str(tmp / "data"), "x", str(tmp / "out"))
        assert not _samplers()
    finally:
        db.close()


def test_cli_bulk_then_import(ray_local, tmp_path, capsys):
    from vecdb.ingest import main

    X = np.random.default_rng(4).standard_normal((2000, 8)).astype(np.float32)
    X[5, 5] = np.inf
    np.save(tmp_path / "a.npy", X)
    rc = main(["bulk", str(tmp_path / "a.npy"), "--out", str(tmp_path / "out"),
               "--params", '{"head_ratio": 0.1, "background": false}', "--tenant", "t"])
    assert rc == 3  # one row rejected, listed on stderr
    assert "a.npy: row 5: non-finite" in capsys.readouterr().err
    assert main(["import", "--data", str(tmp_path / "d"), "--collection", "c",
                 "--bulk", str(tmp_path / "out")]) == 0
    assert main(["import", "--data", str(tmp_path / "d"), "--collection", "c",
                 "--bulk", str(tmp_path / "out")]) == 2  # AlreadyExists
    db = vecdb.open(str(tmp_path / "d"))
    try:
        col = db.collection("c")
        assert len(col) == 1999 and 5 not in col.ids("t").tolist()
    finally:
        db.close()


def test_fill_factor_caps_lists(ray_local, tmp_path):
    X = np.concatenate(list(clustered_stream(6000, 16, chunk=3000, seed=5)))
    np.save(tmp_path / "a.npy", X)
    params = {"head_ratio": 0.02, "replica_count": 8, "posting_limit": 200, "background": False}
    man = bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "out"), tenant="t",
                           params=params, fill=0.5, progress=False)
    assert man["cap"] == 100 and man["stages"]["reduce"]["dropped_by_cap"] > 0
    import_bulk(str(tmp_path / "data"), "c", str(tmp_path / "out"))
    db = vecdb.open(str(tmp_path / "data"))
    try:
        idx = db.collection("c")._index
        sizes = np.array(list(idx._sizes.values()))
        real = {int.from_bytes(k[1:], "big"): len(v) // idx._rec.itemsize
                for k, v in idx.store.iterate("postings", prefix=b"P")}
        assert idx._sizes == real  # the sizes handed over at import are the lists' sizes
        assert sizes.max() <= 150  # only nearest-list records may pass the cap of 100
        assert (sizes <= 100).mean() > 0.9
        with pytest.raises(InvalidArgument, match="fill"):
            bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "o2"), fill=0.0,
                             progress=False)
        # no fill: the collection's build_fill (SPANN's own build cap) governs the bulk build too
        man = bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "o3"), tenant="t",
                               params={**params, "build_fill": 0.6}, progress=False)
        assert man["cap"] == 120 and man["fill"] == 0.6
    finally:
        db.close()


def test_hub_lists_are_split_before_import(ray_local, tmp_path):
    X = np.concatenate(list(clustered_stream(6000, 16, chunk=3000, seed=7)))
    np.save(tmp_path / "a.npy", X)
    params = {"head_ratio": 0.02, "replica_count": 4, "posting_limit": 24, "head_index": "hnsw",
              "background": False}
    man = bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "out"), tenant="t",
                           params=params, fill=0.8, progress=False)
    red = man["stages"]["reduce"]
    assert red["hub_lists_split"] > 0 and red["parts_made"] >= 2 * red["hub_lists_split"]
    assert man["heads"] > 120  # ~0.02 x 6000 heads trained, more after the split
    import_bulk(str(tmp_path / "data"), "c", str(tmp_path / "out"))
    rng = np.random.default_rng(1)
    Q = X[rng.choice(len(X), 100, replace=False)] + 0.01
    gt = exact_gt(X, Q, K, "l2")
    gt = gt[0] if isinstance(gt, tuple) else gt
    for _ in range(2):  # as imported, then after a reopen from the checkpoint
        db = vecdb.open(str(tmp_path / "data"))
        try:
            col = db.collection("c")
            idx = col._index
            lists = {int.from_bytes(k[1:], "big"): np.frombuffer(v, idx._rec)["slot"]
                     for k, v in idx.store.iterate("postings", prefix=b"P")}
            assert set(lists) == set(idx._sizes) and len(lists) == idx.num_lists()
            assert _ or len(lists) == man["heads"]  # (the upserts below may split a list)
            assert {h: len(s) for h, s in lists.items()} == idx._sizes
            assert set(range(len(X))) <= set(np.concatenate(list(lists.values())).tolist())
            assert max(len(s) for s in lists.values()) <= params["posting_limit"]
            r = recall_at_k(col.search(Q, K, tenant="t", params={"max_lists": 32}).ids, gt, K)
            assert r > 0.8, r
            if not _:  # each split part's head in the updated graph is the reduce's (H record)
                from vecdb.index.hnsw import HNSWIndex

                hv = {int.from_bytes(k[1:], "big"): np.frombuffer(v, np.float32)
                      for k, v in idx.store.iterate("postings", prefix=b"H")}
                new = sorted(h for h in hv if h >= man["stages"]["heads"]["heads"])
                assert len(new) == red["parts_made"]
                g = HNSWIndex.load(str(tmp_path / "out" / "heads.hnsw"))
                assert np.array_equal(g.vectors(np.array(new)), np.stack([hv[h] for h in new]))
            col.upsert(np.arange(10**6 + _ * 10, 10**6 + _ * 10 + 10), Q[:10], tenant="t")
        finally:
            db.close()


def _float_rows(x, dim: int):
    """Every row of every 2-D float array of width ``dim`` in ``x`` (nested dicts/lists/tuples)."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, list | tuple):
        for y in x:
            yield from _float_rows(y, dim)
    elif isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2 and x.shape[1] == dim:
        yield from (r.astype(np.float32).tobytes() for r in x)


def test_driver_never_gets_head_vectors_back(ray_local, tmp_path, monkeypatch):
    """Head training's tasks write the heads to files joined into heads.npy by a task, and the
    reduce tasks write the split hub lists' new heads to files: nothing the driver's ``ray.get``
    returns holds a head (member heads are data rows) or any data row, only paths, counts and
    small metadata (the first level's few split centroids are means, not rows)."""
    import ray

    X = np.concatenate(list(clustered_stream(6000, 16, chunk=3000, seed=7)))
    np.save(tmp_path / "a.npy", X)
    got = []
    real_get = ray.get

    def get(refs, *a, **kw):
        out = real_get(refs, *a, **kw)
        got.append(out)
        return out

    monkeypatch.setattr(ray, "get", get)
    params = {"head_ratio": 0.02, "replica_count": 4, "posting_limit": 24, "head_index": "hnsw",
              "background": False}
    man = bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "out"), tenant="t",
                           params=params, fill=0.8, sample_rows=3000, train_rows=1000,
                           progress=False)
    monkeypatch.undo()
    red = man["stages"]["reduce"]
    assert red["hub_lists_split"] > 0 and red["parts_made"] > 0  # new heads were made
    assert man["stages"]["heads"]["parts"] > 1  # several part tasks wrote head files
    heads = np.load(tmp_path / "out" / "heads.npy")
    assert len(heads) == man["stages"]["heads"]["heads"] > 0
    rows = {r.tobytes() for r in X} | {r.tobytes() for r in heads}
    assert {r.tobytes() for r in heads} <= {r.tobytes() for r in X}  # member heads: data rows
    returned = [r for x in got for r in _float_rows(x, 16)]
    assert len(got) > 5 and not any(r in rows for r in returned), len(returned)
    out = tmp_path / "out"
    left = [p.name for g in ("heads-part-*", "heads-trained*", "new-heads-*") for p in
            out.rglob(g)]
    assert not left and not (out / "runs").exists() and not (out / "sample").exists(), left


@pytest.mark.parametrize("kw", [{"head_search": "hnsw"}, {"probes": 0}, {"head_vectors": "mean"},
                                {"train_rows": 10}])
def test_bad_bulk_knobs_are_refused_before_any_work(tmp_path, kw):
    np.save(tmp_path / "a.npy", np.zeros((10, 4), np.float32))
    with pytest.raises(InvalidArgument):
        bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "out"), progress=False, **kw)
    assert not (tmp_path / "out").exists()


def test_sample_is_independent_of_a_generator_seeded_like_it(tmp_path):
    """The sample task must not draw the uniforms a data generator seeded ``(seed, offset)`` drew
    (the benchmark's ``clustered_stream`` picks labels that way): unsalted, it kept exactly the
    rows whose generator draw was < p, i.e. a few clusters, and trained hub heads."""
    from vecdb.ingest.bulk import _sample_task
    from vecdb.ingest.sources import Columns, plan

    n, p = 20_000, 0.1
    X = np.random.default_rng(3).standard_normal((n, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", X)
    shards, _ = plan([str(tmp_path / "a.npy")])
    out = _sample_task(shards[0], 4, "l2", p, 0, 5_000, Columns())
    row = {r.tobytes(): i for i, r in enumerate(X)}
    picked = np.array([row[v.tobytes()] for v in out["sample"]])
    u = np.random.default_rng((0, shards[0].offset)).random(n)  # the generator's draws
    assert 0.07 * n < len(picked) < 0.13 * n
    # unsalted: every picked row has u < p (mean ~0.05); independent: mean ~0.5
    assert 0.4 < u[picked].mean() < 0.6 and (u[picked] >= p).mean() > 0.8


def test_sample_stage_keeps_the_sample_in_files(ray_local, tmp_path):
    """With a folder the sample tasks write their rows there and return (path, rows): the driver
    never receives the sample; the rows are the ones the in-memory path draws."""
    from vecdb.ingest.bulk import sample_stage
    from vecdb.ingest.sources import Columns, plan

    X = np.random.default_rng(5).standard_normal((12_000, 8)).astype(np.float32)
    for j in range(3):
        np.save(tmp_path / f"s{j}.npy", X[j * 4000:(j + 1) * 4000])
    shards, _ = plan([str(tmp_path / f"s{j}.npy") for j in range(3)])
    (tmp_path / "smp").mkdir()
    args = (shards, 8, "l2", 0.1, 0, 1000, Columns(), [], "t")
    files, good, errors, failed, _, rss = sample_stage(*args, folder=str(tmp_path / "smp"))
    mem = sample_stage(*args)[0]
    assert good == 12_000 and not errors and not failed and rss > 0
    assert len(files) == 3 and all(isinstance(p, str) and isinstance(n, int) for p, n in files)
    assert 0.07 * 12_000 < sum(n for _, n in files) < 0.13 * 12_000
    on_disk = np.concatenate([np.load(p) for p, _ in sorted(files)])
    assert sum(n for _, n in files) == len(on_disk) and np.array_equal(on_disk, mem)


def _head_cover(S: np.ndarray, H: np.ndarray) -> float:
    """Mean squared distance of the rows of S to their nearest head."""
    from vecdb.kernels import search

    return float(search(S, H, 1, "l2")[1].mean())


def test_train_heads_never_loads_more_than_train_rows(ray_local, tmp_path):
    """Unbalanced parts (balance 0, clustered data) over ``train_rows`` are split again, every
    task draws or loads at most ``train_rows`` rows, every sample file is consumed, and the heads
    cover the sample about as well as heads trained on it all at once."""
    from vecdb.ingest.bulk import _leaf_heads, _leaf_size, _spann_config, train_heads

    S = np.concatenate(list(clustered_stream(24_000, 16, chunk=8000, seed=11)))
    (tmp_path / "smp").mkdir()
    files = []
    for j in range(3):
        p = str(tmp_path / "smp" / f"f{j}.npy")
        np.save(p, S[j * 8000:(j + 1) * 8000])
        files.append((p, 8000))
    cfg = _spann_config(16, "l2", {"head_ratio": 0.05, "balance": 0.0})
    heads, info = train_heads(files, 24_000, cfg, str(tmp_path / "smp"), groups=2,
                              train_rows=2000)
    assert info["largest_part_rows"] <= 2000 and info["largest_split_sample"] <= 2000
    assert info["levels"] >= 2 and info["parts"] >= 12  # 24k rows: at least 12 parts of 2000
    assert not list((tmp_path / "smp").iterdir())
    whole = _leaf_heads(S, _leaf_size(cfg, len(S), 24_000), 0.0, cfg["seed"], "member")
    assert abs(len(heads) - len(whole)) < 0.1 * len(whole), (len(heads), len(whole))
    assert _head_cover(S, heads) < 1.1 * _head_cover(S, whole)


def test_train_heads_cuts_identical_rows(ray_local, tmp_path):
    from vecdb.ingest.bulk import _spann_config, train_heads

    p = str(tmp_path / "same.npy")
    np.save(p, np.ones((5000, 4), np.float32))
    cfg = _spann_config(4, "l2", {"head_ratio": 0.05})
    heads, info = train_heads([(p, 5000)], 5000, cfg, str(tmp_path), train_rows=1000)
    assert info["largest_part_rows"] <= 1000 and len(heads) > 0
    assert np.all(heads == 1)


def test_from_arrays_takes_the_slot_arrays_over_sized_to_high():
    """The import's (and every) reopen holds the loaded slot arrays once (no copy, no
    power-of-two resize) and still grows past them; to_arrays hands out copies, so a state built
    from them is independent."""
    n = 5000
    a = {"slot_id": np.arange(n, dtype=np.int64), "slot_owner": np.zeros(n, dtype=np.int32),
         "grant_slots": np.zeros(0, np.int64), "grant_indptr": np.zeros(1, np.int64),
         "grant_tenants": np.zeros(0, np.int32)}
    from vecdb.engine.state import CollectionState

    s = CollectionState.from_arrays(a)
    assert s.slot_id is a["slot_id"] and s.slot_owner is a["slot_owner"]
    assert len(s.slot_id) == n
    t = CollectionState.from_arrays(s.to_arrays())
    s.apply_upsert(np.array([n, n + 1]), np.array([10**9, 10**9 + 1], np.uint64), 1)
    assert len(s) == n + 2 and len(t) == n and t.high == n and int(t.slot_owner[n - 1]) == 0
    assert s.lookup(np.array([10**9 + 1], np.uint64)).tolist() == [n + 1]
    ro = {**a, "slot_id": np.arange(n, dtype=np.int64), "slot_owner": np.zeros(n, np.int32)}
    ro["slot_id"].flags.writeable = False
    u = CollectionState.from_arrays(ro)
    u.apply_delete(np.array([3]))
    assert u.lookup(np.array([3], np.uint64)).tolist() == [-1]


def test_train_heads_within_train_rows_is_the_in_memory_build(ray_local, tmp_path):
    """A sample that fits ``train_rows`` gets exactly the heads of the in-memory build: balanced
    k-means labels of all rows as the first level, part g's sub-tree with seed + g."""
    from vecdb.index._spann_parts import balanced_kmeans
    from vecdb.ingest.bulk import _leaf_heads, _leaf_size, _spann_config, train_heads

    S = np.concatenate(list(clustered_stream(30_000, 16, chunk=10_000, seed=4)))
    cfg = _spann_config(16, "l2", {"head_ratio": 0.02})
    files = []
    for j in range(3):
        np.save(tmp_path / f"f{j}.npy", S[j * 10_000:(j + 1) * 10_000])
        files.append((str(tmp_path / f"f{j}.npy"), 10_000))
    heads, info = train_heads(files, 150_000, cfg, str(tmp_path), groups=4)
    leaf = _leaf_size(cfg, len(S), 150_000)
    lab = balanced_kmeans(S, 4, cfg["balance"], np.random.default_rng(cfg["seed"]))
    want = np.concatenate([_leaf_heads(S[lab == g], leaf, cfg["balance"], cfg["seed"] + g,
                                       "member") for g in range(4)])
    assert info["levels"] == 1 and np.array_equal(heads, want)
    assert not list(tmp_path.glob("*.npy"))


def test_reduce_task_over_many_ranges_writes_what_one_task_per_range_writes(
        tmp_path, sst_items):
    """A reduce task maps the run/vector files once and walks its ranges with per-run cursors:
    every range must come out as when it is reduced alone (keys, records with zero pad bytes,
    split hub lists, sizes), and ``_groups`` must cover the ranges in order."""
    from vecdb.index._spann_parts import record_dtype
    from vecdb.ingest.bulk import _groups, _reduce_task, run_dtype

    rng = np.random.default_rng(0)
    H, dim, per = 40, 8, 300
    heads = rng.standard_normal((H, dim)).astype(np.float32)
    runs, vec_files = [], []
    for f in range(3):
        X = rng.standard_normal((per, dim)).astype(np.float32)
        p = tmp_path / f"vec-{f}.npy"
        np.save(p, X)
        vec_files.append((f * per, str(p)))
        lid = np.concatenate([rng.integers(0, H, per), np.full(per // 3, 7)])  # list 7: a hub
        r = np.empty(len(lid), run_dtype())
        r["lid"], r["sec"] = lid, np.arange(len(lid)) % 3 != 0
        r["d"] = rng.random(len(lid))
        r["slot"] = f * per + np.concatenate([np.arange(per), np.arange(per // 3)])
        r = r[np.argsort(r["lid"], kind="stable")]
        np.save(tmp_path / f"run-{f}.npy", r)
        runs.append(str(tmp_path / f"run-{f}.npy"))
    hist = np.bincount(np.concatenate([np.load(p)["lid"] for p in runs]), minlength=H)
    ranges = [(0, 5), (5, 9), (9, 9 + 1), (10, 25), (25, 40)]
    groups = _groups(hist, ranges, 2)
    assert [r[:2] for g in groups for r in g] == ranges and len(groups) == 2
    assert [r[2] for g in groups for r in g] == list(range(len(ranges)))
    split = {7: (H, 8)}
    np.save(tmp_path / "heads.npy", heads)
    outs = []
    for name, calls in (("one", [[(lo, hi, i)] for i, (lo, hi) in enumerate(ranges)]),
                        ("many", groups)):
        out = tmp_path / name
        (out / "sst").mkdir(parents=True)
        res = [r for g in calls for r in _reduce_task(
            g, runs, str(tmp_path / "heads.npy"), dim, 20, vec_files, str(out), split, 1.0, 0,
            30)]
        outs.append((sst_items(out), res))
    (a, ra), (b, rb) = outs
    assert a == b and len(a) > 2 * H
    for x, y in zip(ra, rb, strict=True):
        for k in ("sizes", "new_ids", "new_sizes", "new_heads"):
            assert np.array_equal(x[k], y[k])
    assert ra[1]["sizes"][7 - 5] == -1 and len(ra[1]["new_ids"]) >= 2  # the hub was split
    hv = {int.from_bytes(k[1:], "big"): v for k, v in a if k[:1] == b"H"}
    assert all(hv[h] == heads[h].tobytes() for h in range(H) if h != 7)  # each range's heads
    recs = [np.frombuffer(v, record_dtype(dim)) for k, v in a if k[:1] == b"P"]
    raw = np.concatenate([np.frombuffer(v, np.uint8) for k, v in a if k[:1] == b"P"])
    assert sum(len(r) for r in recs) * record_dtype(dim).itemsize == len(raw)
    pads = raw.reshape(-1, record_dtype(dim).itemsize)[:, 9:12]
    assert not pads.any()  # split parts included: no uninitialised bytes on disk
    assert all(r["ver"].min() == 1 for r in recs)
    # the driver's variant: the new heads go to a file (the ranges' new_heads joined in order),
    # or none when no list is split
    from vecdb.ingest.bulk import _reduce_group_task

    for plan in (split, None):
        got = []
        for i, g in enumerate(groups):
            out = tmp_path / f"grp-{plan is None}-{i}"
            (out / "sst").mkdir(parents=True)
            res, f = _reduce_group_task(g, runs, str(tmp_path / "heads.npy"), dim, 20, vec_files,
                                        str(out), plan, 1.0, 0, 30, str(out / "new.npy"))
            assert all("new_heads" not in r for r in res)
            want = [r["new_heads"] for r in rb if g[0][0] <= r["lo"] < g[-1][1]]
            if plan is None or not sum(len(x) for x in want):
                assert f is None and not (out / "new.npy").exists()
            else:
                assert f == str(out / "new.npy")
                assert np.array_equal(np.load(f), np.concatenate(want))
                got.append(f)
        assert len(got) == (1 if plan else 0)  # list 7 is in one group


def test_duplicate_id_check_runs_in_id_ranges(ray_local, tmp_path):
    """``save_ids`` files + ``check_unique_ids``: range tasks over every batch's file find a
    repeat across batches or inside one batch whatever the number of ranges, name the smallest
    repeated ids, and pass unique ids (every id checked exactly once)."""
    from vecdb.ingest.bulk import check_unique_ids, save_ids

    rng = np.random.default_rng(2)
    ids = rng.permutation(np.arange(10**12, 10**12 + 50_000)).astype(np.uint64)
    batches = np.array_split(ids, 7)
    res = [save_ids(b, str(tmp_path), f"b{i}") for i, b in enumerate(batches)]
    assert save_ids(None, str(tmp_path), "none") == {} and "ids_file" in res[0]
    for tasks in (1, 3, 16):
        info = check_unique_ids(res + [{}], tasks=tasks)
        assert info["ids"] == 50_000 and info["tasks"] >= tasks
    # memory budget: 50k ids x 24 B over 100 kB -> at least 12 ranges
    assert check_unique_ids(res, memory_bytes=100_000, tasks=1)["tasks"] >= 12
    # a repeat across batches (in a middle range) and one at the very top of the id space
    dup = [int(batches[2][5]), int(ids.max())]
    extra = save_ids(np.array(dup, np.uint64), str(tmp_path), "dup")
    for tasks in (1, 4):
        with pytest.raises(InvalidArgument, match="duplicate ids") as e:
            check_unique_ids(res + [extra], tasks=tasks)
        assert str(sorted(dup)) in str(e.value)
    # a repeat inside one batch (its unique file alone would hide it)
    inner = save_ids(np.array([7, 9, 7], np.uint64), str(tmp_path), "inner")
    assert inner["ids_rows"] == 2 and inner["ids_dup"].tolist() == [7]
    with pytest.raises(InvalidArgument, match=r"\[7\]"):
        check_unique_ids(res + [inner])


def test_head_tasks_keep_their_inputs_until_their_outputs_are_saved(tmp_path, monkeypatch):
    """A head-training task Ray retries must find its inputs: ``_part_task`` and ``_label_task``
    remove their input files only after their outputs are saved (a failure before leaves them),
    and ``_gather_heads_task`` removes none (the driver does, after it returned); its heads.npy
    is byte for byte what ``np.save`` writes, however the parts are cut into chunks."""
    import vecdb.ingest.bulk as bulk

    rng = np.random.default_rng(5)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    files = []
    for i, (a, b) in enumerate(((0, 250), (250, 600))):
        np.save(tmp_path / f"s{i}.npy", X[a:b])
        files.append((str(tmp_path / f"s{i}.npy"), b - a))

    def boom(*a, **kw):
        raise RuntimeError("worker died")

    for task, args in ((bulk._part_task, (50, 1.0, 0, "member", str(tmp_path / "h.npy"))),
                       (bulk._label_task, (3, 1.0, 0, str(tmp_path / "l0")))):
        with monkeypatch.context() as m:
            m.setattr(bulk, "_save_parts" if task is bulk._label_task else "_leaf_heads", boom)
            with pytest.raises(RuntimeError):
                task(files, *args)
        assert all(os.path.exists(p) for p, _ in files)  # the retry's inputs are there
    r = bulk._label_task(files, 3, 1.0, 0, str(tmp_path / "l0"))
    assert not any(os.path.exists(p) for p, _ in files)  # consumed once the parts are saved
    parts = [p for p in r["parts"] if p is not None]
    assert sum(n for _, n in parts) == 600
    heads = []
    for i, part in enumerate(parts):
        h = bulk._part_task([part], 50, 1.0, i, "member", str(tmp_path / f"h{i}.npy"))
        assert not os.path.exists(part[0]) and h["heads"] == len(np.load(h["file"]))
        heads.append((h["file"], h["heads"]))
    want = np.concatenate([np.load(f) for f, _ in heads])
    np.save(tmp_path / "want.npy", want)
    for chunk in (1, 3, 10_000):  # a retried gather rewrites the same file from the same parts
        g = bulk._gather_heads_task(heads, str(tmp_path / "heads.npy"), chunk=chunk)
        assert g["heads"] == len(want)
        assert (tmp_path / "heads.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
        assert all(os.path.exists(f) for f, _ in heads)


def test_bench_memory_summary_and_results_name(monkeypatch):
    """bench.bulk's memory summary carries each stage's driver anon/file/shmem split where the
    stage has one (old runs and stages without it are left out, not zero-filled), subtracts the
    index state from the import only; ``--no-baselines`` runs default to their own results name
    (never over bulk.json, which the README quotes)."""
    import argparse

    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "RAY_DEDUP_LOGS"):
        monkeypatch.delenv(k, raising=False)  # bench.bulk sets them on import: restored after
    from bench.bulk import memory_summary, results_name

    mem = {"anon": 50, "file": 30, "shmem": 2, "sum": 80}
    stages = {"sample": {"driver_peak_rss": 100, "driver_memory": mem, "worker_peak_rss": 7},
              "heads": {"driver_peak_rss": 120},  # a run from before the split
              "map": {"driver_peak_rss": 110, "driver_memory": {}, "worker_peak_rss": 9,
                      "worker_memory": {"anon": 4, "shared": 5}},
              "import": {"driver_peak_rss": 1000, "driver_memory": {**mem, "anon": 900}}}
    s = memory_summary(stages, {"bytes": 600})
    assert s["driver_memory"] == {"sample": mem, "import": {**mem, "anon": 900}}
    assert s["driver_peak_rss"] == {"sample": 100, "heads": 120, "map": 110, "import": 1000}
    assert s["driver_peak_minus_index_state"] == {"sample": 100, "heads": 120, "map": 110,
                                                  "import": 400}
    assert s["driver_overhead_max"] == 400 and s["worker_private_peak"] == {"sample": 7, "map": 4}
    assert s["map_worker_shared"] == 5

    def ns(**kw):
        return argparse.Namespace(**{"name": None, "smoke": False, "no_baselines": False, **kw})

    assert results_name(ns()) == "bulk" and results_name(ns(smoke=True)) == "bulk-smoke"
    assert results_name(ns(no_baselines=True)) == "bulk-nobaselines"
    assert results_name(ns(no_baselines=True, smoke=True)) == "bulk-nobaselines-smoke"
    assert results_name(ns(no_baselines=True, name="before-1m")) == "before-1m"


def test_head_graph_update_task_joins_new_head_files_in_order(tmp_path):
    """The graph-update task removes the split lists' heads and adds the reduce tasks' new-head
    files joined in order as ``added_ids``; with no file it only removes (no empty add)."""
    from vecdb.index.hnsw import HNSWIndex
    from vecdb.ingest.bulk import _head_graph_update_task

    rng = np.random.default_rng(3)
    H = rng.standard_normal((20, 8)).astype(np.float32)
    g = HNSWIndex(8, "l2", M=8, ef_construction=50, seed=0, max_elements=30)
    g.add(H, slots=np.arange(20, dtype=np.int64))
    path = str(tmp_path / "g.hnsw")
    g.save(path)
    _head_graph_update_task(path, np.array([3], np.int64), [], np.zeros(0, np.int64))
    g = HNSWIndex.load(path)
    assert len(g) == 19 and np.array_equal(g.vectors(np.array([0, 19])), H[[0, 19]])
    new = [rng.standard_normal((n, 8)).astype(np.float32) for n in (2, 1)]
    files = []
    for i, a in enumerate(new):
        np.save(tmp_path / f"new-{i}.npy", a)
        files.append(str(tmp_path / f"new-{i}.npy"))
    _head_graph_update_task(path, np.array([5, 6], np.int64), files,
                            np.array([20, 21, 22], np.int64))
    g = HNSWIndex.load(path)
    assert len(g) == 20
    assert np.array_equal(g.vectors(np.array([20, 21, 22])), np.concatenate(new))
    with pytest.raises(AssertionError):  # the files' heads must match the ids
        _head_graph_update_task(path, np.zeros(0, np.int64), files, np.array([23], np.int64))


def test_map_batch_result_is_small_and_its_histogram_file_is_exact(ray_local, tmp_path,
                                                                   monkeypatch):
    """A map batch touching ~2,000 lists returns a few KB (the list histogram goes to
    ``runs/hist-<tag>.npy``, not into the result, so results stay under Ray's inline limit and
    out of the object store): the file holds exactly the run's per-list records and primaries,
    and the driver deletes it once added."""
    import pickle

    import vecdb.ingest.bulk as bulk

    X = np.concatenate(list(clustered_stream(20_000, 16, chunk=10_000, seed=5)))
    np.save(tmp_path / "a.npy", X)
    seen = []
    real = bulk.map_shards

    def map_shards(*a, on_result=None, **kw):
        def spy(r):
            h = np.load(r["hist"]) if "hist" in r else None
            run = np.load(r["runs"][0]) if r["runs"] else None
            seen.append((len(pickle.dumps(r)), r.get("lists", 0), h, run))
            out = on_result(r)
            assert h is None or not os.path.exists(r.get("hist", "") or "x")
            return out
        return real(*a, on_result=spy, **kw)

    monkeypatch.setattr(bulk, "map_shards", map_shards)
    params = {"head_ratio": 0.1, "replica_count": 8, "background": False}
    man = bulk_build_spann(str(tmp_path / "a.npy"), str(tmp_path / "out"), tenant="t",
                           params=params, batch_rows=20_000, sample_rows=10_000,
                           train_rows=10_000, progress=False)
    assert seen and max(s[1] for s in seen) > 1_500  # lists in one batch: old result ~50 KB
    assert max(s[0] for s in seen) < 16 << 10, [s[0] for s in seen]
    total = 0
    for _, lists, h, run in seen:
        ids, n = np.unique(run["lid"], return_counts=True)
        p = np.array([np.sum((run["lid"] == i) & (run["sec"] == 0)) for i in ids])
        assert h.dtype == np.int32 and h.shape == (3, lists)
        assert np.array_equal(h[0], ids) and np.array_equal(h[1], n) and np.array_equal(h[2], p)
        total += int(n.sum())
    assert total == man["stages"]["map"]["assignments"] > 0
