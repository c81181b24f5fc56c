"""vecdb._idmap.IdMap (the engine's native id -> slot map) against a Python dict model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vecdb._idmap import IdMap, hash64

from vecdb.errors import InvalidArgument

U64_MAX = (1 << 64) - 1


def _colliding(mask_bits: int, count: int) -> list[int]:
    """``count`` ids whose hashes agree on the low ``mask_bits`` bits: they share a home bucket
    in every table of up to 2^mask_bits buckets, so they probe the same chain."""
    cand = np.arange(1, 4_000_000, dtype=np.uint64)
    low = hash64(cand) & np.uint64((1 << mask_bits) - 1)
    vals, counts = np.unique(low, return_counts=True)
    best = vals[np.argmax(counts)]
    ids = cand[low == best][:count]
    assert len(ids) == count
    return [int(x) for x in ids]


COLLIDE = _colliding(12, 24)
POOL = [0, 1, 2, U64_MAX, U64_MAX - 1, 1 << 63, (1 << 63) - 1, *COLLIDE]
IDS = st.sampled_from(POOL) | st.integers(0, U64_MAX)


def test_colliding_ids_really_collide():
    h = hash64(np.array(COLLIDE, dtype=np.uint64)) & np.uint64(4095)
    assert len(set(h.tolist())) == 1


def _check(m: IdMap, model: dict[int, int], probe: list[int]) -> None:
    assert len(m) == len(model)
    q = np.array(sorted(set(probe) | set(model)), dtype=np.uint64)
    assert m.lookup(q).tolist() == [model.get(int(i), -1) for i in q]
    k, s = m.to_arrays()
    assert dict(zip(k.tolist(), s.tolist(), strict=True)) == model
    cap = m.capacity
    assert cap & (cap - 1) == 0 and len(m) <= 0.7 * cap
    assert m.memory_bytes() >= 16 * cap


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.lists(st.tuples(IDS, st.integers(0, 1 << 40)),
                                                 max_size=30)),
        st.tuples(st.just("delete"), st.lists(IDS, max_size=30)),
        st.tuples(st.just("lookup"), st.lists(IDS, max_size=30)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_matches_dict_model(ops):
    m, model = IdMap(), {}
    seen: list[int] = list(POOL)
    for op, arg in ops:
        if op == "insert":
            ids = np.array([i for i, _ in arg], dtype=np.uint64)
            slots = np.array([s for _, s in arg], dtype=np.int64)
            fresh = len({i for i, _ in arg} - set(model))
            assert m.insert(ids, slots) == fresh
            model.update(arg)  # a repeated id keeps its last slot, as dict.update does
            seen += [i for i, _ in arg]
        elif op == "delete":
            present = len(set(arg) & set(model))
            assert m.delete(np.array(arg, dtype=np.uint64)) == present
            for i in arg:
                model.pop(i, None)
        else:
            got = m.lookup(np.array(arg, dtype=np.uint64))
            assert got.tolist() == [model.get(i, -1) for i in arg]
        _check(m, model, seen)


def test_growth_across_many_rehashes_and_churn():
    rng = np.random.default_rng(0)
    m = IdMap()
    alive = np.zeros(0, dtype=np.uint64)
    slot_of: dict[int, int] = {}
    caps = set()
    ids_all = rng.choice(1 << 62, size=300_000, replace=False).astype(np.uint64)
    nxt = 0
    for it in range(200):
        n = int(rng.integers(1, 2 + 15 * it))  # small batches first: every capacity is visited
        new = ids_all[nxt : nxt + n]
        nxt += n
        slots = rng.integers(0, 1 << 40, size=len(new))
        assert m.insert(new, slots) == len(new)
        slot_of.update(zip(new.tolist(), slots.tolist(), strict=True))
        alive = np.concatenate([alive, new])
        kill = rng.choice(len(alive), size=len(alive) // 5, replace=False)
        assert m.delete(alive[kill]) == len(kill)
        for i in alive[kill].tolist():
            del slot_of[i]
        alive = np.delete(alive, kill)
        caps.add(m.capacity)
        assert len(m) == len(alive)
    assert len(caps) >= 10  # grew through many rehashes
    assert m.lookup(alive).tolist() == [slot_of[i] for i in alive.tolist()]
    gone = np.setdiff1d(ids_all[:nxt], alive)
    assert (m.lookup(gone) == -1).all()
    assert m.capacity <= 4 * 2 ** int(np.ceil(np.log2(len(alive) / 0.7)))


def test_tombstones_do_not_grow_a_steady_map():
    """Insert/delete churn at a constant size reuses or clears tombstones (rehash in place)."""
    m = IdMap()
    ids = np.arange(100_000, dtype=np.uint64)
    for i in range(0, 100_000 - 8, 4):
        m.insert(ids[i + 4 : i + 8], ids[i + 4 : i + 8].astype(np.int64))
        m.delete(ids[i : i + 4])
    assert len(m) == 4 and m.capacity == 16
    assert m.lookup(ids[-12:]).tolist() == [-1] * 4 + [*range(99_992, 99_996)] + [-1] * 4


def test_round_trip_and_from_arrays():
    rng = np.random.default_rng(1)
    ids = rng.choice(1 << 62, size=50_000, replace=False).astype(np.uint64)
    ids[:3] = [0, U64_MAX, 1 << 63]
    slots = rng.permutation(50_000)
    m = IdMap.from_arrays(ids, slots)
    assert len(m) == 50_000
    k, s = m.to_arrays()
    assert sorted(zip(k.tolist(), s.tolist(), strict=True)) == sorted(
        zip(ids.tolist(), slots.tolist(), strict=True))
    m2 = IdMap.from_arrays(k, s)
    assert m2.lookup(ids).tolist() == slots.tolist()
    assert m2.capacity == m.capacity  # sized once from the count
    e = IdMap.from_arrays(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
    assert len(e) == 0 and [a.tolist() for a in e.to_arrays()] == [[], []]
    assert e.lookup(np.zeros(0, dtype=np.uint64)).tolist() == []


def test_signed_ids_are_their_uint64_bits():
    m = IdMap()
    m.insert(np.array([U64_MAX, 5], dtype=np.uint64), [7, 8])
    assert m.lookup(np.array([-1, 5], dtype=np.int64)).tolist() == [7, 8]
    assert m.lookup(np.array([5], dtype=np.int32)).tolist() == [8]
    assert m.delete(np.array([-1], dtype=np.int64)) == 1
    assert len(m) == 1


@pytest.mark.parametrize("ids, slots", [
    ([1, 2], [0, -1]),       # negative slot: slots are >= 0 (the map's occupancy marker)
    ([1, 2], [0]),           # lengths differ
    ([1.5, 2.0], [0, 1]),    # not integers
    ([[1, 2]], [[0, 1]]),    # not 1-D
    ([1, 2], [0.5, 1.0]),    # float slots
])
def test_bad_input_raises_and_changes_nothing(ids, slots):
    m = IdMap()
    m.insert(np.array([9], dtype=np.uint64), [3])
    with pytest.raises(InvalidArgument):
        m.insert(np.array(ids), np.array(slots))
    assert len(m) == 1 and m.lookup(np.array([9, 1, 2], dtype=np.uint64)).tolist() == [3, -1, -1]
    with pytest.raises(InvalidArgument):
        m.lookup(np.array([0.5]))
    with pytest.raises(InvalidArgument):
        IdMap(-1)


def test_lookups_during_growth_do_not_crash():
    """Not the engine's pattern (its RW lock keeps lookups off mutations) but memory-safe:
    lookups racing inserts that rehash see each id present (right slot) or absent, and ids
    present before the race are always found."""
    m = IdMap()
    base = np.arange(1000, dtype=np.uint64)
    m.insert(base, base.astype(np.int64))
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        q = np.concatenate([base, np.arange(10**6, 10**6 + 2000, dtype=np.uint64)])
        while not stop.is_set():
            got = m.lookup(q)
            if (got[:1000] != base.astype(np.int64)).any():
                errors.append("lost a pre-existing id")
            late = got[1000:]
            ok = (late == -1) | (late == q[1000:].astype(np.int64))
            if not ok.all():
                errors.append("wrong slot")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for lo in range(10**6, 10**6 + 2000, 50):
            ids = np.arange(lo, lo + 50, dtype=np.uint64)
            m.insert(ids, ids.astype(np.int64))
        for lo in range(2 * 10**6, 2 * 10**6 + 200_000, 20_000):  # several more rehashes
            ids = np.arange(lo, lo + 20_000, dtype=np.uint64)
            m.insert(ids, ids.astype(np.int64))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(m) == 1000 + 2000 + 200_000
