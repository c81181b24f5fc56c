"""CollectionState (ids <-> slots, owners, grants, free slots) against a plain-Python model."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecdb.engine.state import CollectionState

U64_MAX = (1 << 64) - 1


def _check(s: CollectionState, model: dict[int, tuple[int, int]]) -> None:
    """model: id -> (slot, owner)."""
    assert len(s) == len(model)
    ids = np.array(list(model), dtype=np.uint64)
    assert s.lookup(ids).tolist() == [model[i][0] for i in model]
    live = {sl for sl, _ in model.values()}
    assert len(live) == len(model)  # one slot per id
    free = s.free_slots().tolist()
    assert free == [x for x in range(s.high) if x not in live]
    for i, (sl, o) in model.items():
        assert int(s.slot_owner[sl]) == o and int(s.slot_id[sl]) & U64_MAX == i
    owned: dict[int, int] = {}
    for _, o in model.values():
        owned[o] = owned.get(o, 0) + 1
    assert {t: c for t, c in s.owned.items() if c} == owned
    # allocate: distinct free slots first, then fresh ones from high; reserves nothing
    for n in (1, len(free) + 3):
        a = s.allocate(n).tolist()
        assert len(a) == len(set(a)) == n
        assert set(a[: len(free)]) <= set(free) and len(set(a) & set(free)) == min(n, len(free))
        assert sorted(a[min(n, len(free)) :]) == list(range(s.high, s.high + n - len(free)))[
            : max(0, n - len(free))]
    assert s.free_slots().tolist() == free


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.integers(0, 30) | st.just(U64_MAX), max_size=8,
                                                unique=True), st.integers(0, 2)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 30) | st.just(U64_MAX), max_size=8,
                                                unique=True), st.just(0)),
        st.tuples(st.just("reload"), st.just([]), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_matches_model(ops):
    """The engine's use: lookup -> allocate new -> apply_upsert; lookup -> apply_delete;
    checkpoint (to_arrays, npz) -> from_arrays."""
    s, model = CollectionState(), {}
    for op, ids, owner in ops:
        if op == "upsert":
            ids = [i for i in ids if i not in model or model[i][1] == owner]  # owner check
            a = np.array(ids, dtype=np.uint64)
            slots = s.lookup(a)
            new = slots < 0
            slots[new] = s.allocate(int(new.sum()))
            s.apply_upsert(slots, a, owner)
            for i, sl in zip(ids, slots.tolist(), strict=True):
                model[i] = (sl, owner)
        elif op == "delete":
            ids = [i for i in ids if i in model]
            slots = s.lookup(np.array(ids, dtype=np.uint64))
            s.apply_delete(slots)
            for i in ids:
                del model[i]
        else:
            buf = io.BytesIO()
            np.savez(buf, **s.to_arrays())
            buf.seek(0)
            with np.load(buf) as z:
                s = CollectionState.from_arrays({k: z[k] for k in z.files})
        _check(s, model)


def test_old_checkpoint_arrays_load():
    """state.npz as every earlier version wrote it (same keys and dtypes) still loads."""
    a = {
        "slot_id": np.array([10, -1, 12, 13, -1], dtype=np.int64),
        "slot_owner": np.array([0, -1, 1, 0, -1], dtype=np.int32),
        "grant_slots": np.array([2], dtype=np.int64),
        "grant_indptr": np.array([0, 2], dtype=np.int64),
        "grant_tenants": np.array([0, 3], dtype=np.int32),
    }
    s = CollectionState.from_arrays(a)
    assert len(s) == 3 and s.high == 5
    assert s.lookup(np.array([10, 11, 12, 13], dtype=np.uint64)).tolist() == [0, -1, 2, 3]
    assert s.owned == {0: 2, 1: 1} and s.grants == {2: {0, 3}} and s.granted == {0: {2}, 3: {2}}
    assert s.free_slots().tolist() == [1, 4]
    assert s.allocate(3).tolist() == [1, 4, 5]  # lowest free slots first after a load
    out = s.to_arrays()
    for k, v in a.items():
        assert out[k].dtype == v.dtype and out[k].tolist() == v.tolist()


def test_scan_like_interleaved_owners_and_bounded_free_stack():
    """``_scan_store`` applies each chunk per owner with explicit slots (owners interleave, so
    every call skips the other owners' slots); then deletes and reuse."""
    s = CollectionState()
    n = 200_000
    rng = np.random.default_rng(0)
    owner = rng.integers(0, 3, size=n).astype(np.int32)
    ids = rng.choice(1 << 62, size=n, replace=False).astype(np.uint64)
    for lo in range(0, n, 65536):
        sl = np.arange(lo, min(n, lo + 65536))
        for o in range(3):
            m = owner[sl] == o
            s.apply_upsert(sl[m], ids[sl][m], o)
    assert len(s) == n and s.high == n and s.free_slots().size == 0
    assert s._nfree <= n // 8 + 4096  # stale candidates stay bounded
    assert s.allocate(5).tolist() == list(range(n, n + 5))
    assert s.lookup(ids[::7]).tolist() == list(range(0, n, 7))
    assert s.owned == {o: int((owner == o).sum()) for o in range(3)}
    gone = np.arange(0, n, 3)
    s.apply_delete(gone)
    assert len(s) == n - len(gone)
    assert (s.lookup(ids[gone]) == -1).all()
    a = s.allocate(len(gone) + 2)
    assert sorted(a[: len(gone)].tolist()) == gone.tolist()
    assert a[len(gone) :].tolist() == [n, n + 1]
    assert s.memory_bytes() > 0


def test_delete_of_missing_or_repeated_slots_is_a_no_op():
    s = CollectionState()
    s.apply_upsert(np.arange(3), np.array([5, 6, 7], dtype=np.uint64), 0)
    s.apply_delete(np.array([1, 1], dtype=np.int64))
    s.apply_delete(np.array([1], dtype=np.int64))
    assert len(s) == 2 and s.owned == {0: 2} and s.free_slots().tolist() == [1]
    assert s.allocate(2).tolist() == [1, 3]
