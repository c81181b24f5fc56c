"""The vectorised bulk path of ``AccessLists.add_csr`` (the engine's ingest and checkpoint load
depend on it) is equivalent to the per-slot path."""

from __future__ import annotations

import numpy as np
import pytest

from vecdb.index.acl import AccessLists


@pytest.mark.parametrize("seed", range(12))
def test_bulk_add_csr_equals_per_slot(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(65, 400))
    slots = rng.permutation(3000)[:n]
    lens = rng.integers(0, 4, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(lens)
    ind = rng.integers(0, 6, indptr[-1]).astype(np.int32)  # may repeat a tenant in one slot
    fast, slow = AccessLists(16), AccessLists(16)
    if seed % 3 == 0:  # some slots already have a list: the general path must be taken
        for a in (fast, slow):
            a.set(int(slots[0]), [1, 2])
    fast.add_csr(slots, indptr, ind)
    if seed % 3 == 0:
        slow.set(int(slots[0]), [1, 2])
    for i, s in enumerate(slots.tolist()):
        slow.set(s, ind[indptr[i] : indptr[i + 1]])
    for t in range(6):
        assert fast.count(t) == slow.count(t)
        np.testing.assert_array_equal(fast.members(t), slow.members(t))
    assert sorted(fast._slot_tenants) == sorted(slow._slot_tenants)
    for s, ts in slow._slot_tenants.items():
        assert fast.tenants_of(s).tolist() == ts.tolist()
        assert fast.tenants_of(s).dtype == np.int32


def test_bulk_add_csr_no_tenants():
    a = AccessLists(8)
    a.add_csr(np.arange(100), np.zeros(101, dtype=np.int64), np.zeros(0, dtype=np.int32))
    assert a.tenants() == [] and a.tenants_of(5).tolist() == []
