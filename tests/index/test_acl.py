"""``AccessLists`` (compact layout: int32 owner per slot + a sparse dict for 2+ tenants) against a
plain ``dict[slot, set[tenant]]`` model: every mutation, every query, the checkpoint round trip and
arrays in the format written by the former per-slot-dict layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import vecdb.index.acl as acl_mod
from vecdb.errors import InvalidArgument
from vecdb.index.acl import AccessLists

TENANTS = [0, 1, 2, 3, 4, 5, 40_000]  # 40000 > int16: the owner array must widen
TENANT = st.one_of(st.integers(0, 5), st.just(40_000))
SLOTS = st.one_of(st.integers(0, 40), st.sampled_from([63, 64, 200, 1031]))
TLIST = st.lists(TENANT, max_size=4)  # may repeat a tenant


def model_arrays(model: dict[int, set[int]]) -> dict[str, np.ndarray]:
    """The checkpoint arrays as the former layout wrote them (sorted slots, sorted tenants)."""
    slots = sorted(s for s, ts in model.items() if ts)
    lists = [sorted(model[s]) for s in slots]
    indptr = np.zeros(len(slots) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    ind = np.array([t for x in lists for t in x], dtype=np.int32)
    return {"acl_slots": np.array(slots, dtype=np.int64), "acl_indptr": indptr, "acl_indices": ind}


def old_reader(arrays: dict[str, np.ndarray]) -> dict[int, set[int]]:
    """What the former ``from_arrays`` reconstructed: slot i gets indices[indptr[i]:indptr[i+1]]."""
    s, ip, ix = arrays["acl_slots"], arrays["acl_indptr"], arrays["acl_indices"]
    return {int(x): set(ix[ip[i] : ip[i + 1]].tolist()) for i, x in enumerate(s.tolist())}


def check_equal(a: AccessLists, model: dict[int, set[int]]) -> None:
    model = {s: ts for s, ts in model.items() if ts}
    n = max([*model, 0]) + 70
    for t in TENANTS:
        want = sorted(s for s, ts in model.items() if t in ts)
        assert a.count(t) == len(want)
        got = a.members(t)
        assert got.dtype == np.int64 and got.tolist() == want
        mask = a.mask(t, n)
        assert mask.shape == (n,) and np.flatnonzero(mask).tolist() == want
        bits = np.flatnonzero(np.unpackbits(a.bitmap(t), bitorder="little")).tolist()
        assert bits == want
    assert sorted(a.tenants()) == sorted({t for ts in model.values() for t in ts})
    for s in sorted(set(model) | set(range(42)) | {63, 64, 200, 1031, n}):
        ts = a.tenants_of(s)
        assert ts.dtype == np.int32 and ts.tolist() == sorted(model.get(s, ()))
        for t in TENANTS:
            assert a.has(s, t) == (t in model.get(s, ()))
    assert sorted(a._slot_tenants) == sorted(model)
    arr = a.to_arrays()
    assert arr["acl_slots"].dtype == np.int64 and arr["acl_indptr"].dtype == np.int64
    assert arr["acl_indices"].dtype == np.int32
    for k, v in model_arrays(model).items():  # byte-identical to the former layout's output
        np.testing.assert_array_equal(arr[k], v)
    assert old_reader(arr) == model
    assert a.memory_bytes() >= sum(b.nbytes for b in a._bitmaps.values())


class ACLMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.a = AccessLists(8)
        self.model: dict[int, set[int]] = {}

    @rule(slot=SLOTS, ts=TLIST, as_int=st.booleans())
    def set(self, slot, ts, as_int):
        if as_int and ts:
            self.a.set(slot, ts[0])
            self.model[slot] = {ts[0]}
        else:
            self.a.set(slot, np.array(ts, dtype=np.int64))
            self.model[slot] = set(ts)

    @rule(
        items=st.lists(st.tuples(SLOTS, TLIST), max_size=40),
        vector=st.booleans(),
        offset=st.integers(0, 3),
    )
    def add_csr(self, items, vector, offset):
        slots = np.array([s for s, _ in items], dtype=np.int64)
        lens = [len(ts) for _, ts in items]
        indptr = offset + np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        ind = np.array([9] * offset + [t for _, ts in items for t in ts], dtype=np.int32)
        old = acl_mod._SMALL_BATCH
        acl_mod._SMALL_BATCH = 0 if vector else 10**9  # both paths, on small examples
        try:
            self.a.add_csr(slots, indptr, ind)
        finally:
            acl_mod._SMALL_BATCH = old
        for s, ts in items:  # in order: a repeated slot's last list wins
            self.model[s] = set(ts)

    @rule(slot=SLOTS, t=TENANT)
    def grant(self, slot, t):
        want = t not in self.model.get(slot, set())
        assert self.a.grant(slot, t) == want
        self.model.setdefault(slot, set()).add(t)

    @rule(slot=SLOTS, t=TENANT)
    def revoke(self, slot, t):
        want = t in self.model.get(slot, set())
        assert self.a.revoke(slot, t) == want
        self.model.get(slot, set()).discard(t)

    @rule(slot=st.one_of(SLOTS, st.just(10**6)))
    def clear(self, slot):
        self.a.clear(slot)
        self.model.pop(slot, None)

    @rule(slots=st.lists(st.one_of(SLOTS, st.just(10**6)), max_size=12))
    def clear_many(self, slots):
        self.a.clear_many(np.array(slots, dtype=np.int64))
        for s in slots:
            self.model.pop(s, None)

    @rule(cap=st.integers(1, 2000))
    def save_load(self, cap):
        self.a = AccessLists.from_arrays(self.a.to_arrays(), cap)

    @rule(cap=st.integers(1, 2000))
    def load_old_format(self, cap):
        self.a = AccessLists.from_arrays(model_arrays(self.model), cap)

    @rule(slot=SLOTS, bad=st.sampled_from(["neg_tenant", "neg_slot", "csr"]))
    def bad_input_changes_nothing(self, slot, bad):
        before = self.a.to_arrays()
        with pytest.raises(InvalidArgument):
            if bad == "neg_tenant":
                self.a.set(slot, [1, -1])
            elif bad == "neg_slot":
                self.a.add_csr(np.array([slot, -1]), np.array([0, 1, 2]), np.array([0, 1]))
            else:
                self.a.add_csr(np.array([slot]), np.array([0, 3]), np.array([0, 1]))
        for k, v in before.items():
            np.testing.assert_array_equal(self.a.to_arrays()[k], v)

    @invariant()
    def matches_model(self):
        check_equal(self.a, self.model)


ACLMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestACLModel = ACLMachine.TestCase


def test_one_two_one_zero_tenants():
    """A slot's list goes 1 -> 2 -> 1 -> 0 tenants (owner array -> multi dict -> owner -> none)
    through grant/revoke and through set/add_csr, in both add_csr paths."""
    a = AccessLists(8)
    a.set(5, [3])
    assert a.tenants_of(5).tolist() == [3] and 5 not in a._multi
    assert a.grant(5, 1) and a.tenants_of(5).tolist() == [1, 3] and 5 in a._multi
    assert not a.grant(5, 3)
    assert a.revoke(5, 3) and a.tenants_of(5).tolist() == [1] and 5 not in a._multi
    assert a.revoke(5, 1) and a.tenants_of(5).tolist() == [] and a.count(1) == 0
    assert not a.revoke(5, 1) and a.tenants() == []
    for small in (0, 10**9):
        acl_mod_old, acl_mod._SMALL_BATCH = acl_mod._SMALL_BATCH, small
        try:
            s = np.array([5, 6], dtype=np.int64)
            a.add_csr(s, np.array([0, 1, 1]), np.array([2], dtype=np.int32))
            assert a.tenants_of(5).tolist() == [2] and a.tenants_of(6).tolist() == []
            a.add_csr(s, np.array([0, 3, 4]), np.array([4, 2, 4, 0], dtype=np.int32))
            assert a.tenants_of(5).tolist() == [2, 4] and a.tenants_of(6).tolist() == [0]
            a.add_csr(s, np.array([0, 1, 1]), np.array([4], dtype=np.int32))
            assert a.tenants_of(5).tolist() == [4] and 5 not in a._multi
            a.add_csr(s, np.array([0, 0, 0]), np.zeros(0, dtype=np.int32))
            assert a.tenants() == [] and len(a._slot_tenants) == 0
        finally:
            acl_mod._SMALL_BATCH = acl_mod_old


def test_bulk_paths_at_scale():
    """The vectorised paths on 200k slots (mostly one tenant, 1% with more, replaced in an
    unsorted batch with repeats) agree with the model and round-trip through the arrays."""
    rng = np.random.default_rng(7)
    n = 200_000
    own = rng.integers(0, 50, n).astype(np.int32)
    a = AccessLists(1024)
    a.add_csr(np.arange(n), np.arange(n + 1), own)
    extra = rng.choice(n, n // 100, replace=False)
    for s in extra.tolist():
        a.grant(s, 50 + s % 3)
    assert len(a._multi) == len(extra)
    # capacity 2**18 slots: 2 B (int16) owner + 53 bitmaps of 1/8 B + 2000 sparse lists
    assert a._owner.dtype == np.int16
    assert a.memory_bytes() == 2 * 2**18 + 53 * 2**15 + 2000 * (8 + acl_mod._MULTI_ENTRY_BYTES)
    slots = rng.integers(0, n, 50_000)
    new = rng.integers(0, 50, 50_000).astype(np.int32)
    a.add_csr(slots, np.arange(50_001), new)
    model_own = own.astype(np.int64)
    multi = {int(s): {int(own[s]), 50 + int(s) % 3} for s in extra}
    for s, t in zip(slots.tolist(), new.tolist(), strict=True):
        model_own[s] = t
        multi.pop(s, None)
    for t in (0, 17, 49, 50, 52):
        want = {s for s in np.flatnonzero(model_own == t).tolist() if s not in multi}
        want |= {s for s, ts in multi.items() if t in ts}
        assert a.members(t).tolist() == sorted(want)
        assert a.count(t) == len(want)
    b = AccessLists.from_arrays(a.to_arrays(), n)
    for k, v in a.to_arrays().items():
        np.testing.assert_array_equal(b.to_arrays()[k], v)
    a.clear_many(np.arange(0, n, 2))
    assert all(s % 2 for s in a.members(17).tolist())
    assert sum(a.count(t) for t in a.tenants()) == len(a.to_arrays()["acl_indices"])


def test_grant_rejects_negative_tenant():
    a = AccessLists()
    with pytest.raises(InvalidArgument):
        a.grant(3, -1)
    assert a.tenants_of(3).tolist() == [] and not a.revoke(3, -1) and not a.has(-3, 0)


def test_owner_array_lazy_and_widening():
    """No tenants: no owner array (an index over acl=None pays only its bitmaps, i.e. nothing);
    a tenant id past int16 widens it to int32 keeping every list."""
    a = AccessLists(1024)
    a.add_csr(np.arange(5000), np.zeros(5001, dtype=np.int64), np.zeros(0, dtype=np.int32))
    assert a.memory_bytes() == 0 and a._owner.nbytes == 0 and a.to_arrays()["acl_slots"].size == 0
    a.add_csr(np.arange(100), np.arange(101), np.full(100, 32_767, dtype=np.int32))
    assert a._owner.dtype == np.int16
    assert a.grant(7, 2**31 - 2) and a.grant(3000, 40_000)
    assert a._owner.dtype == np.int32
    assert a.tenants_of(7).tolist() == [32_767, 2**31 - 2]
    assert a.tenants_of(3000).tolist() == [40_000]
    assert a.revoke(7, 32_767) and a.tenants_of(7).tolist() == [2**31 - 2]
    assert a.members(32_767).tolist() == [s for s in range(100) if s != 7]
    b = AccessLists.from_arrays(a.to_arrays())
    assert b.tenants_of(7).tolist() == [2**31 - 2] and b.count(40_000) == 1
