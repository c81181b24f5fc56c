"""The import's chunked builders: engine maps from row chunks or map files
(``CollectionState.from_rows``, ``Collection.import_sst(maps=)``), ACL lists from an owner array
(``AccessLists.from_owner``) and SPANN's compact checkpoint. Each is checked against the
row-by-row path it replaces, at chunk boundaries, with chunks of one row and empty input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rocksdict

import vecdb
from vecdb.engine import codec, state
from vecdb.engine.state import CollectionState
from vecdb.errors import FailedPrecondition, InvalidArgument
from vecdb.index.acl import AccessLists
from vecdb.index.flat import FlatIndex
from vecdb.index.spann import SPANNIndex
from vecdb.storage.kv import MemoryKVStore


def _reference(slots, ids, owners, grants) -> CollectionState:
    """The row-by-row path: one apply_upsert per row, then the grants."""
    st = CollectionState()
    for s, i, o in zip(slots.tolist(), ids.tolist(), owners.tolist(), strict=True):
        st.apply_upsert(np.array([s]), np.array([i], np.uint64), o)
    for s, ts in grants.items():
        for t in ts:
            st.apply_grant(np.array([s]), t)
    return st


def _same(a: CollectionState, b: CollectionState) -> None:
    x, y = a.to_arrays(), b.to_arrays()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert a.high == b.high and len(a) == len(b) and a.owned == b.owned
    assert a.grants == b.grants and a.granted == b.granted
    np.testing.assert_array_equal(a.free_slots(), b.free_slots())
    ids = a.slot_id[: a.high][a.slot_owner[: a.high] >= 0].astype(np.uint64)
    np.testing.assert_array_equal(a.lookup(ids), b.lookup(ids))
    free = set(a.free_slots().tolist())
    got = a.allocate(len(free) + 2).tolist()  # every free slot first, then new ones
    assert set(got[: len(free)]) == free and got[len(free):] == [a.high, a.high + 1]


def _rows(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(3 * n, n, replace=False)).astype(np.int64)  # with holes
    ids = rng.choice(1 << 40, n, replace=False).astype(np.uint64)
    owners = rng.integers(0, 5, n).astype(np.int32)
    grants = {int(s): [7, 9] for s in slots[::7]}
    grants[int(3 * n + 5)] = [1]  # a grant on a slot with no vector: dropped
    return slots, ids, owners, grants


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_from_rows_is_the_row_by_row_state(chunk):
    slots, ids, owners, grants = _rows()
    want = _reference(slots, ids, owners, {s: g for s, g in grants.items() if s in set(
        slots.tolist())})
    parts = [(slots[a:a + chunk], ids[a:a + chunk], owners[a:a + chunk])
             for a in range(0, len(slots), chunk)]
    got = CollectionState.from_rows(int(slots.max()) + 1, parts, grants, expected=len(slots))
    _same(got, want)


def test_from_rows_empty_and_bad_rows():
    st = CollectionState.from_rows(0, [], {3: [1]})
    assert len(st) == 0 and st.high == 0 and not st.grants and st.allocate(2).tolist() == [0, 1]
    one = (np.array([1]), np.array([5], np.uint64), np.array([0], np.int32))
    with pytest.raises(InvalidArgument, match="out of range"):
        CollectionState.from_rows(1, [one])
    with pytest.raises(InvalidArgument, match="twice"):
        CollectionState.from_rows(4, [one, one])
    with pytest.raises(InvalidArgument, match="two slots"):
        CollectionState.from_rows(4, [one, (np.array([2]), np.array([5], np.uint64),
                                            np.array([0], np.int32))])
    with pytest.raises(InvalidArgument, match="owner"):
        CollectionState.from_rows(4, [(np.array([0]), np.array([1], np.uint64),
                                       np.array([-1], np.int32))])


@pytest.mark.parametrize("chunk", [1, 8, 1 << 20])
def test_from_arrays_in_chunks_is_the_row_by_row_state(monkeypatch, chunk):
    monkeypatch.setattr(state, "CHUNK", chunk)
    slots, ids, owners, grants = _rows(300, seed=1)
    grants.pop(max(grants))
    want = _reference(slots, ids, owners, grants)
    want.apply_delete(slots[5:9])  # freed slots in the middle
    _same(CollectionState.from_arrays(want.to_arrays()), want)
    _same(CollectionState.from_arrays(CollectionState().to_arrays()), CollectionState())


def _acl_ref(owner_lists: dict[int, list[int]], cap: int) -> AccessLists:
    ref = AccessLists(cap)
    for s, ts in owner_lists.items():
        ref.set(s, ts)
    return ref


def _same_acl(a: AccessLists, b: AccessLists, n: int) -> None:
    assert sorted(a.tenants()) == sorted(b.tenants())
    for t in b.tenants():
        assert a.count(t) == b.count(t)
        np.testing.assert_array_equal(a.members(t), b.members(t))
    for s in range(0, n, max(1, n // 500)):
        np.testing.assert_array_equal(a.tenants_of(s), b.tenants_of(s))


@pytest.mark.parametrize("tenants", [1, 3, 40])  # packed masks / _set_bits per chunk
def test_from_owner_round_trips_across_chunks(tenants):
    n = (1 << 20) + 1000  # past one chunk of the owner scan
    rng = np.random.default_rng(tenants)
    lists = {}
    for s in rng.choice(n, 3000, replace=False).tolist():
        lists[s] = [int(rng.integers(0, tenants))]
    for s in list(lists)[:50]:
        lists[s] = sorted({lists[s][0], 40_000 + s % 3})  # int32 tenants in multi lists
    ref = _acl_ref(lists, n)
    arr = ref.to_arrays(compact=True)
    got = AccessLists.from_arrays({k: v.copy() for k, v in arr.items()}, n)
    _same_acl(got, ref, n)
    again = AccessLists.from_arrays(got.to_arrays(), n)  # and the CSR format of the result
    _same_acl(again, ref, n)


def test_from_owner_empty_and_bad_input():
    empty = AccessLists(100).to_arrays(compact=True)
    a = AccessLists.from_arrays(empty, 100)
    assert a.tenants() == [] and a.memory_bytes() == 0
    own = np.full(16, -1, np.int16)
    own[3] = -2
    with pytest.raises(InvalidArgument, match="match"):
        AccessLists.from_owner(own.copy())
    with pytest.raises(InvalidArgument, match="malformed"):
        AccessLists.from_owner(own.copy(), np.array([3]), np.array([0, 1]), np.array([2]))
    own[3] = -3
    with pytest.raises(InvalidArgument, match="bad owner"):
        AccessLists.from_owner(own.copy())
    with pytest.raises(InvalidArgument, match="int16/int32"):
        AccessLists.from_owner(np.zeros(8, np.float32))


def test_spann_compact_checkpoint_and_an_old_one_load_the_same(tmp_path, sift5k):
    X = sift5k["base"][:1500]
    store = MemoryKVStore()
    idx = SPANNIndex(128, "l2", store, head_ratio=0.05, background=False)
    idx.add(X, acl=[[i % 3] if i % 10 else [0, 4] for i in range(len(X))])
    idx.remove(np.arange(0, 1500, 50))
    idx.save(tmp_path / "s.idx")
    with np.load(tmp_path / "s.idx") as z:
        assert "live_mask" in z.files and "acl_owner" in z.files and "live" not in z.files
    new = SPANNIndex.load(tmp_path / "s.idx", store=store)
    meta, arrays = idx._state()
    old = {k: v for k, v in arrays.items() if k not in ("live_mask", "acl_owner")
           and not k.startswith("acl_multi")}
    old["live"] = np.flatnonzero(arrays["live_mask"]).astype(np.int64)  # the earlier format
    old.update(idx.acl.to_arrays())
    was = SPANNIndex._from_state({**meta, "dim": 128, "metric": "l2", "kind": "spann"}, old,
                                 store)
    Q = sift5k["queries"][:20]
    for t in (0, 1, 4):
        want = idx.search(Q, 10, tenant=t)
        for other in (new, was):
            got = other.search(Q, 10, tenant=t)
            np.testing.assert_array_equal(got[0], want[0])
    assert len(new) == len(was) == len(idx) == 1470
    np.testing.assert_array_equal(new._live[: len(idx._live)], idx._live)
    _same_acl(new.acl, idx.acl, 1500)
    _same_acl(was.acl, idx.acl, 1500)


# -- import_sst with map files ------------------------------------------------------------------
def _sst(path, keys, values) -> str:
    w = rocksdict.SstFileWriter(options=rocksdict.Options(raw_mode=True))
    w.open(str(path))
    for k, v in zip(keys, values, strict=True):
        w[k] = v
    w.finish()
    return str(path)


def _map(path, slots, ids, owners) -> str:
    a = np.empty(len(slots), dtype=[("slot", "<i8"), ("id", "<u8"), ("owner", "<i4")])
    a["slot"], a["id"], a["owner"] = slots, ids, owners
    np.save(path, a)
    return str(path)


def _build(tmp_path, n, parts, tag="", bad=None):
    """``parts`` batches of ``n`` rows with holes (every 11th slot skipped, as bad rows leave
    them): vectors SSTs, one grant SST, and the map files."""
    rng = np.random.default_rng(n)
    slots = np.array([s for s in range(n + n // 10 + 1) if s % 11 != 5][:n], dtype=np.int64)
    ids = rng.choice(1 << 50, n, replace=False).astype(np.uint64)
    owners = (slots % 2).astype(np.int32)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    sst, maps = {"vectors": [], "acl": []}, []
    for j, sel in enumerate(np.array_split(np.arange(n), parts)):
        if not len(sel):
            continue
        sst["vectors"].append(_sst(tmp_path / f"v{tag}{j}.sst", codec.be_keys(slots[sel]),
                                   codec.pack_vectors(ids[sel], owners[sel], X[sel])))
        m_ids = ids[sel].copy()
        if bad == "id" and j == 0:
            m_ids[0] += 1
        if bad == "gap" and j == 0:
            sel = sel[1:]  # a row the vectors family has and the maps lack
        maps.append(_map(tmp_path / f"m{tag}{j}.npy", slots[sel], m_ids[:len(sel)] if bad !=
                         "gap" else ids[sel], owners[sel]))
    if n:
        sst["acl"].append(_sst(tmp_path / f"a{tag}.sst", codec.be_keys(slots[::4]),
                               [np.array([2], "<i4").tobytes()] * len(slots[::4])))
    return sst, maps, (slots, ids, owners, X)


def _flat_adopter(store, st):
    """An adopter for the tests: a flat index of the store's vectors (read back per slot)."""
    idx = FlatIndex(8, "l2")
    live = np.flatnonzero(st.slot_owner[: st.high] >= 0)
    if len(live):
        rec = codec.unpack_vectors(store.multi_get("vectors", codec.be_keys(live)), 8)
        idx.add(np.ascontiguousarray(rec["vec"]), live, st.acl_csr(live))
    return idx


