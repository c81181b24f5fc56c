"""The engine's in-memory maps of one collection: external ids <-> dense slots, owners, grants.

Indexes work on dense integer slots; the engine owns the mapping to the caller's uint64 ids. A
vector's access list is its *owner* (always on it, the tenant that upserted it) plus an optional
set of *granted* tenants (``grant``/``revoke``; sparse in practice), kept in both directions so a
visibility check, a tenant's count and dropping a tenant are cheap.

The state changes only through ``apply_*``, which the live write path and oplog replay share (one
code path, so recovery cannot drift from normal operation). It is saved with every checkpoint and
can also be rebuilt from the ``vectors``/``acl`` column families.
"""

from __future__ import annotations

import itertools

import numpy as np


class CollectionState:
    """ids <-> slots, slot owners, grants, free slots."""

    def __init__(self) -> None:
        self.slot_id = np.full(1024, -1, dtype=np.int64)
        self.slot_owner = np.full(1024, -1, dtype=np.int32)
        self.high = 0  # 1 + the largest slot ever used
        self.id_slot: dict[int, int] = {}
        self.free: set[int] = set()
        self.grants: dict[int, set[int]] = {}  # slot -> tenants granted besides the owner
        self.granted: dict[int, set[int]] = {}  # tenant -> slots granted to it
        self.owned: dict[int, int] = {}  # tenant -> number of vectors it owns

    # -- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.id_slot)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (int64; -1 where the id does not exist)."""
        get = self.id_slot.get
        return np.fromiter((get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))

    def visible(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Boolean mask: which (existing, >= 0) ``slots`` ``tenant`` may see."""
        ok = slots >= 0
        out = np.zeros(len(slots), dtype=bool)
        out[ok] = self.slot_owner[slots[ok]] == tenant
        mine = self.granted.get(tenant)
        if mine:
            for i in np.flatnonzero(ok & ~out).tolist():
                out[i] = int(slots[i]) in mine
        return out

    def allocate(self, n: int) -> np.ndarray:
        """``n`` slots for new vectors (freed slots first), without reserving them."""
        reuse = list(itertools.islice(self.free, n))
        fresh = np.arange(self.high, self.high + n - len(reuse), dtype=np.int64)
        return np.concatenate([np.array(reuse, dtype=np.int64), fresh])

    def acl_csr(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Access lists (owner + grants) of ``slots`` as CSR for ``Index.add``."""
        n = len(slots)
        owners = self.slot_owner[slots]
        if not self.grants or not any(s in self.grants for s in slots.tolist()):
            return np.arange(n + 1, dtype=np.int64), owners.astype(np.int32)
        lists = [[int(o), *sorted(self.grants.get(s, ()))] for s, o in zip(slots.tolist(),
                                                                            owners.tolist(),
                                                                            strict=True)]
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        return indptr, np.array([t for x in lists for t in x], dtype=np.int32)

    def owned_by(self, tenant: int) -> np.ndarray:
        return np.flatnonzero(self.slot_owner[: self.high] == tenant).astype(np.int64)

    # -- mutations (shared by the write path and replay) ----------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self.slot_id)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        sid = np.full(cap, -1, dtype=np.int64)
        sid[: self.high] = self.slot_id[: self.high]
        own = np.full(cap, -1, dtype=np.int32)
        own[: self.high] = self.slot_owner[: self.high]
        self.slot_id, self.slot_owner = sid, own

    def apply_upsert(self, slots: np.ndarray, ids: np.ndarray, owner: int) -> None:
        if not len(slots):
            return
        top = int(slots.max()) + 1
        self._grow(top)
        if top > self.high:
            self.free.update(range(self.high, top))
            self.high = top
        new = self.slot_owner[slots] < 0
        self.free.difference_update(slots[new].tolist())
        self.slot_id[slots] = ids.astype(np.int64)
        self.slot_owner[slots] = owner
        self.id_slot.update(zip(ids[new].tolist(), slots[new].tolist(), strict=True))
        self.owned[owner] = self.owned.get(owner, 0) + int(new.sum())

    def apply_delete(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            o = int(self.slot_owner[s])
            if o < 0:
                continue
            self.id_slot.pop(int(self.slot_id[s]), None)
            self.owned[o] -= 1
            for t in self.grants.pop(s, ()):
                self.granted[t].discard(s)
            self.free.add(s)
        self.slot_id[slots] = -1
        self.slot_owner[slots] = -1

    def apply_grant(self, slots: np.ndarray, tenant: int) -> None:
        mine = self.granted.setdefault(tenant, set())
        for s in slots.tolist():
            self.grants.setdefault(s, set()).add(tenant)
            mine.add(s)

    def apply_revoke(self, slots: np.ndarray, tenant: int) -> None:
        mine = self.granted.get(tenant, set())
        for s in slots.tolist():
            g = self.grants.get(s)
            if g is not None:
                g.discard(tenant)
                if not g:
                    del self.grants[s]
            mine.discard(s)

    def forget_tenant(self, tenant: int) -> None:
        self.granted.pop(tenant, None)
        self.owned.pop(tenant, None)

    # -- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        gs = np.array(sorted(self.grants), dtype=np.int64)
        lists = [sorted(self.grants[s]) for s in gs.tolist()]
        indptr = np.zeros(len(gs) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        return {
            "slot_id": self.slot_id[: self.high].copy(),
            "slot_owner": self.slot_owner[: self.high].copy(),
            "grant_slots": gs,
            "grant_indptr": indptr,
            "grant_tenants": np.array([t for x in lists for t in x], dtype=np.int32),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> CollectionState:
        st = cls()
        sid, own = a["slot_id"].astype(np.int64), a["slot_owner"].astype(np.int32)
        st._grow(max(len(sid), 1))
        st.high = len(sid)
        st.slot_id[: st.high] = sid
        st.slot_owner[: st.high] = own
        live = np.flatnonzero(own >= 0)
        st.id_slot = dict(zip(sid[live].tolist(), live.tolist(), strict=True))
        st.free = set(np.flatnonzero(own < 0).tolist())
        if len(live):
            tenants, counts = np.unique(own[live], return_counts=True)
            st.owned = dict(zip(tenants.tolist(), counts.tolist(), strict=True))
        ind, ten = a["grant_indptr"], a["grant_tenants"]
        for i, s in enumerate(a["grant_slots"].tolist()):
            for t in ten[ind[i] : ind[i + 1]].tolist():
                st.grants.setdefault(s, set()).add(t)
                st.granted.setdefault(t, set()).add(s)
        return st