@pytest.mark.parametrize("n,parts", [(0, 1), (1, 1), (120, 1), (120, 7), (120, 120)])
def test_import_with_map_files_equals_the_vectors_scan(tmp_path, n, parts):
    tenants = ["a", "b", "c"]
    out = {}
    for how in ("scan", "maps"):
        d = tmp_path / how
        d.mkdir()
        sst, maps, (slots, ids, owners, X) = _build(d, n, parts)
        with vecdb.open(tmp_path / f"db-{how}", background_checkpoints=False) as db:
            col = db.import_sst("c", dim=8, index="flat", tenants=tenants,
                                sst={f: v for f, v in sst.items() if v}, adopt=_flat_adopter,
                                expected_rows=n, maps=maps if how == "maps" else None)
            assert col.recovery["source"] == "checkpoint"
            st = col._state
            out[how] = (st.to_arrays(), dict(st.owned), {k: set(v) for k, v in
                                                         st.grants.items()})
            assert len(col) == n
            if n:
                mine = slots % 2 == 1
                got = col.search(X[mine][:3], 1, tenant="b")
                np.testing.assert_array_equal(got.ids[:, 0], ids[mine][:3].astype(np.int64))
                assert set(col.ids("c").tolist()) == set(ids[::4].tolist())
                col.upsert([7], np.ones((1, 8), np.float32), tenant="a")  # writable
                assert len(col) == n + 1
    for k in out["scan"][0]:
        np.testing.assert_array_equal(out["scan"][0][k], out["maps"][0][k], err_msg=k)
    assert out["scan"][1:] == out["maps"][1:]


@pytest.mark.parametrize("bad", ["id", "gap", "missing"])
def test_import_refuses_map_files_that_differ_from_the_store(tmp_path, bad):
    sst, maps, _ = _build(tmp_path, 200, 4, bad=None if bad == "missing" else bad)
    if bad == "missing":  # a vectors file the maps describe is not ingested
        sst["vectors"] = sst["vectors"][1:]
    with vecdb.open(tmp_path / "db", background_checkpoints=False) as db:
        with pytest.raises(FailedPrecondition, match="do not match"):
            db.import_sst("c", dim=8, index="flat", tenants=["a", "b", "c"], sst=sst,
                          adopt=_flat_adopter, expected_rows=200, maps=maps)
        assert db.list_collections() == []
        assert os.listdir(tmp_path / "db" / "collections") == []


def test_map_files_are_validated(tmp_path):
    sst, maps, _ = _build(tmp_path, 50, 2)
    np.save(tmp_path / "wrong.npy", np.zeros(3, np.int64))
    with vecdb.open(tmp_path / "db", background_checkpoints=False) as db:
        for m, match in (([str(tmp_path / "wrong.npy")], "fields"),
                         ([maps[0], maps[0]], "overlap"),
                         ([str(tmp_path / "none.npy")], "map file")):
            with pytest.raises(InvalidArgument, match=match):
                db.import_sst("c", dim=8, index="flat", tenants=["a", "b", "c"], sst=sst,
                              adopt=_flat_adopter, maps=m)
        assert db.list_collections() == []


@pytest.mark.parametrize("keys", [[], [0], [5], [0, 1 << 40], [3, 4, 9, (1 << 62) + 7]])
def test_max_key_finds_the_last_slot(tmp_path, keys):
    """The binary search of seeks that sizes the maps before a vectors scan."""
    with vecdb.open(tmp_path / "db", background_checkpoints=False) as db:
        col = db.create_collection("c", dim=2)
        from vecdb.storage import WriteBatch

        b = WriteBatch()
        for k in keys:
            b.put("vectors", codec.be_key(k), b"x")
        col._store.write(b)
        assert col._max_key("vectors") == (max(keys) if keys else -1)
